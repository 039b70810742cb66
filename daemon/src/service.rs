//! systemd integration: the `sd_notify` protocol (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `RELOADING=1`, `STOPPING=1`) and socket activation (`LISTEN_FDS`). Everything here is a
//! no-op without systemd: `NOTIFY_SOCKET` unset means no notifications, `LISTEN_FDS` unset (or
//! `LISTEN_PID` naming another process) means `serve` binds `--listen` itself.
//!
//! - `READY=1` is sent once the HTTPS listener is bound **and** the model has either loaded or
//!   failed to load. A failed load still reports READY (with a `STATUS=` line that says why):
//!   the daemon is up, `/healthz` answers, `/readyz` answers 503 and the admin socket works, and
//!   a failed start would only make `Restart=on-failure` retry the same failing load in a loop.
//! - `WATCHDOG=1` is sent every `WATCHDOG_USEC / 2`, but only while the engine thread makes
//!   progress: its loop bumps a heartbeat counter on every turn, idle waits included
//!   ([`crate::engine::scheduler::IDLE_HEARTBEAT`]), and a ping is skipped when the counter has
//!   not moved since the previous one. A stuck engine thread therefore stops the pings and
//!   systemd restarts the service. While the model loads (or after it failed) the reactor's own
//!   liveness is what is reported.
//! - `STATUS=` (model, provider, requests/s, tokens/s) is refreshed every [`STATUS_EVERY`].
//! - SIGHUP: `RELOADING=1` + `MONOTONIC_USEC=`, reload, then `READY=1`.
//! - SIGTERM: `STOPPING=1` before the listener closes and connections drain.

use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;

/// Default listen address of an appliance, and of `--dev`, where neither `--listen`,
/// `server.listen` nor socket activation names one (`doctor` checks the same port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";
pub const DEV_LISTEN: &str = "127.0.0.1:8443";

/// How often the `STATUS=` line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Whether `READY=1` has been sent (a reload only re-sends it after the first one).
static READY_SENT: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    READY_SENT.store(true, Ordering::SeqCst);
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd (≥ 253) wants for `Type=notify-reload`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(mono) => send(&[NotifyState::Reloading, mono]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `READY=1` after a reload; before the first READY (model still loading) the supervisor
/// sends it when the model is done.
pub fn reloaded(status_line: &str) {
    if READY_SENT.load(Ordering::SeqCst) {
        send(&[NotifyState::Ready, NotifyState::Status(status_line)]);
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining connections"),
    ]);
}

/// The listening socket systemd passed (socket activation: `LISTEN_PID` = our pid,
/// `LISTEN_FDS` ≥ 1, the socket at fd 3), as a non-blocking std listener. `None` when the
/// daemon was not socket-activated.
pub fn activated_listener() -> Result<Option<std::net::TcpListener>, String> {
    let mut fds = sd_notify::listen_fds().map_err(|e| format!("LISTEN_FDS: {e}"))?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            extra = fds.len(),
            "socket activation passed more than one socket; only the first (fd 3) is used"
        );
    }
    // SAFETY: `fd` is the descriptor systemd passed to this process (LISTEN_PID checked by
    // `listen_fds`); it stays open for the whole borrow, which ends with this statement.
    let is_listening_stream = matches!(
        nix::sys::socket::getsockopt(
            &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::sys::socket::sockopt::AcceptConn
        ),
        Ok(true)
    );
    if !is_listening_stream {
        return Err(format!(
            "socket activation: fd {fd} is not a listening stream socket"
        ));
    }
    // SAFETY: systemd hands fd 3 to this process (LISTEN_PID checked by `listen_fds`) and
    // nothing else in the daemon owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket activation: fd {fd}: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("socket activation: fd {fd} is not a TCP socket: {e}"))?;
    Ok(Some(listener))
}

/// What the supervisor needs to know about the daemon, sampled each tick.
pub struct Snapshot {
    pub model: String,
    pub state: ModelPhase,
    pub provider: Option<&'static str>,
    /// Engine loop turns (None while no engine runs).
    pub heartbeat: Option<u64>,
    /// Requests the engine has finished (completed, failed or cancelled).
    pub requests: u64,
    pub tokens: u64,
    pub active: usize,
    pub queued: usize,
}

pub enum ModelPhase {
    Loading,
    Ready,
    Failed(String),
}

