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

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::tls::TlsServer;

/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 64;
/// HTTP/2 header list limit (the HTTP/1.1 equivalent is `server.max_headers`).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// A connection closed gracefully for idleness or eviction has no request in flight, so it
/// closes at once; this only bounds a client that does not play along.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often (a flood would fill the journal).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The address a per-address cap counts: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what
/// a dual-stack `[::]` listener reports for IPv4 clients) is its IPv4 address.
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The address is at `max_connections_per_ip` and all its connections are busy.
    PerAddress,
    /// The server is at `max_connections` and all connections are busy.
    AllBusy,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::PerAddress => "max_connections_per_ip",
            Refused::AllBusy => "max_connections",
        }
    }
}

/// Open connections: per-connection state (requests in flight, last activity) and the
/// counts the caps apply to. One short mutex; eviction scans the open connections, which
/// only happens at a cap.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Open, not evicted.
    live: usize,
    per_address: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    address: IpAddr,
    in_flight: usize,
    requests: u64,
    /// Admission, then the start and end of each request.
    last_active: Instant,
    /// Evicted: no longer counted, closing.
    evicted: bool,
    evict: Arc<Notify>,
}

/// A snapshot of one connection's activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub in_flight: usize,
    pub requests: u64,
    pub last_active: Instant,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `peer`, evicting idle connections to stay within the caps.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        now: Instant,
        max_total: usize,
        max_per_address: usize,
    ) -> Result<Slot, Refused> {
        let address = client_address(peer);
        let mut inner = self.lock();
        if inner.per_address.get(&address).copied().unwrap_or(0) >= max_per_address
            && !inner.evict_idlest(|e| e.address == address)
        {
            return Err(Refused::PerAddress);
        }
        // A lowered cap (reload) may leave more than one to evict.
        while inner.live >= max_total {
            if !inner.evict_idlest(|_| true) {
                return Err(Refused::AllBusy);
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let evict = Arc::new(Notify::new());
        inner.live += 1;
        *inner.per_address.entry(address).or_insert(0) += 1;
        inner.conns.insert(
            id,
            Entry {
                address,
                in_flight: 0,
                requests: 0,
                last_active: now,
                evicted: false,
                evict: evict.clone(),
            },
        );
        Ok(Slot {
            registry: self.clone(),
            id,
            evict,
            progress: Arc::new(Progress::default()),
        })
    }

    /// Open connections (evicted ones that are still closing not counted).
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Open connections of one address (as [`client_address`] counts it).
    pub fn from_address(&self, ip: IpAddr) -> usize {
        self.lock()
            .per_address
            .get(&client_address(ip))
            .copied()
            .unwrap_or(0)
    }

    fn activity(&self, id: u64) -> Option<Activity> {
        self.lock().conns.get(&id).map(|e| Activity {
            in_flight: e.in_flight,
            requests: e.requests,
            last_active: e.last_active,
        })
    }

    fn begin(&self, id: u64, now: Instant) {
        if let Some(e) = self.lock().conns.get_mut(&id) {
            e.in_flight += 1;
            e.requests += 1;
            e.last_active = now;
        }
    }

    /// Returns the requests still in flight.
    fn end(&self, id: u64, now: Instant) -> usize {
        let mut inner = self.lock();
        let Some(e) = inner.conns.get_mut(&id) else {
            return 0;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        e.last_active = now;
        e.in_flight
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.conns.remove(&id) {
            if !e.evicted {
                inner.uncount(e.address);
            }
        }
    }
}

impl Inner {
    fn uncount(&mut self, address: IpAddr) {
        self.live = self.live.saturating_sub(1);
        if let Some(n) = self.per_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// Evict the connection among `which` that has had no request in flight for the longest
    /// (ties: the older connection); `false` when every one of them is busy.
    fn evict_idlest(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| !e.evicted && e.in_flight == 0 && which(e))
            .min_by_key(|(id, e)| (e.last_active, **id))
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        let Some(e) = self.conns.get_mut(&id) else {
            return false;
        };
        e.evicted = true;
        e.evict.notify_one();
        let address = e.address;
        self.uncount(address);
        true
    }
}

/// One admitted connection; leaving the registry when dropped.
#[derive(Debug)]
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
    evict: Arc<Notify>,
    progress: Arc<Progress>,
}

impl Slot {
    /// A request started; it counts as in flight until the guard is dropped (with its
    /// response body).
    pub fn begin_request(&self) -> InFlight {
        self.registry.begin(self.id, Instant::now());
        InFlight {
            registry: self.registry.clone(),
            id: self.id,
            progress: self.progress.clone(),
        }
    }

    pub fn activity(&self) -> Option<Activity> {
        self.registry.activity(self.id)
    }

    /// Resolves once the registry evicted this connection.
    async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// A request in flight (see [`Slot::begin_request`]).
#[derive(Debug)]
pub struct InFlight {
    registry: Arc<Registry>,
    id: u64,
    progress: Arc<Progress>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.registry.end(self.id, Instant::now()) == 0 {
            // No handler waits for a body now: an HTTP/2 stream whose body the server did not
            // read (e.g. answered 413) must not count as owed.
            self.progress.lock().settle();
        }
    }
}

/// Plaintext bytes read on a connection and what its request framing says is still owed.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    framing: Mutex<Framing>,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Framing> {
        self.framing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.lock().feed(data);
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn owes_body(&self) -> bool {
        self.lock().owes_body()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP/1.1 head followed; hyper refuses longer ones anyway.
const MAX_HEAD: usize = 256 * 1024;
/// Longest chunk-size line or trailer section followed.
const MAX_LINE: usize = 16 * 1024;

/// Request framing as read off the plaintext stream: just enough to know whether the
/// client still owes request-body bytes. Anything it cannot follow turns it `Off` (no body
/// is then considered owed: the limit errs towards leaving a connection alone).
#[derive(Debug, Default)]
pub enum Framing {
    /// The first bytes decide: the HTTP/2 preface, else HTTP/1.1.
    #[default]
    Sniff,
    SniffBuf(Vec<u8>),
    H1(H1),
    H2(H2),
    Off,
}

#[derive(Debug)]
pub enum H1 {
    Head(Vec<u8>),
    Length(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// CRLF after a chunk's data: bytes left.
    ChunkEnd(u8),
    Trailers(Vec<u8>),
}

#[derive(Debug, Default)]
pub struct H2 {
    preface_left: usize,
    header: [u8; 9],
    have: usize,
    skip: u64,
    /// Streams whose request has started and not ended (`END_STREAM` / `RST_STREAM`).
    open: HashSet<u32>,
}

/// Streams followed per connection; beyond it (far above `H2_MAX_STREAMS`) framing is off.
const H2_MAX_OPEN: usize = 1024;

impl Framing {
    /// Framing of a connection whose TLS handshake negotiated HTTP/2 (ALPN `h2`).
    pub fn h2() -> Framing {
        Framing::H2(H2 {
            preface_left: H2_PREFACE.len(),
            ..H2::default()
        })
    }

    pub fn owes_body(&self) -> bool {
        match self {
            Framing::H1(H1::Head(_)) => false,
            Framing::H1(_) => true,
            Framing::H2(h) => !h.open.is_empty(),
            _ => false,
        }
    }

    /// No request is in flight: nothing can be owed any more (HTTP/2 streams the server
    /// answered without reading their bodies).
    fn settle(&mut self) {
        if let Framing::H2(h) = self {
            h.open.clear();
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self {
            Framing::Sniff | Framing::SniffBuf(_) => {
                let mut buf = match std::mem::take(self) {
                    Framing::SniffBuf(b) => b,
                    _ => Vec::new(),
                };
                buf.extend_from_slice(data);
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    *self = Framing::H1(H1::Head(Vec::new()));
                    self.feed(&buf);
                } else if buf.len() >= H2_PREFACE.len() {
                    *self = Framing::h2();
                    self.feed(&buf);
                } else {
                    *self = Framing::SniffBuf(buf);
                }
            }
            Framing::H1(h) => {
                let mut rest = data;
                while !rest.is_empty() {
                    match h.step(rest) {
                        Some(n) => rest = &rest[n..],
                        None => {
                            *self = Framing::Off;
                            return;
                        }
                    }
                }
            }
            Framing::H2(h) => {
                if !h.feed(data) {
                    *self = Framing::Off;
                }
            }
            Framing::Off => {}
        }
    }
}

/// Where `\r\n\r\n` ends in `buf`, searching from `from` (minus the 3 bytes before).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

impl H1 {
    /// Consume from `data` (at least one byte); `None` when the stream cannot be followed.
    fn step(&mut self, data: &[u8]) -> Option<usize> {
        match self {
            H1::Head(buf) => {
                let old = buf.len();
                buf.extend_from_slice(data);
                let Some(end) = head_end(buf, old) else {
                    return (buf.len() <= MAX_HEAD).then_some(data.len());
                };
                let next = body_framing(&buf[..end])?;
                *self = next;
                Some(end - old)
            }
            H1::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = H1::Head(Vec::new());
                }
                Some(n as usize)
            }
            H1::ChunkSize(buf) => {
                let (take, done) = match data.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (data.len(), false),
                };
                buf.extend_from_slice(&data[..take]);
                if buf.len() > MAX_LINE {
                    return None;
                }
                if done {
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((_, 0))) => {
                            *self = H1::Trailers(Vec::new());
                        }
                        Ok(httparse::Status::Complete((_, size))) => *self = H1::ChunkData(size),
                        _ => return None,
                    }
                }
                Some(take)
            }
            H1::ChunkData(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = H1::ChunkEnd(2);
                }
                Some(n as usize)
            }
            H1::ChunkEnd(left) => {
                let n = usize::from(*left).min(data.len());
                *left -= n as u8;
                if *left == 0 {
                    *self = H1::ChunkSize(Vec::new());
                }
                Some(n)
            }
            H1::Trailers(buf) => {
                let old = buf.len();
                buf.extend_from_slice(data);
                let end = if buf.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    head_end(buf, old)
                };
                match end {
                    Some(end) => {
                        *self = H1::Head(Vec::new());
                        Some(end - old)
                    }
                    None => (buf.len() <= MAX_LINE).then_some(data.len()),
                }
            }
        }
    }
}

