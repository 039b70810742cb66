//! Server-sent events from an upstream: the framing ([`SseDecoder`], pure, over arbitrary
//! chunk boundaries) and the stream of parsed `data:` payloads ([`Stream`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::health::{Failure, HealthState};
use super::{RemoteError, Scrub};

/// The largest event (or line) buffered: a guard against an upstream that sends an endless
/// line, far above any real chunk.
const MAX_EVENT: usize = 16 << 20;

/// SSE framing: bytes in, the `data` of each complete event out. Lines end at `\n` or
/// `\r\n`; an event ends at a blank line; the `data:` lines of one event join with `\n`;
/// comments (`:` lines) and other fields are ignored. Bytes are buffered until their line is
/// complete, so a UTF-8 character split across chunks is decoded whole.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    /// Bytes of the line not yet complete.
    line: Vec<u8>,
    /// The `data` of the event being read.
    data: String,
    has_data: bool,
    /// Lines seen (a BOM may open the first one).
    lines: u64,
}

impl SseDecoder {
    /// Decode `bytes`, appending each complete event's data (or a framing error) to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<String, RemoteError>>) {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.handle_line(&line, out);
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_EVENT {
            self.line.clear();
            out.push_back(Err(RemoteError::Garbage(format!(
                "an event line is longer than {} MiB",
                MAX_EVENT >> 20
            ))));
        }
    }

    /// The stream ended: a last line without its newline, and an event without its blank
    /// line, are taken as complete (a server that closes right after `data: [DONE]` is not
    /// cut short).
    pub(crate) fn finish(&mut self, out: &mut VecDeque<Result<String, RemoteError>>) {
        if !self.line.is_empty() {
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.handle_line(&line, out);
        }
        self.handle_line(b"", out);
    }

    fn handle_line(&mut self, line: &[u8], out: &mut VecDeque<Result<String, RemoteError>>) {
        self.lines += 1;
        let line = if self.lines == 1 {
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            if self.has_data {
                self.has_data = false;
                out.push_back(Ok(std::mem::take(&mut self.data)));
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field != b"data" {
            return;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            out.push_back(Err(RemoteError::Garbage(
                "an event is not valid UTF-8".into(),
            )));
            return;
        };
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(value);
        self.has_data = true;
        if self.data.len() > MAX_EVENT {
            self.data.clear();
            self.has_data = false;
            out.push_back(Err(RemoteError::Garbage(format!(
                "an event is longer than {} MiB",
                MAX_EVENT >> 20
            ))));
        }
    }
}

/// The error an upstream reports inside a 200 answer or a stream: a top-level `error` object
/// (`{"error": {"message", "code"}}`, vLLM's mid-stream form) or string, or older vLLM's
/// `{"object": "error", "message", "code"}`. The status is the error's `code` when it is an
/// HTTP status (400..=599), else 502.
pub(crate) fn error_event(v: &Value, scrub: &Scrub) -> Option<RemoteError> {
    let err = match v.get("error") {
        Some(Value::Null) | None if v.get("object").and_then(Value::as_str) == Some("error") => v,
        Some(Value::Null) | None => return None,
        Some(e) => e,
    };
    let message = match err {
        Value::String(s) => s.clone(),
        _ => err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_string),
    };
    let status = err
        .get("code")
        .and_then(Value::as_u64)
        .filter(|c| (400..=599).contains(c))
        .map_or(502, |c| c as u16);
    Some(RemoteError::Status {
        status,
        message: scrub.text(&message),
    })
}

/// A streaming answer: each `data:` payload as JSON. It holds its place under
/// `max_concurrency` until dropped; dropping it closes the connection, which is how the
/// upstream learns to stop generating.
pub struct Stream {
    /// `None` once the stream has ended (the connection is then closed). Boxed, so that a
    /// [`super::Reply`] holding a stream is not several times the size of one holding JSON.
    resp: Option<Box<reqwest::Response>>,
    decoder: SseDecoder,
    pending: VecDeque<Result<String, RemoteError>>,
    /// The body ended (EOF); what is pending is all there is.
    eof: bool,
    /// `[DONE]` seen, or an error returned: `None` ever after.
    finished: bool,
    idle: Duration,
    health: Arc<HealthState>,
    scrub: Scrub,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("pending", &self.pending.len())
            .field("eof", &self.eof)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(crate) fn new(
        resp: reqwest::Response,
        permit: OwnedSemaphorePermit,
        idle: Duration,
        health: Arc<HealthState>,
        scrub: Scrub,
    ) -> Stream {
        Stream {
            resp: Some(Box::new(resp)),
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            eof: false,
            finished: false,
            idle,
            health,
            scrub,
            _permit: permit,
        }
    }

