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
//!
//! Parts: this file is the callers' side (submit, handles, stats, shutdown); the loop's
//! thread is `worker`, with its admission (`worker::admission`) and its batched steps
//! (`worker::step`).

mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::lock;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::generate::{plan_request, GenerateError, Sequence, TokenLogprob};
use super::grammar::Grammars;
use super::model::ModelSpec;
use super::template::ChatTemplate;
use super::{Engine, GenerateOutput, GenerateRequest, Provider};
use worker::Worker;

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
    grammars: Grammars,
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
        let mut worker = Worker::new(runner, rx, cfg.clone(), stop.clone(), counters.clone());
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
                grammars: Grammars::new(tokenizer.clone(), spec.vocab_size, &spec.eos_ids),
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

    /// Compiles `response_format` schemas and forced tool calls for this model.
    pub fn grammars(&self) -> &Grammars {
        &self.shared.grammars
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
        // Dropping the sender wakes a loop blocked waiting for work.
        crate::util::stop_worker(&sh.stop, &sh.tx, &sh.thread, "engine");
    }
}
