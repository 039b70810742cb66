//! Server-sent events: `data: <json>\n\n` frames, the closing `data: [DONE]`, and a response
//! body fed from a tokio channel (dropped by hyper when the client disconnects, which the
//! sender observes as a closed channel).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;

/// One event. `serde_json` escapes newlines inside strings, so the payload is one line and
/// needs no `data:` continuation lines.
pub fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The terminator OpenAI clients wait for.
pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// An error after the response has started (the status is already 200): the error object
/// as one event, as OpenAI does.
pub fn error_chunk(e: &ApiError) -> Value {
    e.body()
}

/// A streaming response body and the sender that feeds it.
/// The `text/event-stream` response around a [`channel`] body.
pub fn response(body: ChannelBody) -> hyper::Response<super::Body> {
    use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
    let mut r = hyper::Response::new(http_body_util::combinators::BoxBody::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx })
}

pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn framing() {
        let v = serde_json::json!({"text": "a\nb\r\n\ndata: x"});
        let b = data(&v);
        let s = std::str::from_utf8(&b).unwrap();
        assert!(s.starts_with("data: {"));
        assert!(s.ends_with("}\n\n"));
        // Exactly one line before the blank line that ends the event.
        assert_eq!(s.matches('\n').count(), 2, "{s:?}");
        let back: Value = serde_json::from_str(&s[6..s.len() - 2]).unwrap();
        assert_eq!(back, v);
        assert_eq!(&done()[..], b"data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn body_yields_what_is_sent_and_ends_when_the_sender_drops() {
        let (tx, body) = channel(4);
        tx.send(Bytes::from_static(b"one")).await.unwrap();
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        drop(tx);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"onetwo");
    }

    #[tokio::test]
    async fn dropping_the_body_closes_the_sender() {
        let (tx, body) = channel(1);
        drop(body);
        assert!(tx.is_closed());
        assert!(tx.send(Bytes::new()).await.is_err());
    }
}