/// What follows a complete request head: `None` when it does not parse.
fn body_framing(head: &[u8]) -> Option<H1> {
    let mut headers = vec![httparse::EMPTY_HEADER; 1024];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut length = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).ok()?;
            if value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            {
                return Some(H1::ChunkSize(Vec::new()));
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()?,
            );
        }
    }
    Some(match length {
        Some(n) if n > 0 => H1::Length(n),
        _ => H1::Head(Vec::new()),
    })
}

impl H2 {
    /// `false` when the stream cannot be followed.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
            } else {
                let n = (9 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    if !self.frame() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn frame(&mut self) -> bool {
        const END_STREAM: u8 = 0x1;
        let h = &self.header;
        let len = u64::from(u32::from_be_bytes([0, h[0], h[1], h[2]]));
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.skip = len;
        match kind {
            // DATA
            0x0 if flags & END_STREAM != 0 => {
                self.open.remove(&stream);
            }
            // HEADERS: a request without END_STREAM has a body to come.
            0x1 if flags & END_STREAM != 0 => {
                self.open.remove(&stream);
            }
            0x1 => {
                self.open.insert(stream);
            }
            // RST_STREAM
            0x3 => {
                self.open.remove(&stream);
            }
            _ => {}
        }
        self.open.len() <= H2_MAX_OPEN
    }
}

/// The TLS stream, counting the plaintext bytes read and following their framing.
struct Metered<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.progress.read(new);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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

/// What a connection's check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Close gracefully (no request in flight): the reason.
    Close(&'static str),
    /// Close now: the reason.
    Cut(&'static str),
}

/// The timers of one connection after its TLS handshake.
#[derive(Debug)]
struct Watchdog {
    since: Instant,
    /// While a body is owed: the current window's start and the bytes read by then.
    window: Option<(Instant, u64)>,
}

impl Watchdog {
    fn check(
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
fn tick(limits: &ServerConfig) -> Duration {
    let shortest = limits
        .first_request_timeout_s
        .min(limits.idle_timeout_s)
        .min(limits.body_timeout_s);
    Duration::from_millis((shortest.saturating_mul(250)).clamp(100, 1000))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_evicts_that_address_idlest_then_refuses_when_busy() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let a = ip("10.0.0.1");
        let s1 = reg.admit(a, t, 100, 2).unwrap();
        let s2 = reg.admit(a, t + Duration::from_secs(1), 100, 2).unwrap();
        let other = reg.admit(ip("10.0.0.2"), t, 100, 2).unwrap();
        assert_eq!(reg.from_address(a), 2);
        // Third from `a`: s1 (idle longest) is evicted, not the other address's connection.
        let s3 = reg.admit(a, t + Duration::from_secs(2), 100, 2).unwrap();
        assert_eq!(reg.from_address(a), 2);
        assert!(reg.lock().conns[&s1.id].evicted);
        assert!(!reg.lock().conns[&other.id].evicted);
        // All of `a`'s connections busy: refused, whatever room the server has.
        let _b2 = s2.begin_request();
        let _b3 = s3.begin_request();
        assert_eq!(
            reg.admit(a, t + Duration::from_secs(3), 100, 2)
                .unwrap_err(),
            Refused::PerAddress
        );
        assert!(reg.admit(ip("10.0.0.3"), t, 100, 2).is_ok());
        // Dropping the evicted slot does not count it twice.
        drop(s1);
        assert_eq!(reg.from_address(a), 2);
        drop(s2);
        drop(_b2);
        assert_eq!(reg.from_address(a), 1);
    }

    #[test]
    fn global_cap_evicts_the_longest_idle_and_never_a_busy_one() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let oldest_busy = reg.admit(ip("10.0.0.1"), at(0), 3, 100).unwrap();
        let idle_old = reg.admit(ip("10.0.0.2"), at(1), 3, 100).unwrap();
        let idle_new = reg.admit(ip("10.0.0.3"), at(2), 3, 100).unwrap();
        let busy = oldest_busy.begin_request();
        // `idle_new` finished a request after `idle_old` was admitted: `idle_old` has been
        // idle the longest.
        reg.begin(idle_new.id, at(3));
        reg.end(idle_new.id, at(4));
        let n1 = reg.admit(ip("10.0.0.9"), at(5), 3, 100).unwrap();
        assert!(reg.lock().conns[&idle_old.id].evicted);
        assert!(!reg.lock().conns[&oldest_busy.id].evicted);
        assert_eq!(reg.live(), 3);
        let n2 = reg.admit(ip("10.0.0.9"), at(6), 3, 100).unwrap();
        assert!(reg.lock().conns[&idle_new.id].evicted);
        // Left: the busy one and n1, n2 (idle): n1 goes next.
        let _n3 = reg.admit(ip("10.0.0.9"), at(7), 3, 100).unwrap();
        assert!(reg.lock().conns[&n1.id].evicted);
        let _b2 = n2.begin_request();
        let _b3 = _n3.begin_request();
        // Everyone busy: refused, and the busy connections stay.
        assert_eq!(
            reg.admit(ip("10.0.0.8"), at(8), 3, 100).unwrap_err(),
            Refused::AllBusy
        );
        assert!(!reg.lock().conns[&oldest_busy.id].evicted);
        drop(busy);
        // Its request ended at `at(8)`-ish (now): idle again, so evictable.
        assert!(reg.admit(ip("10.0.0.8"), Instant::now(), 3, 100).is_ok());
    }

    #[test]
    fn a_lowered_cap_evicts_down_to_it() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let slots: Vec<Slot> = (0..5)
            .map(|i| {
                reg.admit(ip("10.0.0.1"), t + Duration::from_secs(i), 10, 10)
                    .unwrap()
            })
            .collect();
        let _new = reg.admit(ip("10.0.0.2"), t, 3, 10).unwrap();
        assert_eq!(reg.live(), 3);
        let evicted: Vec<bool> = slots
            .iter()
            .map(|s| reg.lock().conns[&s.id].evicted)
            .collect();
        assert_eq!(evicted, vec![true, true, true, false, false]);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let mapped = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001));
        assert_eq!(client_address(mapped), ip("10.0.0.1"));
        assert_eq!(client_address(ip("::1")), ip("::1"));
        let a = reg.admit(mapped, t, 10, 1).unwrap();
        let _busy = a.begin_request();
        assert_eq!(reg.from_address(ip("10.0.0.1")), 1);
        assert_eq!(
            reg.admit(ip("10.0.0.1"), t, 10, 1).unwrap_err(),
            Refused::PerAddress
        );
    }

    fn feed_all(f: &mut Framing, parts: &[&[u8]]) -> Vec<bool> {
        parts
            .iter()
            .map(|p| {
                f.feed(p);
                f.owes_body()
            })
            .collect()
    }

    #[test]
    fn h1_framing_follows_length_and_chunked_bodies() {
        let mut f = Framing::default();
        let owed = feed_all(
            &mut f,
            &[
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /v1/x HTTP/1.1\r\nContent-Length: 10\r\n",
                b"\r\n01234",
                b"56789",
                // Head and whole body in one read.
                b"POST /v1/x HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
                b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
                b"cd\r\n",
                b"0\r\n",
                b"\r\n",
            ],
        );
        assert_eq!(
            owed,
            vec![false, false, true, false, false, true, true, true, false]
        );
        // Byte by byte gives the same answer.
        let mut g = Framing::default();
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
        for b in req.iter() {
            g.feed(std::slice::from_ref(b));
        }
        assert!(matches!(g, Framing::H1(H1::Head(_))), "{g:?}");
        // Garbage: not followed, nothing owed.
        let mut h = Framing::default();
        h.feed(b"\x00\x01 nonsense\r\n\r\n");
        assert!(matches!(h, Framing::Off) && !h.owes_body());
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend([kind, flags]);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    }

    #[test]
    fn h2_framing_follows_end_stream() {
        let mut f = Framing::default();
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        f.feed(&bytes[..10]);
        assert!(matches!(f, Framing::SniffBuf(_)));
        f.feed(&bytes[10..]);
        assert!(matches!(f, Framing::H2(_)) && !f.owes_body());
        f.feed(&frame(0x1, 0x5, 1, b"hdrs")); // GET: END_STREAM | END_HEADERS
        assert!(!f.owes_body());
        let post = frame(0x1, 0x4, 3, b"hdrs"); // POST: END_HEADERS only
        f.feed(&post[..5]);
        assert!(!f.owes_body());
        f.feed(&post[5..]);
        assert!(f.owes_body());
        f.feed(&frame(0x0, 0, 3, b"part"));
        assert!(f.owes_body());
        f.feed(&frame(0x6, 0, 0, &[0; 8])); // PING
        f.feed(&frame(0x0, 0x1, 3, b"end"));
        assert!(!f.owes_body());
        f.feed(&frame(0x1, 0x4, 5, b"hdrs"));
        f.feed(&frame(0x3, 0, 5, &[0; 4])); // RST_STREAM
        assert!(!f.owes_body());
        f.feed(&frame(0x1, 0x4, 7, b"hdrs"));
        f.settle();
        assert!(!f.owes_body());
    }

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
