//! Per-key rate limits: requests and tokens per minute as token buckets kept in memory,
//! against an injectable clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::lock;

use super::{KeyInfo, KeyStore};

/// A request or token budget was exceeded; retry after this many seconds (HTTP `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry after {retry_after_s} s")]
pub struct RateLimited {
    pub retry_after_s: u64,
}

/// Time source: monotonic time for rate limits, wall-clock seconds for records. Injectable so
/// tests can move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn monotonic(&self) -> Duration;
    fn unix_secs(&self) -> u64;
}

pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
    fn unix_secs(&self) -> u64 {
        crate::util::unix_now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
    fn unix_secs(&self) -> u64 {
        // A fixed, recognisable epoch plus the elapsed manual time.
        1_700_000_000 + self.monotonic().as_secs()
    }
}

/// A token bucket: `level` units available, refilled at `per_sec` up to `cap`. The level may go
/// negative when a request costs more than was left (see [`KeyStore::check_rate`]).
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    cap: f64,
    per_sec: f64,
    level: f64,
    at: Duration,
}

impl Bucket {
    fn per_minute(n: u32, now: Duration) -> Bucket {
        let cap = f64::from(n.max(1));
        Bucket {
            cap,
            per_sec: cap / 60.0,
            level: cap,
            at: now,
        }
    }
    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.cap);
        self.at = now;
    }
    /// Seconds until `need` (capped at the bucket size, so an oversized request can pass on a
    /// full bucket) is available; 0 if it is now.
    fn wait_s(&self, need: f64) -> f64 {
        let need = need.min(self.cap);
        // Tolerance for float rounding in refills (e.g. 20 × 0.05 landing just under 1.0).
        if self.level + 1e-6 >= need {
            0.0
        } else {
            (need - self.level) / self.per_sec
        }
    }
}

#[derive(Default)]
pub(super) struct Limits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

fn sync_bucket(slot: &mut Option<Bucket>, limit: Option<u32>, now: Duration) {
    match limit {
        None => *slot = None,
        Some(n) => {
            let cap = f64::from(n.max(1));
            if slot.as_ref().map(|b| b.cap) != Some(cap) {
                *slot = Some(Bucket::per_minute(n, now));
            }
        }
    }
}

impl KeyStore {
    /// Admit one request costing `tokens` for `key`, or say how long to wait. See
    /// [`check_cost`](Self::check_cost).
    pub fn check_rate(&self, key: &KeyInfo, tokens: u64) -> Result<(), RateLimited> {
        self.check_cost(key, 1, tokens)
    }

