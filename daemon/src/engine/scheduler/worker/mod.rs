//! The engine loop's own thread: its state (running rows, prefilling and joining
//! sequences, the prefix cache), the turn of the loop, failure and shutdown, the gauges.
//! Admission is in [`admission`], the batched steps in [`step`].

mod admission;
mod step;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{Counters, Event, Job, SchedulerConfig, PREFIX_BLOCK};
use crate::engine::generate::{GenerateError, Next, Sequence};
use crate::engine::prefix::PrefixCache;
use crate::engine::runner::{BatchKv, Runner, SeqState};
use crate::engine::{FinishReason, StreamEvent};

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

pub(super) struct Worker {
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
    /// How long the last decode step's forward pass took (whether masks are computed beside
    /// the next one, see `step`).
    last_step: std::time::Duration,
}

impl Worker {
    /// The loop's state around `runner`; [`Worker::run`] drives it.
    pub(super) fn new(
        runner: Runner,
        rx: Receiver<Job>,
        cfg: SchedulerConfig,
        stop: Arc<AtomicBool>,
        counters: Arc<Counters>,
    ) -> Worker {
        let bytes_per_token = runner.kv_bytes_per_token() as u64;
        let prefix = PrefixCache::new(cfg.prefix_cache_bytes, bytes_per_token, PREFIX_BLOCK);
        Worker {
            runner,
            rx,
            cfg,
            stop,
            counters,
            bytes_per_token,
            batch: None,
            rows: Vec::new(),
            prefilling: VecDeque::new(),
            joining: Vec::new(),
            waiting: None,
            prefix,
            last_step: std::time::Duration::ZERO,
        }
    }

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

    pub(super) fn run(&mut self) {
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
