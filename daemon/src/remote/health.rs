//! Whether an upstream is worth sending requests to, learned from the requests themselves and
//! from periodic probes ([`Upstream::watch`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::client::Upstream;
use super::RemoteError;
use crate::util::{lock, unix_now};

/// Consecutive soft failures (5xx, timeouts, broken connections) that mark an upstream down.
/// One is not enough: a single slow answer from a loaded server is not an outage.
pub(crate) const SOFT_FAILURES_DOWN: u32 = 3;

/// The longest wait between two probes of an upstream that is down, whatever its interval.
const MAX_BACKOFF_S: u64 = 300;

/// The longest a health probe may take (or `first_byte_timeout_s` if that is shorter): a
/// probe that waits two minutes for `/models` only delays learning that the upstream is gone.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A snapshot of an upstream's health, as `/health`, `edgeseek status` and the console show
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub up: bool,
    /// Unix seconds of the last transition (or of the upstream's creation).
    pub since: u64,
    /// Unix seconds of the last health probe.
    pub checked: Option<u64>,
    /// Why it is down, or what failed last; scrubbed, so a client may see it.
    pub error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
}

/// How bad a failure is for health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The upstream cannot be reached (connect error), or answers that it will not serve us
    /// (a probe refused, the model missing): down at once.
    Hard,
    /// A 5xx, a timeout, a broken connection: down after [`SOFT_FAILURES_DOWN`] in a row.
    Soft,
}

/// The mutable health of one upstream, behind a mutex (updates are a few field writes), with
/// what its log lines name it by. Shared by the [`Upstream`] and its open streams.
#[derive(Debug)]
pub(crate) struct HealthState {
    name: String,
    /// host:port, for the log (validation refuses URLs with credentials).
    host: String,
    health: std::sync::Mutex<Health>,
    /// Raised when a request marks the upstream down, so the health loop starts probing on
    /// the backoff schedule at once instead of after a whole `health_interval_s`.
    went_down: tokio::sync::Notify,
}

/// A transition a record caused, to be logged once by the caller (outside the lock).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Down(String),
    Up,
}

impl HealthState {
    /// Up: a request may be tried before the first probe.
    pub(crate) fn new(name: &str, host: &str) -> HealthState {
        HealthState {
            name: name.to_string(),
            host: host.to_string(),
            health: std::sync::Mutex::new(Health {
                up: true,
                since: unix_now(),
                checked: None,
                error: None,
                failures: 0,
            }),
            went_down: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Why the upstream is down, or `None` while it is up.
    pub(crate) fn down(&self) -> Option<String> {
        let h = lock(&self.health);
        (!h.up).then(|| {
            h.error
                .clone()
                .unwrap_or_else(|| "the upstream is down".into())
        })
    }

    pub(crate) fn success(&self, probed: bool) -> Transition {
        let mut h = lock(&self.health);
        h.failures = 0;
        if probed {
            h.checked = Some(unix_now());
        }
        if h.up {
            return Transition::None;
        }
        h.up = true;
        h.since = unix_now();
        h.error = None;
        Transition::Up
    }

    pub(crate) fn failure(&self, kind: Failure, why: &str, probed: bool) -> Transition {
        let mut h = lock(&self.health);
        h.failures = h.failures.saturating_add(1);
        h.error = Some(why.to_string());
        if probed {
            h.checked = Some(unix_now());
        }
        if h.up && (kind == Failure::Hard || h.failures >= SOFT_FAILURES_DOWN) {
            h.up = false;
            h.since = unix_now();
            return Transition::Down(why.to_string());
        }
        Transition::None
    }

    /// [`HealthState::success`], logged.
    pub(crate) fn ok(&self, probed: bool) {
        let t = self.success(probed);
        self.note(t);
    }

    /// [`HealthState::failure`], logged.
    pub(crate) fn fail(&self, kind: Failure, why: &str, probed: bool) {
        let t = self.failure(kind, why, probed);
        self.note(t);
    }

    /// Log a transition once: a warning when the upstream goes down, info when it is back.
    /// The upstream is named by its edgeseek name and host:port (never a credential: URLs
    /// with one are refused by validation, and every message is scrubbed of the key).
    fn note(&self, t: Transition) {
        match t {
            Transition::None => {}
            Transition::Down(why) => {
                tracing::warn!(
                    upstream = %self.name,
                    host = %self.host,
                    error = %why,
                    "remote backend is down; requests to it are refused until it is back"
                );
                self.went_down.notify_one();
            }
            Transition::Up => tracing::info!(
                upstream = %self.name,
                host = %self.host,
                "remote backend is up"
            ),
        }
    }
}

/// The wait before probe number `attempt` (0, 1, 2 …) of an upstream that is down: 1 s, 2 s,
/// 4 s … capped at min(300 s, 8 × `interval_s`), so a dead upstream costs a probe every few
/// minutes at most and one that comes back is noticed within a few intervals.
pub fn backoff(attempt: u32, interval_s: u64) -> Duration {
    let cap = MAX_BACKOFF_S.min(interval_s.saturating_mul(8)).max(1);
    let secs = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(cap))
}

impl Upstream {
    /// One health probe, recorded: the model list must name [`Upstream::upstream_model`].
    /// Returns the health after it. A probe that fails other than by a timeout, a 5xx, 429
    /// or a broken connection marks the upstream down at once: it answered, and the answer
    /// was no (wrong URL, refused key, model not served).
    pub async fn check(&self) -> Health {
        let state = self.health_state();
        match self.probe_classified().await {
            Ok(models) if models.iter().any(|m| m == self.upstream_model()) => state.ok(true),
            Ok(_) => {
                let why = self.scrub().text(&format!(
                    "upstream does not serve model {}",
                    self.upstream_model()
                ));
                state.fail(Failure::Hard, &why, true);
            }
            Err((e, kind)) => {
                let kind = match (&e, kind) {
                    (RemoteError::Status { status: 429, .. }, _) => Failure::Soft,
                    (_, Some(k)) => k,
                    (_, None) => Failure::Hard,
                };
                state.fail(kind, &e.to_string(), true);
            }
        }
        self.health()
    }