    /// The next `data:` payload as JSON; `None` after `data: [DONE]`. Every error ends the
    /// stream (`None` after it): EOF before `[DONE]` is `Truncated`, a payload that is not
    /// JSON is `Garbage`, an error event (`{"error": …}`) is `Status`, a gap longer than
    /// `idle_timeout_s` is `Timeout("idle")`. A stall or a cut counts towards marking the
    /// upstream down.
    pub async fn next(&mut self) -> Option<Result<Value, RemoteError>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(item) = self.pending.pop_front() {
                match item {
                    Err(e) => return Some(Err(self.end(Some(e)))),
                    Ok(data) => match self.interpret(&data) {
                        Some(Ok(v)) => return Some(Ok(v)),
                        Some(Err(e)) => return Some(Err(self.end(Some(e)))),
                        None if data.trim() == "[DONE]" => {
                            self.end(None);
                            return None;
                        }
                        None => continue,
                    },
                }
            }
            if self.eof {
                self.health
                    .fail(Failure::Soft, "a stream ended before [DONE]", false);
                return Some(Err(self.end(Some(RemoteError::Truncated))));
            }
            let resp = self.resp.as_mut()?;
            match tokio::time::timeout(self.idle, resp.chunk()).await {
                Err(_) => {
                    self.health.fail(Failure::Soft, "a stream stalled", false);
                    return Some(Err(self.end(Some(RemoteError::Timeout("idle")))));
                }
                Ok(Err(_)) => {
                    self.health.fail(Failure::Soft, "a stream broke off", false);
                    return Some(Err(self.end(Some(RemoteError::Truncated))));
                }
                Ok(Ok(Some(bytes))) => self.decoder.feed(&bytes, &mut self.pending),
                Ok(Ok(None)) => {
                    self.decoder.finish(&mut self.pending);
                    self.eof = true;
                    self.resp = None;
                }
            }
        }
    }

    /// One event's data: `None` for `[DONE]` and for an empty keep-alive event.
    fn interpret(&self, data: &str) -> Option<Result<Value, RemoteError>> {
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            return None;
        }
        Some(match serde_json::from_str::<Value>(data) {
            Err(e) => Err(RemoteError::Garbage(format!("an event is not JSON ({e})"))),
            Ok(v) => match error_event(&v, &self.scrub) {
                Some(e) => Err(e),
                None => Ok(v),
            },
        })
    }

    /// End the stream (closing the connection) and pass `e` through.
    fn end(&mut self, e: Option<RemoteError>) -> RemoteError {
        self.finished = true;
        self.pending.clear();
        self.resp = None;
        e.unwrap_or(RemoteError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(pieces: &[&[u8]]) -> Vec<Result<String, String>> {
        let mut d = SseDecoder::default();
        let mut out = VecDeque::new();
        for p in pieces {
            d.feed(p, &mut out);
        }
        d.finish(&mut out);
        out.into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    /// CRLF and LF framing, a multi-line event, comments, other fields, a BOM, 中文.
    const STREAM: &str = "\u{feff}: keep-alive\r\n\r\nevent: message\r\nid: 1\r\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"你好，世界\"}}]}\r\n\r\n\
        retry: 10\n\
        data: {\"a\":\n\
        data:1}\n\n\
        data:{\"c\":\"中文 ✓\"}\n\
        : comment\n\n\
        data: [DONE]\r\n\r\n";

    fn expected() -> Vec<Result<String, String>> {
        vec![
            Ok("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"你好，世界\"}}]}".into()),
            Ok("{\"a\":\n1}".into()),
            Ok("{\"c\":\"中文 ✓\"}".into()),
            Ok("[DONE]".into()),
        ]
    }

    #[test]
    fn framing_is_the_same_at_every_split_point() {
        let bytes = STREAM.as_bytes();
        assert_eq!(decode_in(&[bytes]), expected());
        for i in 0..=bytes.len() {
            assert_eq!(
                decode_in(&[&bytes[..i], &bytes[i..]]),
                expected(),
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_in(&singles), expected());
    }

    #[test]
    fn the_last_event_may_lack_its_blank_line() {
        assert_eq!(
            decode_in(&[b"data: 1\n\ndata: [DONE]"]),
            vec![Ok("1".to_string()), Ok("[DONE]".to_string())]
        );
        assert_eq!(decode_in(&[b"data: 1\r\n"]), vec![Ok("1".to_string())]);
    }

    #[test]
    fn invalid_utf8_and_endless_lines_are_garbage() {
        let out = decode_in(&[b"data: \xff\xfe\n\n"]);
        assert!(
            matches!(&out[..], [Err(e)] if e.contains("UTF-8")),
            "{out:?}"
        );
        let mut d = SseDecoder::default();
        let mut out = VecDeque::new();
        let big = vec![b'x'; MAX_EVENT / 4 + 1];
        for _ in 0..4 {
            d.feed(&big, &mut out);
        }
        assert!(matches!(
            out.pop_front(),
            Some(Err(RemoteError::Garbage(_)))
        ));
    }

    #[test]
    fn error_events() {
        let url = reqwest::Url::parse("http://gpu7.lan:8000/v1").unwrap();
        let scrub = Scrub::new(&url, Some("tok-9"));
        let v: Value = serde_json::from_str(
            r#"{"error":{"message":"gpu7.lan:8000 out of memory (tok-9)","code":503}}"#,
        )
        .unwrap();
        match error_event(&v, &scrub) {
            Some(RemoteError::Status {
                status: 503,
                message,
            }) => {
                assert_eq!(message, "<upstream> out of memory (<upstream>)");
            }
            other => panic!("{other:?}"),
        }
        let code = |s: &str| match error_event(&serde_json::from_str(s).unwrap(), &scrub) {
            Some(RemoteError::Status { status, .. }) => Some(status),
            _ => None,
        };
        assert_eq!(
            code(r#"{"error":{"message":"x","code":"invalid"}}"#),
            Some(502)
        );
        assert_eq!(code(r#"{"error":{"message":"x","code":200}}"#), Some(502));
        assert_eq!(code(r#"{"error":"overloaded"}"#), Some(502));
        assert_eq!(
            code(r#"{"object":"error","message":"bad","code":400}"#),
            Some(400)
        );
        assert_eq!(code(r#"{"error":null,"choices":[]}"#), None);
        assert_eq!(code(r#"{"choices":[]}"#), None);
    }
}
