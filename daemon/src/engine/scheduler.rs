//! Continuous batching: admission, one batched decode step for every running sequence,
//! chunked prefill between steps, cancellation and backpressure.
//!
//! One dedicated OS thread owns the ONNX Runtime session and runs this loop:
//!
//! 1. **Admit** waiting requests while there is a free slot (`max_batch`) and KV budget.
//! 2. **Rebuild** the batch cache if sequences left or a prefilled sequence joins (the only
//!    time KV is copied; see `runner.rs`).
//! 3. **Decode**: one batched forward for all running sequences, then each row's logits go
//!    through that sequence's own text pipeline ([`Sequence`]).
//! 4. **Prefill** one chunk (`prefill_chunk` tokens) of the oldest admitted-but-not-running
//!    sequence, batch-1. A 4k-token prompt therefore delays each running stream by one chunk
//!    per step instead of freezing them for the whole prompt.
//!
//! Callers are never blocked by the loop: [`Scheduler::submit`] tokenizes and validates on
//! the caller's thread and either queues the request or fails at once (`QueueFull`,
//! `TooLarge`, invalid request). Each request gets an unbounded event channel: the loop
//! must never wait on a slow reader. Dropping the [`RequestHandle`] sets a flag the loop
//! checks before every step, so the slot is freed within one step even when no text was
//! produced to notice the closed channel with.
//!
//! KV budget: a sequence reserves `prompt + max_tokens` tokens of cache. Because the batch
//! is padded to its longest row, the budget is checked against the padded size:
//! `rows × longest reservation × bytes per token ≤ kv_budget`. A request is admitted only if
//! that still holds with it; otherwise it waits (in order) in the queue. ONNX Runtime holds
//! past and present of one step at once, and a rebuild holds old and new batch, so the
//! transient peak is up to twice the budget.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::lock;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::generate::{plan_request, GenerateError, Next, Sequence, TokenLogprob};
use super::model::ModelSpec;
use super::prefix::PrefixCache;
use super::runner::{BatchKv, RowSource, RunError, Runner, SeqState};
use super::template::ChatTemplate;
use super::{Engine, FinishReason, GenerateOutput, GenerateRequest, Provider, StreamEvent};

/// Prefixes are reused in whole blocks of this many tokens: shorter matches save less than
/// the copy costs.
const PREFIX_BLOCK: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences decoding together (one batched forward per step).
    pub max_batch: usize,
    /// Most requests waiting for a slot; more fail with [`SchedulerError::QueueFull`].
    pub max_queue: usize,
    /// KV cache budget in bytes (padded batch; see the module doc).
    pub kv_budget_bytes: u64,
    /// Prompt tokens prefilled per step while other sequences decode.
    pub prefill_chunk: usize,
    /// Memory for cached prompt prefixes (see `prefix.rs`); 0 disables prefix reuse.
    pub prefix_cache_bytes: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 8,
            max_queue: 64,
            kv_budget_bytes: 1024 << 20,
            prefill_chunk: 256,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("too many requests: {queued} already waiting (engine.max_queue = {max_queue})")]
    QueueFull { queued: usize, max_queue: usize },
    #[error("request needs {needed_bytes} bytes of KV cache ({tokens} tokens) but the whole budget is {budget_bytes} bytes (engine.kv_budget_mb)")]
    TooLarge {
        tokens: usize,
        needed_bytes: u64,
        budget_bytes: u64,
    },
    #[error(transparent)]
    Invalid(#[from] GenerateError),
    #[error("the scheduler is shut down")]
    ShutDown,
    #[error("invalid scheduler configuration: {0}")]
    Config(String),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(String),
}

/// What a request receives, in order; `Done` or `Error` is the last event.
#[derive(Clone, Debug)]
pub enum Event {
    Reasoning(String),
    Content(String),
    /// Only with `GenerateRequest::logprobs`; precedes the text of its token.
    Logprob(TokenLogprob),
    Done(GenerateOutput),
    Error(String),
}

/// A submitted request. Dropping it cancels the request.
///
/// Events travel through a tokio channel: the engine thread sends without blocking (unbounded:
/// one request's events are bounded by its `max_tokens`), and the API's response body awaits
/// them directly, so no thread is parked per stream. Blocking callers (CLI, bench, tests) use
/// [`recv`](Self::recv) / [`wait`](Self::wait) outside any async runtime.
pub struct RequestHandle {
    rx: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    prompt_tokens: usize,
}

