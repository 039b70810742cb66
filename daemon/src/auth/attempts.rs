//! The limit on sign-in attempts: a password guesser gets a handful of tries a minute per
//! account (so one account cannot be brute-forced, nor locked in the directory by our
//! retries) and per source address (so one machine cannot walk through many accounts).
//! Every attempt counts, successful or not: counting is done before the directory is asked,
//! so parallel guesses cannot slip past the limit while their binds are in flight.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::lock;

/// Attempts per account name in [`WINDOW`].
pub const PER_USER: usize = 5;
/// Attempts per source address in [`WINDOW`] (higher: an office behind one NAT address).
pub const PER_SOURCE: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Names and addresses remembered at most; past that the oldest windows are dropped, so a
/// flood of made-up names cannot grow memory without bound.
const MAX_TRACKED: usize = 10_000;

#[derive(Default)]
pub struct Attempts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_user: HashMap<String, VecDeque<Instant>>,
    by_source: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Attempts {
    /// Count an attempt of `user` from `source` at `now`, or refuse it with the seconds
    /// until the oldest attempt in the window expires (for `Retry-After`). A refused attempt
    /// is not counted.
    pub fn try_attempt(&self, user: &str, source: IpAddr, now: Instant) -> Result<(), u64> {
        let user = user.to_lowercase();
        let mut g = lock(&self.inner);
        let Inner { by_user, by_source } = &mut *g;
        let wait_user = wait(by_user.get_mut(&user), PER_USER, now);
        let wait_source = wait(by_source.get_mut(&source), PER_SOURCE, now);
        if let Some(w) = wait_user.max(wait_source) {
            return Err(w.as_secs().max(1));
        }
        if by_user.len() >= MAX_TRACKED || by_source.len() >= MAX_TRACKED {
            by_user.retain(|_, q| q.back().is_some_and(|t| now - *t < WINDOW));
            by_source.retain(|_, q| q.back().is_some_and(|t| now - *t < WINDOW));
            if by_user.len() >= MAX_TRACKED {
                by_user.clear();
            }
            if by_source.len() >= MAX_TRACKED {
                by_source.clear();
            }
        }
        by_user.entry(user).or_default().push_back(now);
        by_source.entry(source).or_default().push_back(now);
        Ok(())
    }
}

/// Drop attempts older than the window; how long until one more is allowed, if it is not.
fn wait(q: Option<&mut VecDeque<Instant>>, cap: usize, now: Instant) -> Option<Duration> {
    let q = q?;
    while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
    if q.len() < cap {
        return None;
    }
    let oldest = *q.front()?;
    Some(WINDOW.saturating_sub(now.duration_since(oldest)) + Duration::from_millis(999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_then_per_source_and_the_window_slides() {
        let a = Attempts::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..PER_USER {
            a.try_attempt("Alice", ip, t0).unwrap();
        }
        // Case does not give more tries (directories match names case-insensitively).
        let wait = a.try_attempt("alice", ip, t0).unwrap_err();
        assert!((59..=61).contains(&wait), "{wait}");
        // Another account from the same machine still may, up to the source's limit.
        for i in 0..(PER_SOURCE - PER_USER) {
            a.try_attempt(&format!("user{i}"), ip, t0).unwrap();
        }
        assert!(a.try_attempt("bob", ip, t0).is_err());
        assert!(a
            .try_attempt("bob", "10.0.0.2".parse().unwrap(), t0)
            .is_ok());
        // A minute later the window is empty again.
        assert!(a.try_attempt("alice", ip, t0 + WINDOW).is_ok());
    }
}
