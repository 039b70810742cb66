//! A tiny HTTP/1.1 server on a loopback address for the web tests: each connection gets
//! one canned answer chosen by the request target, then the connection is closed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with a request.
pub enum Reply {
    /// These bytes, as the whole answer.
    Raw(Vec<u8>),
    /// Nothing: the connection stays open and silent until the client gives up.
    Hang,
}

/// A complete answer with a body and `Content-Length`.
pub fn answer(status: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Reply::Raw(out)
}

/// A redirect to `location`.
pub fn redirect(status: &str, location: &str) -> Reply {
    Reply::Raw(
        format!(
            "HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

type Handler = dyn Fn(&str) -> Reply + Send + Sync;

/// A running server; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// The request targets (`/path?query`) received, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve on `ip` (a loopback address) at an ephemeral port; `handler` maps the request
/// target to the answer.
pub async fn serve(ip: &str, handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(target.clone());
                match handler(&target) {
                    Reply::Raw(bytes) => {
                        let _ = sock.write_all(&bytes).await;
                        let _ = sock.shutdown().await;
                    }
                    Reply::Hang => {
                        // Read until the client closes; answer nothing.
                        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                }
            });
        }
    });
    Server { addr, seen, task }
}