impl Snapshot {
    fn line(&self, rates: Option<(f64, f64)>) -> String {
        match &self.state {
            ModelPhase::Loading => format!("loading model {}", self.model),
            ModelPhase::Failed(msg) => format!(
                "model {} failed to load ({msg}); /readyz answers 503, see `journalctl -u edgeseek`",
                self.model
            ),
            ModelPhase::Ready => {
                let (rps, tps) = rates.unwrap_or((0.0, 0.0));
                format!(
                    "serving {} on {}: {rps:.2} requests/s, {tps:.1} tokens/s, {} active, {} queued",
                    self.model,
                    self.provider.unwrap_or("?"),
                    self.active,
                    self.queued
                )
            }
        }
    }
}

/// Sends READY once the model has settled, then STATUS lines and watchdog pings until `stop`.
/// Runs on the reactor, so a blocked reactor stops the pings as well.
pub async fn supervise<F>(snapshot: F, mut stop: watch::Receiver<bool>)
where
    F: Fn() -> Snapshot + Send + 'static,
{
    let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    if !notify {
        return;
    }
    let tick = watchdog.map_or(Duration::from_millis(200), |w| {
        w.min(Duration::from_millis(200))
            .max(Duration::from_millis(10))
    });
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settled = false;
    let mut last_ping: Option<(Instant, Option<u64>)> = None;
    let mut last_status = Instant::now();
    let mut last_counts: Option<(Instant, u64, u64)> = None;
    let mut stalled_logged = false;
    let mut last_seen: Option<u64> = None;
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let snap = snapshot();
        if !settled && !matches!(snap.state, ModelPhase::Loading) {
            settled = true;
            last_counts = Some((Instant::now(), snap.requests, snap.tokens));
            last_status = Instant::now();
            let line = snap.line(None);
            if let ModelPhase::Failed(_) = snap.state {
                tracing::warn!("READY sent although the model failed to load: {line}");
            }
            ready(&line);
        } else if last_status.elapsed() >= STATUS_EVERY {
            let now = Instant::now();
            let rates = last_counts.map(|(t, r, k)| {
                let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    snap.requests.saturating_sub(r) as f64 / secs,
                    snap.tokens.saturating_sub(k) as f64 / secs,
                )
            });
            last_counts = Some((now, snap.requests, snap.tokens));
            last_status = now;
            status(&snap.line(rates));
        }
        if let Some(every) = watchdog {
            let due = last_ping.is_none_or(|(t, _)| t.elapsed() >= every);
            let progressed = engine_progressed(snap.heartbeat, last_ping.and_then(|(_, h)| h));
            if engine_progressed(snap.heartbeat, last_seen) {
                last_progress = Instant::now();
                last_seen = snap.heartbeat;
            }
            if due && progressed {
                send(&[NotifyState::Watchdog]);
                last_ping = Some((Instant::now(), snap.heartbeat));
                stalled_logged = false;
            } else if last_progress.elapsed() >= every && !stalled_logged {
                tracing::error!(
                    "engine thread made no progress for {:?}; not pinging the systemd watchdog",
                    every
                );
                stalled_logged = true;
            }
        }
    }
}

/// Whether the engine made progress since the last watchdog ping: its heartbeat moved, or
/// there is no engine to watch (loading, failed) or no earlier sample to compare with.
fn engine_progressed(now: Option<u64>, at_last_ping: Option<u64>) -> bool {
    match (now, at_last_ping) {
        (Some(hb), Some(prev)) => hb != prev,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_heartbeat_withholds_the_ping() {
        assert!(engine_progressed(Some(5), Some(4)));
        assert!(!engine_progressed(Some(4), Some(4)));
        assert!(engine_progressed(Some(4), None));
        assert!(engine_progressed(None, Some(4)));
        assert!(engine_progressed(None, None));
    }

    #[test]
    fn status_lines() {
        let mut s = Snapshot {
            model: "m".into(),
            state: ModelPhase::Loading,
            provider: None,
            heartbeat: None,
            requests: 0,
            tokens: 0,
            active: 0,
            queued: 0,
        };
        assert_eq!(s.line(None), "loading model m");
        s.state = ModelPhase::Failed("no onnx".into());
        assert!(s.line(None).contains("failed to load (no onnx)"));
        s.state = ModelPhase::Ready;
        s.provider = Some("cpu");
        s.active = 1;
        assert_eq!(
            s.line(Some((0.5, 12.25))),
            "serving m on cpu: 0.50 requests/s, 12.2 tokens/s, 1 active, 0 queued"
        );
    }

    #[test]
    fn not_socket_activated_without_listen_pid() {
        // The test process was not started by systemd (LISTEN_PID unset or another pid).
        if std::env::var("LISTEN_PID").ok() != Some(std::process::id().to_string()) {
            assert!(activated_listener().unwrap().is_none());
        }
    }
}