impl RequestHandle {
    /// Next event; `None` once the request is over and every event was read. Must not be
    /// called from inside an async runtime (use [`next`](Self::next) there).
    pub fn recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Next event without waiting: `Ok(None)` when none is ready yet, `Err(())` once the
    /// request is over and every event was read.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Event>, ()> {
        use tokio::sync::mpsc::error::TryRecvError as E;
        match self.rx.try_recv() {
            Ok(ev) => Ok(Some(ev)),
            Err(E::Empty) => Ok(None),
            Err(E::Disconnected) => Err(()),
        }
    }

    /// Next event, awaited; `None` once the request is over and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Read to the end: the output, or the error the engine reported.
    pub fn wait(mut self) -> Result<GenerateOutput, String> {
        while let Some(ev) = self.rx.blocking_recv() {
            match ev {
                Event::Done(out) => return Ok(out),
                Event::Error(e) => return Err(e),
                Event::Reasoning(_) | Event::Content(_) | Event::Logprob(_) => {}
            }
        }
        Err("the scheduler stopped before the request finished".into())
    }

    /// Stop generating; the slot is freed within one step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Waiting for a slot or KV budget.
    pub queued: usize,
    /// Prefilling or decoding.
    pub active: usize,
    /// Padded KV cache of the running batch and the sequences being prefilled.
    pub kv_used_bytes: u64,
    /// KV reserved by the active sequences (the budget check).
    pub kv_reserved_bytes: u64,
    pub tokens_generated: u64,
    pub completed: u64,
    pub cancellations: u64,
    pub errors: u64,
    /// Batched decode steps run.
    pub decode_steps: u64,
    /// Most sequences seen in one decode step.
    pub max_batch_seen: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of a prefill.
    pub prefix_reused_tokens: u64,
    /// Turns of the engine loop, idle waits included (at least one per
    /// [`IDLE_HEARTBEAT`]): a value that stops advancing means the engine thread is stuck
    /// (the systemd watchdog in `service` keys off it).
    pub heartbeat: u64,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    kv_used: AtomicU64,
    kv_reserved: AtomicU64,
    tokens: AtomicU64,
    completed: AtomicU64,
    cancellations: AtomicU64,
    errors: AtomicU64,
    steps: AtomicU64,
    max_batch_seen: AtomicUsize,
    prefix_reused: AtomicU64,
    heartbeat: AtomicU64,
}

/// Longest idle wait of the engine loop before it turns (and bumps the heartbeat) anyway.
pub const IDLE_HEARTBEAT: Duration = Duration::from_millis(500);

/// A request on its way to the loop.
struct Job {
    seq: Sequence,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    /// Tokens of KV this sequence may need.
    reserve: usize,
}

struct Shared {
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    cfg: SchedulerConfig,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    spec: ModelSpec,
    provider: Provider,
    bytes_per_token: u64,
}