    /// Health loop until `stop` turns true (or its sender is dropped): probe every
    /// `health_interval_s` while up; while down, probe on the [`backoff`] schedule, which
    /// also starts as soon as a request marks the upstream down. The first probe runs at
    /// once, so a backend that is down at startup is marked so within a timeout. Nothing
    /// else brings a down upstream back up: run this for every upstream that serves.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = self.config().health_interval_s;
        let mut attempt = 0u32;
        let mut wait = Duration::ZERO;
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.health_state().went_down.notified() => {
                    attempt = 1;
                    wait = backoff(0, interval);
                    continue;
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let health = tokio::select! {
                h = self.check() => h,
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            wait = if health.up {
                attempt = 0;
                Duration::from_secs(interval)
            } else {
                let w = backoff(attempt, interval);
                attempt = attempt.saturating_add(1);
                w
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let s = |a, i| backoff(a, i).as_secs();
        assert_eq!(
            (0..9).map(|a| s(a, 15)).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64, 120, 120]
        );
        assert_eq!(s(10, 3600), 300);
        assert_eq!(s(8, 3600), 256);
        assert_eq!((0..5).map(|a| s(a, 1)).collect::<Vec<_>>(), [1, 2, 4, 8, 8]);
        assert_eq!(s(u32::MAX, 15), 120);
    }

    #[test]
    fn one_hard_or_three_soft_failures_mark_down_and_a_success_up() {
        let h = HealthState::new("hq", "vllm.lan:8000");
        assert!(h.snapshot().up && h.down().is_none());
        assert_eq!(
            h.failure(Failure::Soft, "HTTP 503", false),
            Transition::None
        );
        assert_eq!(
            h.failure(Failure::Soft, "HTTP 503", false),
            Transition::None
        );
        assert!(h.snapshot().up);
        assert_eq!(
            h.failure(Failure::Soft, "timeout", false),
            Transition::Down("timeout".into())
        );
        assert_eq!(h.down().as_deref(), Some("timeout"));
        assert_eq!(h.snapshot().failures, 3);
        assert_eq!(h.failure(Failure::Hard, "refused", false), Transition::None);
        assert_eq!(h.success(true), Transition::Up);
        let s = h.snapshot();
        assert!(s.up && s.error.is_none() && s.failures == 0 && s.checked.is_some());
        assert_eq!(h.success(false), Transition::None);

        h.failure(Failure::Soft, "HTTP 500", false);
        h.success(false);
        h.failure(Failure::Soft, "HTTP 500", false);
        h.failure(Failure::Soft, "HTTP 500", false);
        assert!(
            h.snapshot().up,
            "a success between failures resets the count"
        );
        assert_eq!(
            h.failure(Failure::Hard, "connection refused", false),
            Transition::Down("connection refused".into())
        );
    }
}
