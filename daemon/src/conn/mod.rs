//! The HTTPS listener's connections: admission, the TLS handshake, HTTP/1.1 + HTTP/2 (hyper
//! `auto`), and the limits that keep a connection from holding a slot without using it.
//!
//! - **Admission** ([`Registry`]): at most `server.max_connections` open connections and
//!   `server.max_connections_per_ip` per client address. At a cap the connection that has
//!   been idle (no request in flight) the longest is evicted — closed gracefully — to make
//!   room; a new connection is refused (closed at once) only when every connection it would
//!   compete with is busy. Clients that connect and sit there therefore cannot lock others
//!   out, and a connection serving a request is never cut to make room.
//! - **Timers** (checked by each connection's task): the TLS handshake
//!   (`handshake_timeout_s`), the first request (`first_request_timeout_s`), idleness between
//!   requests (`idle_timeout_s`; only requests count as activity, so HTTP/2 PINGs — the
//!   server's own keep-alive included — do not keep a connection open), HTTP/2 keep-alive
//!   PINGs (`h2_keepalive_*`), HTTP/1.1 header reads (`header_read_timeout_s`, in hyper) and
//!   request bodies (`body_timeout_s` / `body_min_bytes_per_s`).
//! - **Request bodies**: whether the client still owes body bytes is read off the plaintext
//!   stream itself ([`Framing`]: HTTP/1.1 `Content-Length` / chunked framing, HTTP/2
//!   `END_STREAM`), because the API consumes hyper's body type directly. While bytes are
//!   owed, every `body_timeout_s` window must bring `body_min_bytes_per_s × body_timeout_s`
//!   bytes or the connection is cut; a client waiting for a long answer owes nothing and
//!   is never affected.
//!
//! Every limit is read again on each check, so a reload (SIGHUP) applies to open
//! connections' timers as well as to new connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::tls::TlsServer;

mod registry;
pub use registry::*;
mod framing;
pub use framing::*;
mod watchdog;
use watchdog::*;

/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 64;
/// HTTP/2 header list limit (the HTTP/1.1 equivalent is `server.max_headers`).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// A connection closed gracefully for idleness or eviction has no request in flight, so it
/// closes at once; this only bounds a client that does not play along.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often (a flood would fill the journal).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A response body that keeps its request counted as in flight until it is sent or dropped
/// (a stream of server-sent events is a request in flight).
pub struct Tracked<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder for the `[server]` limits in effect.
fn http_builder(sc: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(sc.header_read_timeout_s))
        .max_headers(sc.max_headers);
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    if sc.h2_keepalive_interval_s > 0 {
        h2.keep_alive_interval(Duration::from_secs(sc.h2_keepalive_interval_s))
            .keep_alive_timeout(Duration::from_secs(sc.h2_keepalive_timeout_s));
    }
    builder
}

/// What the listener serves with.
pub struct Listener<H> {
    pub tls: Arc<TlsServer>,
    /// The `[server]` limits in effect (a reload changes what this returns).
    pub limits: Box<dyn Fn() -> ServerConfig + Send + Sync>,
    /// Answers one request from a peer.
    pub handler: H,
}

/// Accept and serve connections until `stop` resolves, then let open connections finish
/// gracefully for up to `server.shutdown_grace_s`.
pub async fn serve<H, F, B>(listener: TcpListener, ctx: Listener<H>, stop: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ctx = Arc::new(ctx);
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; all dropped = all connections closed.
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut last_refusal_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let limits = (ctx.limits)();
                let slot = match registry.admit(
                    peer.ip(),
                    Instant::now(),
                    limits.max_connections,
                    limits.max_connections_per_ip,
                ) {
                    Ok(slot) => slot,
                    Err(why) => {
                        drop(stream);
                        refused_since_log += 1;
                        if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                            tracing::warn!(
                                %peer,
                                cap = why.as_str(),
                                refused = refused_since_log,
                                "connection refused: the cap is reached and every connection is busy"
                            );
                            last_refusal_log = Some(Instant::now());
                            refused_since_log = 0;
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    ctx.clone(),
                    stream,
                    peer,
                    slot,
                    limits,
                    stop_rx.clone(),
                    drain_tx.clone(),
                ));
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(drain_tx);
    let grace = Duration::from_secs((ctx.limits)().shutdown_grace_s);
    if tokio::time::timeout(grace, drain_rx.recv()).await.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            open = registry.live(),
            "connections still open after the grace period; closing them"
        );
    }
}

async fn connection<H, F, B>(
    ctx: Arc<Listener<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    limits: ServerConfig,
    mut stop: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(ctx.tls.config());
    let handshake = tokio::time::timeout(
        Duration::from_secs(limits.handshake_timeout_s),
        acceptor.accept(stream),
    );
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = slot.evicted() => {
            tracing::debug!(%peer, "evicted during the TLS handshake");
            return;
        }
        _ = stop.wait_for(|s| *s) => return,
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        *slot.progress.lock() = Framing::h2();
    }
    let slot = Arc::new(slot);
    let io = TokioIo::new(Metered {
        inner: tls,
        progress: slot.progress.clone(),
    });
    let svc = {
        let slot = slot.clone();
        let ctx = ctx.clone();
        service_fn(move |req| {
            let guard = slot.begin_request();
            let answer = (ctx.handler)(req, peer);
            async move {
                let resp = answer.await?;
                Ok::<_, Infallible>(resp.map(|inner| Tracked {
                    inner,
                    guard: Some(guard),
                }))
            }
        })
    };
    let builder = http_builder(&limits);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut watchdog = Watchdog {
        since: Instant::now(),
        window: None,
    };
    let mut limits = limits;
    // Set once a graceful close started: the moment it must be done by (none on shutdown,
    // where the listener's grace period applies).
    let mut closing: Option<Option<Instant>> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(tick(&limits)) => {
                let now = Instant::now();
                match closing {
                    Some(Some(deadline)) if now >= deadline => {
                        tracing::debug!(%peer, "did not close gracefully in time; closed");
                        return;
                    }
                    Some(_) => continue,
                    None => {}
                }
                limits = (ctx.limits)();
                let Some(activity) = slot.activity() else { return };
                let verdict = watchdog.check(
                    now,
                    &limits,
                    activity,
                    slot.progress.bytes(),
                    slot.progress.owes_body(),
                );
                match verdict {
                    Verdict::Keep => {}
                    Verdict::Close(why) => {
                        tracing::debug!(%peer, why, "closing the connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Some(now + CLOSE_GRACE));
                    }
                    Verdict::Cut(why) => {
                        tracing::info!(%peer, why, "connection cut");
                        return;
                    }
                }
            }
            () = slot.evicted(), if closing.is_none() => {
                tracing::debug!(%peer, "evicted to make room for a new connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(Some(Instant::now() + CLOSE_GRACE));
            }
            _ = stop.wait_for(|s| *s), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(None);
            }
        }
    }
}
