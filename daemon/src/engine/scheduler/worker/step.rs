//! The batched steps: rebuild the batch KV when rows leave or join (the only copy of KV),
//! one decode forward for every running row, and one prefill chunk of a waiting prompt.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::Event;
use super::{finish, Worker};
use crate::engine::generate::Sequence;
use crate::engine::runner::{RowSource, RunError};

/// The shortest decode step (measured on the previous one) that grammar masks are computed
/// beside: well above a thread's start and a mask's usual cost (tens of microseconds).
const MASK_AHEAD_MIN_STEP: Duration = Duration::from_millis(2);

impl Worker {
    /// Rebuild the batch KV if rows left or sequences join: the one place KV is copied.
    pub(super) fn rebuild(&mut self) -> Result<(), RunError> {
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
    pub(super) fn decode_step(&mut self) -> Result<(), RunError> {
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
        let rows = &mut self.rows;
        let runner = &mut self.runner;
        let constrained = rows
            .iter()
            .any(|r| r.seq.as_ref().is_some_and(Sequence::is_constrained));
        let started = Instant::now();
        // The grammar masks for these logits depend only on the ids sampled so far: with a
        // forward pass long enough to hide them (and a thread's start), compute them on a
        // second thread meanwhile. Short steps (tiny models) compute them inline in `advance`.
        let logits = if constrained && self.last_step >= MASK_AHEAD_MIN_STEP {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for row in rows.iter_mut().filter(|r| r.pending.is_empty()) {
                        if let Some(seq) = row.seq.as_mut() {
                            seq.prepare_mask();
                        }
                    }
                });
                runner.step(batch, &tokens)
            })?
        } else {
            runner.step(batch, &tokens)?
        };
        self.last_step = started.elapsed();
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
    pub(super) fn prefill_chunk(&mut self) {
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
}
