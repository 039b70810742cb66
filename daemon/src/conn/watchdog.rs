//! The timers of one connection after its TLS handshake: first request, idleness and the
//! slow-body cut.

use std::time::{Duration, Instant};

use crate::config::ServerConfig;

use super::*;

/// What a connection's check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Close gracefully (no request in flight): the reason.
    Close(&'static str),
    /// Close now: the reason.
    Cut(&'static str),
}

/// The timers of one connection after its TLS handshake.
#[derive(Debug)]
pub(super) struct Watchdog {
    pub(super) since: Instant,
    /// While a body is owed: the current window's start and the bytes read by then.
    pub(super) window: Option<(Instant, u64)>,
}

impl Watchdog {
    pub(super) fn check(
        &mut self,
        now: Instant,
        limits: &ServerConfig,
        activity: Activity,
        bytes: u64,
        owes_body: bool,
    ) -> Verdict {
        let secs = Duration::from_secs;
        if activity.in_flight == 0 {
            self.window = None;
            if activity.requests == 0 {
                if now.duration_since(self.since) >= secs(limits.first_request_timeout_s) {
                    return Verdict::Close("no request within server.first_request_timeout_s");
                }
            } else if now.duration_since(activity.last_active) >= secs(limits.idle_timeout_s) {
                return Verdict::Close("idle for server.idle_timeout_s");
            }
            return Verdict::Keep;
        }
        if !owes_body {
            self.window = None;
            return Verdict::Keep;
        }
        let window = secs(limits.body_timeout_s);
        match self.window {
            None => self.window = Some((now, bytes)),
            Some((start, at_start)) if now.duration_since(start) >= window => {
                let needed = limits
                    .body_min_bytes_per_s
                    .saturating_mul(limits.body_timeout_s)
                    .max(1);
                if bytes.saturating_sub(at_start) < needed {
                    return Verdict::Cut("request body slower than server.body_min_bytes_per_s over server.body_timeout_s");
                }
                self.window = Some((now, bytes));
            }
            Some(_) => {}
        }
        Verdict::Keep
    }
}

/// How often a connection checks its timers: a quarter of the shortest, within 0.1–1 s.
pub(super) fn tick(limits: &ServerConfig) -> Duration {
    let shortest = limits
        .first_request_timeout_s
        .min(limits.idle_timeout_s)
        .min(limits.body_timeout_s);
    Duration::from_millis((shortest.saturating_mul(250)).clamp(100, 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(body_timeout_s: u64, rate: u64) -> ServerConfig {
        ServerConfig {
            first_request_timeout_s: 5,
            idle_timeout_s: 10,
            body_timeout_s,
            body_min_bytes_per_s: rate,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn watchdog_timers() {
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let l = limits(4, 100);
        let act = |in_flight, requests, last| Activity {
            in_flight,
            requests,
            last_active: last,
        };
        let mut w = Watchdog {
            since: t,
            window: None,
        };
        assert_eq!(w.check(at(4), &l, act(0, 0, t), 0, false), Verdict::Keep);
        assert!(matches!(
            w.check(at(5), &l, act(0, 0, t), 0, false),
            Verdict::Close(_)
        ));
        // After a request: idle counts from its end.
        assert_eq!(
            w.check(at(14), &l, act(0, 1, at(5)), 0, false),
            Verdict::Keep
        );
        assert!(matches!(
            w.check(at(15), &l, act(0, 1, at(5)), 0, false),
            Verdict::Close(_)
        ));
        // A request in flight with nothing owed (waiting for its answer) is never cut.
        assert_eq!(w.check(at(100), &l, act(1, 1, t), 0, false), Verdict::Keep);
        // Owed body: 400 bytes per 4 s window needed.
        let busy = act(1, 2, at(100));
        assert_eq!(w.check(at(100), &l, busy, 1000, true), Verdict::Keep);
        assert_eq!(w.check(at(104), &l, busy, 1400, true), Verdict::Keep);
        assert_eq!(w.check(at(106), &l, busy, 1401, true), Verdict::Keep);
        assert!(matches!(
            w.check(at(108), &l, busy, 1799, true),
            Verdict::Cut(_)
        ));
        // A fast upload of 64 MiB at 1 MiB/s: every window passes.
        let mut w = Watchdog {
            since: t,
            window: None,
        };
        let d = limits(20, 1024);
        for s in 0..=64u64 {
            assert_eq!(
                w.check(at(s), &d, busy, s << 20, true),
                Verdict::Keep,
                "{s}"
            );
        }
        assert_eq!(tick(&d), Duration::from_secs(1));
        assert_eq!(tick(&limits(1, 1)), Duration::from_millis(250));
    }
}