    /// Admit `requests` requests costing `tokens` together for `key` (a chat request with `n`
    /// choices is `n` requests), or say how long to wait. Requests per minute and tokens per
    /// minute are token buckets (burst = the per-minute limit, refilled continuously), kept in
    /// memory. A cost larger than a whole budget passes only on a full bucket and leaves it in
    /// debt, so the key waits as long as that much takes to earn. Nothing is charged when the
    /// request is refused.
    pub fn check_cost(&self, key: &KeyInfo, requests: u32, tokens: u64) -> Result<(), RateLimited> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        let now = self.inner.clock.monotonic();
        let mut all = lock(&self.inner.limits);
        let l = all.entry(key.id.clone()).or_default();
        sync_bucket(&mut l.requests, key.rpm, now);
        sync_bucket(&mut l.tokens, key.tpm, now);
        let mut wait: f64 = 0.0;
        if let Some(b) = &mut l.requests {
            b.refill(now);
            wait = wait.max(b.wait_s(f64::from(requests)));
        }
        if let Some(b) = &mut l.tokens {
            b.refill(now);
            wait = wait.max(b.wait_s(tokens as f64));
        }
        if wait > 0.0 {
            return Err(RateLimited {
                retry_after_s: ((wait - 1e-6).ceil() as u64).max(1),
            });
        }
        if let Some(b) = &mut l.requests {
            b.level -= f64::from(requests);
        }
        if let Some(b) = &mut l.tokens {
            b.level -= tokens as f64;
        }
        Ok(())
    }

    /// Charge tokens after the fact (e.g. completion tokens once known) without refusing
    /// anything; the next [`check_rate`](Self::check_rate) sees the debt.
    pub fn charge_tokens(&self, key: &KeyInfo, tokens: u64) {
        let Some(tpm) = key.tpm else {
            return;
        };
        let now = self.inner.clock.monotonic();
        let mut all = lock(&self.inner.limits);
        let l = all.entry(key.id.clone()).or_default();
        sync_bucket(&mut l.tokens, Some(tpm), now);
        if let Some(b) = &mut l.tokens {
            b.refill(now);
            b.level -= tokens as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chat_key, open};
    use super::*;

    #[test]
    fn requests_per_minute() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, clock) = open(dir.path());
        let k = chat_key(&ks, "a", Some(3), None);
        for _ in 0..3 {
            ks.check_rate(&k, 0).unwrap();
        }
        // one request per 20 s comes back
        assert_eq!(ks.check_rate(&k, 0), Err(RateLimited { retry_after_s: 20 }));
        clock.advance(Duration::from_secs(19));
        assert_eq!(ks.check_rate(&k, 0), Err(RateLimited { retry_after_s: 1 }));
        clock.advance(Duration::from_secs(1));
        ks.check_rate(&k, 0).unwrap();
        assert!(ks.check_rate(&k, 0).is_err());
        // other keys are independent; keys without limits always pass
        let other = chat_key(&ks, "b", Some(1), None);
        ks.check_rate(&other, 0).unwrap();
        let free = chat_key(&ks, "c", None, None);
        for _ in 0..1000 {
            ks.check_rate(&free, 1_000_000).unwrap();
        }
        // revocation forgets the state
        ks.revoke("a").unwrap();
        ks.check_rate(&k, 0).unwrap();
    }

    #[test]
    fn tokens_per_minute() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, clock) = open(dir.path());
        let k = chat_key(&ks, "a", None, Some(600));
        ks.check_rate(&k, 500).unwrap();
        // 100 left; 300 needs 200 more at 10 tokens/s
        assert_eq!(
            ks.check_rate(&k, 300),
            Err(RateLimited { retry_after_s: 20 })
        );
        // refused requests are not charged
        ks.check_rate(&k, 100).unwrap();
        clock.advance(Duration::from_secs(20));
        ks.check_rate(&k, 200).unwrap();
        // after-the-fact charging creates debt
        clock.advance(Duration::from_secs(60));
        ks.charge_tokens(&k, 1200);
        assert_eq!(ks.check_rate(&k, 1), Err(RateLimited { retry_after_s: 61 }));
        // an oversized request passes on a full bucket, then the key waits it off
        clock.advance(Duration::from_secs(200));
        ks.check_rate(&k, 1200).unwrap();
        assert_eq!(ks.check_rate(&k, 1), Err(RateLimited { retry_after_s: 61 }));
    }

    #[test]
    fn rpm_and_tpm_together_charge_nothing_on_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, _) = open(dir.path());
        let k = chat_key(&ks, "a", Some(2), Some(100));
        ks.check_rate(&k, 90).unwrap();
        // tokens refuse: the request budget must not be spent
        assert!(ks.check_rate(&k, 50).is_err());
        ks.check_rate(&k, 10).unwrap();
        assert!(ks.check_rate(&k, 0).is_err());
    }

    #[test]
    fn several_requests_at_once_count_each() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, _) = open(dir.path());
        let k = chat_key(&ks, "a", Some(10), None);
        ks.check_cost(&k, 4, 0).unwrap();
        ks.check_cost(&k, 4, 0).unwrap();
        // Two left: a request of three choices waits, a single one passes.
        assert!(ks.check_cost(&k, 3, 0).is_err());
        ks.check_cost(&k, 2, 0).unwrap();
        assert!(ks.check_rate(&k, 0).is_err());
    }
}
