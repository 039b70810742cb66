//! A tiny HTTP/1.1 server on 127.0.0.1 for the remote tests: a transport test double that
//! answers each request with canned bytes, written in the steps the test chose (so events
//! arrive split where the test wants, or stall), then closes the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// Request line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl Request {
    /// The request target (`/v1/models`).
    pub fn target(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    /// A header's value (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the server does, in order.
pub enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// Say nothing more, and wait until the client closes the connection.
    Hang,
}

/// A complete answer with `Content-Length`.
pub fn answer(status: &str, content_type: &str, body: &str) -> Vec<Step> {
    vec![Step::Write(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )]
}

pub fn json(status: &str, body: &str) -> Vec<Step> {
    answer(status, "application/json", body)
}

/// The head of an event stream whose body ends when the connection closes.
pub fn sse_head() -> Step {
    Step::Write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n"
            .to_vec(),
    )
}

/// An event stream answer: the head, then `body` in pieces of `piece` bytes (a pause after
/// each, so they arrive apart).
pub fn sse(body: &str, piece: usize) -> Vec<Step> {
    let mut steps = vec![sse_head()];
    for p in body.as_bytes().chunks(piece) {
        steps.push(Step::Write(p.to_vec()));
        steps.push(Step::Sleep(Duration::from_millis(2)));
    }
    steps
}

type Handler = dyn Fn(&Request) -> Vec<Step> + Send + Sync;

/// A running server; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Connections the client closed while the server was hanging on them.
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The base URL an upstream is configured with: `http://ADDR/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Wait (up to 5 s) until the client has closed `n` hanging connections.
    pub async fn wait_closed(&self, n: usize) -> bool {
        for _ in 0..500 {
            if self.closed.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve plain HTTP on 127.0.0.1 at an ephemeral port.
pub async fn serve(handler: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static) -> Server {
    serve_with(None, handler).await
}

/// Serve, over TLS when `tls` is given.
pub async fn serve_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicUsize::new(0));
    let handler: Arc<Handler> = Arc::new(handler);
    let (log, closes) = (requests.clone(), closed.clone());
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            let (handler, log, closes, tls) =
                (handler.clone(), log.clone(), closes.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            one(s, &*handler, &log, &closes).await;
                        }
                    }
                    None => one(sock, &*handler, &log, &closes).await,
                }
            });
        }
    });
    Server {
        addr,
        requests,
        closed,
        task,
    }
}

/// One connection: one request, its steps, close.
async fn one<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    handler: &Handler,
    log: &Mutex<Vec<Request>>,
    closed: &AtomicUsize,
) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut req = Request {
        head,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end..].to_vec();
    while body.len() < len {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    req.body = body;
    log.lock().unwrap().push(req.clone());
    for step in handler(&req) {
        match step {
            Step::Write(bytes) => {
                if sock.write_all(&bytes).await.is_err() || sock.flush().await.is_err() {
                    return;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Hang => {
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
    let _ = sock.shutdown().await;
}
