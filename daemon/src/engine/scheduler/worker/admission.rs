//! Admission: take queued requests while there is a free slot and the KV budget holds with
//! them (checked against the batch padded to its longest row), and drop cancelled ones.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Instant;

use super::super::{Event, IDLE_HEARTBEAT};
use super::{Prefill, Slot, Worker};

/// Whether `lens` more sequences fit: `rows × longest reservation × bytes ≤ budget`.
fn fits(reserves: impl Iterator<Item = usize>, bytes_per_token: u64, budget: u64) -> bool {
    let (n, longest) = reserves.fold((0u64, 0u64), |(n, m), r| (n + 1, m.max(r as u64)));
    n.saturating_mul(longest).saturating_mul(bytes_per_token) <= budget
}

impl Worker {
    /// Take queued jobs while they fit. Blocks only when there is nothing else to do.
    /// Returns `false` when the channel is closed and no work is left.
    pub(super) fn admit(&mut self) -> bool {
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
    pub(super) fn drop_cancelled(&mut self) {
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
