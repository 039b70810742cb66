//! Request framing read off the plaintext stream (HTTP/1.1 `Content-Length` / chunked,
//! HTTP/2 `END_STREAM`): whether the client still owes request-body bytes.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::util::lock;

/// Plaintext bytes read on a connection and what its request framing says is still owed.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    framing: Mutex<Framing>,
}

impl Progress {
    pub(super) fn lock(&self) -> MutexGuard<'_, Framing> {
        lock(&self.framing)
    }

    fn read(&self, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.lock().feed(data);
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn owes_body(&self) -> bool {
        self.lock().owes_body()
    }
}

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP/1.1 head followed; hyper refuses longer ones anyway.
pub(super) const MAX_HEAD: usize = 256 * 1024;
/// Longest chunk-size line or trailer section followed.
pub(super) const MAX_LINE: usize = 16 * 1024;

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
pub(super) const H2_MAX_OPEN: usize = 1024;

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
    pub(super) fn settle(&mut self) {
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
pub(super) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
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
pub(super) fn body_framing(head: &[u8]) -> Option<H1> {
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
pub(super) struct Metered<S> {
    pub(super) inner: S,
    pub(super) progress: Arc<Progress>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