/// Handle to the batching loop; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Start the loop on its own thread; it owns `engine`'s ONNX Runtime session.
    pub fn start(engine: Engine, cfg: SchedulerConfig) -> Result<Scheduler, SchedulerError> {
        if cfg.max_batch == 0 || cfg.max_queue == 0 || cfg.prefill_chunk == 0 {
            return Err(SchedulerError::Config(
                "max_batch, max_queue and prefill_chunk must be at least 1".into(),
            ));
        }
        let Engine {
            runner,
            tokenizer,
            template,
        } = engine;
        let bytes_per_token = runner.kv_bytes_per_token() as u64;
        if bytes_per_token == 0 || cfg.kv_budget_bytes < bytes_per_token {
            return Err(SchedulerError::Config(format!(
                "KV budget of {} bytes is less than one token ({bytes_per_token} bytes)",
                cfg.kv_budget_bytes
            )));
        }
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let spec = runner.spec.clone();
        let provider = runner.provider;
        let mut worker = Worker {
            runner,
            rx,
            cfg: cfg.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
            bytes_per_token,
            batch: None,
            rows: Vec::new(),
            prefilling: VecDeque::new(),
            joining: Vec::new(),
            waiting: None,
            prefix: PrefixCache::new(cfg.prefix_cache_bytes, bytes_per_token, PREFIX_BLOCK),
        };
        let thread = std::thread::Builder::new()
            .name("edgeseek-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| SchedulerError::Thread(e.to_string()))?;
        Ok(Scheduler {
            shared: Arc::new(Shared {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                stop,
                counters,
                cfg,
                tokenizer,
                template,
                spec,
                provider,
                bytes_per_token,
            }),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }

    pub fn provider(&self) -> Provider {
        self.shared.provider
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.cfg
    }

    /// The model's chat template (what it supports, e.g. tools).
    pub fn template(&self) -> &ChatTemplate {
        &self.shared.template
    }

    /// Validate, tokenize and queue a request. Fails at once when the queue is full, the
    /// request can never fit the KV budget, or it is invalid.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle, SchedulerError> {
        let sh = &self.shared;
        let budget_tokens = (sh.cfg.kv_budget_bytes / sh.bytes_per_token) as usize;
        let plan = plan_request(
            &sh.tokenizer,
            &sh.template,
            &sh.spec,
            &req,
            Some(budget_tokens),
        )?;
        let reserve = plan.prompt.ids.len() + plan.max_tokens;
        let needed = reserve as u64 * sh.bytes_per_token;
        if needed > sh.cfg.kv_budget_bytes {
            return Err(SchedulerError::TooLarge {
                tokens: reserve,
                needed_bytes: needed,
                budget_bytes: sh.cfg.kv_budget_bytes,
            });
        }
        let prompt_tokens = plan.prompt.ids.len();
        let seq = Sequence::new(sh.tokenizer.clone(), &sh.spec, &req, plan)?;
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            seq,
            tx,
            cancel: cancel.clone(),
            reserve,
        };
        // The counter, not the channel, is the bound: the loop takes a job off the channel
        // before it knows whether the job fits, and that job is still waiting.
        let queued = sh.counters.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= sh.cfg.max_queue {
            sh.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SchedulerError::QueueFull {
                queued,
                max_queue: sh.cfg.max_queue,
            });
        }
        let guard = lock(&sh.tx);
        let sent = match guard.as_ref() {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => SchedulerError::QueueFull {
                    queued,
                    max_queue: sh.cfg.max_queue,
                },
                TrySendError::Disconnected(_) => SchedulerError::ShutDown,
            }),
            None => Err(SchedulerError::ShutDown),
        };
        drop(guard);
        if let Err(e) = sent {
            sh.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(RequestHandle {
            rx,
            cancel,
            prompt_tokens,
        })
    }

    pub fn stats(&self) -> SchedulerStats {
        let c = &self.shared.counters;
        SchedulerStats {
            queued: c.queued.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            kv_used_bytes: c.kv_used.load(Ordering::Relaxed),
            kv_reserved_bytes: c.kv_reserved.load(Ordering::Relaxed),
            tokens_generated: c.tokens.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cancellations: c.cancellations.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            decode_steps: c.steps.load(Ordering::Relaxed),
            max_batch_seen: c.max_batch_seen.load(Ordering::Relaxed),
            prefix_reused_tokens: c.prefix_reused.load(Ordering::Relaxed),
            heartbeat: c.heartbeat.load(Ordering::Relaxed),
        }
    }

    /// Stop the loop: running and queued requests end with [`Event::Error`]. Returns when
    /// the engine thread has exited (at most one forward pass later).
    pub fn shutdown(self) {
        let sh = &self.shared;
        sh.stop.store(true, Ordering::SeqCst);
        // Dropping the sender wakes a loop blocked waiting for work.
        drop(lock(&sh.tx).take());
        let thread = lock(&sh.thread).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

/// An admitted sequence.
struct Slot {
    /// `None` once finished (the pipeline is consumed by `Sequence::finish`).
    seq: Option<Sequence>,
    /// Finished, failed or cancelled: dropped from the batch at the next rebuild.
    gone: bool,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    reserve: usize,
    /// Ids to feed, one per decode step (the sampled token, then any forced `</think>` ids,
    /// whose logits are not sampled from).
    pending: VecDeque<u32>,
    started: Instant,
}

impl Slot {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn seq_take(&mut self) -> Option<Sequence> {
        self.seq.take()
    }

    fn generated(&self) -> usize {
        self.seq.as_ref().map_or(0, Sequence::generated)
    }

    /// Run one logits row through the pipeline; `Some(reason)` when the sequence is over.
    fn advance(&mut self, logits: &mut [f32]) -> Result<Option<FinishReason>, GenerateError> {
        let tx = &self.tx;
        let mut on_event = |ev: StreamEvent<'_>| send_text(tx, ev);
        let Some(seq) = self.seq.as_mut() else {
            return Ok(Some(FinishReason::Cancelled));
        };
        match seq.advance(logits, &mut on_event)? {
            Next::Feed(ids) => {
                self.pending.extend(ids);
                Ok(None)
            }
            Next::Finished(r) => Ok(Some(r)),
        }
    }
}

fn send_text(tx: &UnboundedSender<Event>, ev: StreamEvent<'_>) -> bool {
    let ev = match ev {
        StreamEvent::Reasoning(t) => Event::Reasoning(t.to_string()),
        StreamEvent::Content(t) => Event::Content(t.to_string()),
        StreamEvent::Logprob(l) => Event::Logprob(l.clone()),
    };
    tx.send(ev).is_ok()
}

struct Prefill {
    slot: Slot,
    kv: SeqState,
}

struct Worker {
    runner: Runner,
    rx: Receiver<Job>,
    cfg: SchedulerConfig,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    bytes_per_token: u64,
    /// KV of the running batch; row `i` belongs to `rows[i]`.
    batch: Option<BatchKv>,
    rows: Vec<Slot>,
    /// Admitted, prefilling one chunk per step, oldest first.
    prefilling: VecDeque<Prefill>,
    /// Prefilled, joining the batch at the next rebuild.
    joining: Vec<(Slot, SeqState)>,
    /// Taken off the channel but waiting for a slot or budget.
    waiting: Option<Job>,
    /// KV of recent prompts, for prompts that share their beginning.
    prefix: PrefixCache,
}

/// Whether `lens` more sequences fit: `rows × longest reservation × bytes ≤ budget`.
fn fits(reserves: impl Iterator<Item = usize>, bytes_per_token: u64, budget: u64) -> bool {
    let (n, longest) = reserves.fold((0u64, 0u64), |(n, m), r| (n + 1, m.max(r as u64)));
    n.saturating_mul(longest).saturating_mul(bytes_per_token) <= budget
}

impl Worker {
    /// Sequences holding a slot (finished rows wait for the rebuild but hold none).
    fn active(&self) -> usize {
        self.rows.iter().filter(|r| !r.gone).count() + self.prefilling.len() + self.joining.len()
    }

    fn reserves(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows
            .iter()
            .filter(|s| !s.gone)
            .map(|s| s.reserve)
            .chain(self.prefilling.iter().map(|p| p.slot.reserve))
            .chain(self.joining.iter().map(|(s, _)| s.reserve))
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            self.counters.heartbeat.fetch_add(1, Ordering::Relaxed);
            if !self.admit() {
                break;
            }
            self.drop_cancelled();
            if let Err(e) = self.rebuild() {
                self.fail_batch(&format!("{e}"));
            }
            if !self.rows.is_empty() {
                if let Err(e) = self.decode_step() {
                    self.fail_batch(&format!("{e}"));
                }
            }
            self.prefill_chunk();
            self.publish();
        }
        self.fail_all("the engine is shutting down");
        self.publish();
    }

    /// Take queued jobs while they fit. Blocks only when there is nothing else to do.
    /// Returns `false` when the channel is closed and no work is left.
    fn admit(&mut self) -> bool {
        loop {
            let job = match self.waiting.take() {
                Some(j) => j,
                None => {
                    // Finished rows still to be dropped by a rebuild count as work.
                    let idle = self.rows.is_empty() && self.active() == 0;
                    let got = if idle {
                        // Bounded, so an idle loop still turns and bumps the heartbeat.
                        self.rx.recv_timeout(IDLE_HEARTBEAT).map_err(|e| match e {
                            RecvTimeoutError::Timeout => TryRecvError::Empty,
                            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                        })
                    } else {
                        self.rx.try_recv()
                    };
                    match got {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => return true,
                        Err(TryRecvError::Disconnected) => return self.active() > 0,
                    }
                }
            };
            if job.cancel.load(Ordering::Relaxed) {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                self.counters.cancellations.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let room = self.active() < self.cfg.max_batch
                && fits(
                    self.reserves().chain(std::iter::once(job.reserve)),
                    self.bytes_per_token,
                    self.cfg.kv_budget_bytes,
                );
            if !room {
                self.waiting = Some(job);
                return true;
            }
            let cached = self.prefix.lookup(&self.runner, job.seq.prompt_ids());
            let kv = match cached.and_then(|c| c.map_or_else(|| self.runner.new_sequence(), Ok)) {
                Ok(kv) => kv,
                Err(e) => {
                    self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.tx.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            self.prefilling.push_back(Prefill {
                slot: Slot {
                    seq: Some(job.seq),
                    gone: false,
                    tx: job.tx,
                    cancel: job.cancel,
                    reserve: job.reserve,
                    pending: VecDeque::new(),
                    started: Instant::now(),
                },
                kv,
            });
        }
    }

    /// Remove cancelled sequences everywhere (batch rows are only marked; the rebuild
    /// drops them).
    fn drop_cancelled(&mut self) {
        let before = self.prefilling.len() + self.joining.len();
        self.prefilling.retain(|p| !p.slot.cancelled());
        self.joining.retain(|(s, _)| !s.cancelled());
        let mut cancelled = (before - self.prefilling.len() - self.joining.len()) as u64;
        for row in self.rows.iter_mut().filter(|r| !r.gone && r.cancelled()) {
            row.gone = true;
            cancelled += 1;
        }
        self.counters
            .cancellations
            .fetch_add(cancelled, Ordering::Relaxed);
    }

    /// Rebuild the batch KV if rows left or sequences join: the one place KV is copied.
    fn rebuild(&mut self) -> Result<(), RunError> {
        if self.joining.is_empty() && !self.rows.iter().any(|r| r.gone) {
            return Ok(());
        }
        let old_rows = std::mem::take(&mut self.rows);
        let mut sources = Vec::with_capacity(old_rows.len() + self.joining.len());
        for (i, slot) in old_rows.into_iter().enumerate() {
            if !slot.gone {
                sources.push(RowSource::Kept(i));
                self.rows.push(slot);
            }
        }
        for (slot, kv) in std::mem::take(&mut self.joining) {
            sources.push(RowSource::Joined(kv));
            self.rows.push(slot);
        }
        self.batch = self.runner.assemble(self.batch.take(), sources)?;
        Ok(())
    }

    /// One batched forward for every running row, then each row's pipeline.
    fn decode_step(&mut self) -> Result<(), RunError> {
        let batch = match self.batch.as_mut() {
            Some(b) if b.rows() == self.rows.len() => b,
            _ => return Err(RunError::Cache("batch and rows disagree".into())),
        };
        let mut tokens = Vec::with_capacity(self.rows.len());
        for row in &mut self.rows {
            // A running row always has a token to feed: `advance` returned `Feed`.
            tokens.push(row.pending.pop_front().ok_or_else(|| {
                RunError::Cache("a running sequence has no token to feed".into())
            })?);
        }
        let logits = self.runner.step(batch, &tokens)?;
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.counters
            .max_batch_seen
            .fetch_max(self.rows.len(), Ordering::Relaxed);
        for (row, mut l) in self.rows.iter_mut().zip(logits) {
            if !row.pending.is_empty() {
                // Forced ids are still being fed; these logits are not sampled.
                continue;
            }
            let before = row.generated();
            let res = row.advance(&mut l);
            self.counters
                .tokens
                .fetch_add((row.generated() - before) as u64, Ordering::Relaxed);
            match res {
                Ok(None) => {}
                Ok(Some(reason)) => finish(row, reason, &self.counters),
                Err(e) => {
                    row.gone = true;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = row.tx.send(Event::Error(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Prefill one chunk of the oldest admitted sequence; when its prompt is done, sample
    /// its first token and queue it to join the batch.
    fn prefill_chunk(&mut self) {
        let Some(mut p) = self.prefilling.pop_front() else {
            return;
        };
        let Some(prompt) = p.slot.seq.as_ref().map(Sequence::prompt_ids) else {
            return;
        };
        let start = p.kv.past_len;
        let total = prompt.len();
        let end = (start + self.cfg.prefill_chunk).min(total);
        let chunk = prompt.get(start..end).unwrap_or_default().to_vec();
        let mut logits = match self.runner.forward(&mut p.kv, &chunk) {
            Ok(l) => l,
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = p.slot.tx.send(Event::Error(e.to_string()));
                return;
            }
        };
        if end < total {
            self.prefilling.push_front(p);
            return;
        }
        if let Err(e) = self.prefix.insert(&self.runner, prompt, &p.kv) {
            // The cache is an optimisation: losing an entry must not fail the request.
            tracing::warn!(error = %e, "prefix cache insert failed");
        }
        let before = p.slot.generated();
        let res = p.slot.advance(&mut logits);
        self.counters
            .tokens
            .fetch_add((p.slot.generated() - before) as u64, Ordering::Relaxed);
        match res {
            Ok(None) => self.joining.push((p.slot, p.kv)),
            Ok(Some(reason)) => finish(&mut p.slot, reason, &self.counters),
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = p.slot.tx.send(Event::Error(e.to_string()));
            }
        }
    }

    /// A failed batched forward loses the batch's KV: every running row gets the error.
    fn fail_batch(&mut self, msg: &str) {
        tracing::error!(error = msg, rows = self.rows.len(), "batched step failed");
        for row in self.rows.drain(..) {
            if !row.gone {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = row.tx.send(Event::Error(msg.to_string()));
            }
        }
        self.batch = None;
    }

    fn fail_all(&mut self, msg: &str) {
        let rows = self.rows.drain(..).filter(|r| !r.gone);
        let pre = self.prefilling.drain(..).map(|p| p.slot);
        let join = self.joining.drain(..).map(|(s, _)| s);
        for slot in rows.chain(pre).chain(join) {
            let _ = slot.tx.send(Event::Error(msg.to_string()));
        }
        self.batch = None;
        if let Some(job) = self.waiting.take() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = job.tx.send(Event::Error(msg.to_string()));
        }
        while let Ok(job) = self.rx.try_recv() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = job.tx.send(Event::Error(msg.to_string()));
        }
    }

    /// Update the gauges read by [`Scheduler::stats`].
    fn publish(&self) {
        let c = &self.counters;
        let live_rows = self.rows.iter().filter(|r| !r.gone).count();
        c.active.store(
            live_rows + self.prefilling.len() + self.joining.len(),
            Ordering::Relaxed,
        );
        let batch_tokens = self
            .batch
            .as_ref()
            .map_or(0, |b| (b.rows() * b.width()) as u64);
        let single_tokens: u64 = self
            .prefilling
            .iter()
            .map(|p| p.kv.past_len as u64)
            .chain(self.joining.iter().map(|(_, kv)| kv.past_len as u64))
            .sum();
        c.kv_used.store(
            (batch_tokens + single_tokens) * self.bytes_per_token,
            Ordering::Relaxed,
        );
        let reserved: u64 = self
            .rows
            .iter()
            .filter(|r| !r.gone)
            .map(|r| r.reserve as u64)
            .chain(self.prefilling.iter().map(|p| p.slot.reserve as u64))
            .chain(self.joining.iter().map(|(s, _)| s.reserve as u64))
            .sum();
        c.kv_reserved
            .store(reserved * self.bytes_per_token, Ordering::Relaxed);
        c.prefix_reused
            .store(self.prefix.reused_tokens, Ordering::Relaxed);
    }
}

/// End a sequence: flush its text, send `Done` (or the cancellation), mark it gone.
fn finish(slot: &mut Slot, reason: FinishReason, counters: &Counters) {
    slot.gone = true;
    if reason == FinishReason::Cancelled {
        counters.cancellations.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // `Sequence::finish` consumes the pipeline; the slot is gone, so swap in nothing by
    // taking it out through `Option`.
    let Some(seq) = slot.seq_take() else {
        return;
    };
    let tx = &slot.tx;
    let mut on_event = |ev: StreamEvent<'_>| send_text(tx, ev);
    match seq.finish(reason, &mut on_event) {
        Ok(out) => {
            tracing::debug!(
                tokens = out.completion_tokens,
                secs = slot.started.elapsed().as_secs_f64(),
                "request done"
            );
            counters.completed.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Event::Done(out));
        }
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Event::Error(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_padding_to_the_longest_row() {
        // 4 rows padded to 100 tokens × 10 bytes = 4000 bytes.
        assert!(fits([100, 10, 10, 10].into_iter(), 10, 4000));
        assert!(!fits([100, 10, 10, 10].into_iter(), 10, 3999));
        // The sum of reservations (1300 bytes) would have admitted this.
        assert!(!fits([100, 10, 10, 10].into_iter(), 10, 1300));
        assert!(fits(std::iter::empty(), 10, 0));
    }

    #[test]
    fn budget_arithmetic_saturates() {
        assert!(!fits([usize::MAX, 1].into_iter(), u64::MAX, u64::MAX - 1));
    }
}
