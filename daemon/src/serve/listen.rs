//! The listener: bind (or take the socket-activated one), start the admin socket, the
//! loaders and the supervisor, announce the address, then serve connections until a stop
//! signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminBackend;
use crate::config::Config;
use crate::util::lock;

use super::daemon::Daemon;
use super::load::{load_embedder_in_background, load_in_background};
use super::{ServeError, ADDR_FILE};

pub(super) async fn serve(
    daemon: &Arc<Daemon>,
    config: &Config,
    dev: bool,
    state_dir: &Path,
    addr: SocketAddr,
    activated: Option<std::net::TcpListener>,
) -> Result<(), ServeError> {
    let listener = match activated {
        Some(l) => TcpListener::from_std(l).map_err(|source| ServeError::Bind { addr, source })?,
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?,
    };
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    *lock(&daemon.listen_text) = format!("https://{local}");

    // Shutdown signal shared by the accept loop and the admin socket.
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_path = crate::admin::socket_path(dev, state_dir);
    let admin = tokio::spawn({
        let keys = daemon.app.keys().clone();
        let backend: Arc<dyn AdminBackend> = daemon.clone();
        let mut stop = stop_rx.clone();
        async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::admin::serve_admin(&admin_path, keys, backend, shutdown).await {
                tracing::error!(error = %e, "admin socket stopped");
            }
        }
    });

    // Installed before the address is announced, so a supervisor that signals as soon as it
    // sees it gets the graceful path.
    let signals = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
    ) {
        (Ok(term), Ok(hup)) => Signals { term, hup },
        (Err(e), _) | (_, Err(e)) => {
            return Err(ServeError::Runtime(format!(
                "cannot install signal handlers: {e}"
            )));
        }
    };

    load_in_background(daemon.clone());
    // tokens/s history for the console's chart; the console's compressed assets.
    tokio::spawn(crate::api::admin_http::run_sampler(
        daemon.app.clone(),
        stop_rx.clone(),
    ));
    tokio::task::spawn_blocking(crate::api::console::prepare);
    load_embedder_in_background(daemon, config, state_dir);

    // One line a supervisor or test can parse, then the address file (`--listen …:0`).
    {
        let id = daemon.tls.identity();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on https://{local}");
        let _ = writeln!(out, "tls fingerprint sha256 {}", id.fingerprint);
        if let Some(ca) = &id.ca_path {
            let _ = writeln!(out, "tls ca {}", ca.display());
        }
        let _ = out.flush();
    }
    let _ = std::fs::write(state_dir.join(ADDR_FILE), format!("{local}\n"));
    tracing::info!(addr = %local, models = %daemon.app.models.names().join(","), "serving HTTPS");

    // sd_notify: READY once the model has settled, STATUS lines, watchdog pings.
    let supervisor = tokio::spawn({
        let d = daemon.clone();
        crate::service::supervise(move || d.snapshot(), stop_rx.clone())
    });

    accept_loop(daemon, listener, signals).await;
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    let _ = admin.await;
    Ok(())
}

/// SIGTERM and SIGHUP streams.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// How often the generated server certificate is checked for its renewal window (it is
/// renewed [`crate::tls::RENEW_BEFORE_DAYS`] days before expiry, so hourly is plenty).
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// Serve connections ([`crate::conn`]) until SIGTERM / ctrl-c; SIGHUP reloads.
async fn accept_loop(daemon: &Arc<Daemon>, listener: TcpListener, signals: Signals) {
    let Signals { mut term, mut hup } = signals;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = daemon.app.clone();
    let ctx = crate::conn::Listener {
        tls: daemon.tls.clone(),
        limits: {
            let d = daemon.clone();
            Box::new(move || d.server())
        },
        handler: move |req, peer| crate::api::handle(app.clone(), req, peer),
    };
    let control = async move {
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_CHECK, RENEW_CHECK);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("interrupt: shutting down");
                    crate::service::stopping();
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    crate::service::stopping();
                    break;
                }
                _ = hup.recv() => {
                    crate::service::reloading();
                    daemon.reload_config("SIGHUP");
                    match daemon.tls.reload() {
                        Ok(id) => tracing::info!(fingerprint = %id.fingerprint, not_after = %id.not_after_utc(), "SIGHUP: TLS certificate (and client CA / CRL) reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate"),
                    }
                    if let Err(e) = daemon.app.keys().reload() {
                        tracing::error!(error = %e, "SIGHUP: API key reload failed");
                    }
                    crate::service::reloaded(&format!(
                        "reloaded; serving {}",
                        daemon.app.models.names().join(", ")
                    ));
                }
                _ = renew.tick() => {
                    // Off the reactor: key generation and file writes.
                    let tls = daemon.tls.clone();
                    match tokio::task::spawn_blocking(move || tls.renew_if_due()).await {
                        Ok(Ok(Some(id))) => tracing::info!(fingerprint = %id.fingerprint, not_after = %id.not_after_utc(), "TLS certificate renewed"),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "TLS certificate renewal failed; keeping the current certificate"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate renewal task failed"),
                    }
                }
            }
        }
        let _ = stop_tx.send(());
    };
    let serve = crate::conn::serve(listener, ctx, async move {
        let _ = stop_rx.await;
    });
    tokio::join!(serve, control);
}
