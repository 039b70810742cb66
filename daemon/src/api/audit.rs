//! What happens once a call's response has been sent — when the body ends, or when the
//! client goes away and hyper drops it: its audit record is written and its key's usage
//! counted. So a streamed answer is recorded with its whole duration and the tokens its
//! handler counted while streaming.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::Response;

use super::App;
use super::Body;
use crate::audit::{AuditLog, Event};
use crate::usage::{Counts, UsageStore};
use crate::util::lock;

/// `resp` with a body that writes the record when it is done. `base` holds what the entry
/// point knows (route, status, source); `shared` what the gate and the handler added.
pub(super) fn finish_when_sent(
    resp: Response<Body>,
    app: &App,
    base: Event,
    started: Instant,
    shared: Arc<Mutex<Event>>,
) -> Response<Body> {
    let (log, usage) = (app.audit.get().cloned(), app.usage.get().cloned());
    resp.map(|inner| {
        Recorded {
            inner,
            done: Some(Pending {
                log,
                usage,
                base,
                started,
                shared,
            }),
        }
        .boxed()
    })
}

struct Pending {
    log: Option<Arc<AuditLog>>,
    usage: Option<Arc<UsageStore>>,
    base: Event,
    started: Instant,
    shared: Arc<Mutex<Event>>,
}

impl Pending {
    fn write(self) {
        let mut ev = std::mem::take(&mut *lock(&self.shared));
        let b = self.base;
        ev.kind = b.kind;
        ev.request_id = b.request_id;
        ev.source = b.source;
        ev.method = b.method;
        ev.route = b.route;
        ev.status = b.status;
        if b.error.is_some() {
            ev.error = b.error;
        }
        ev.ms = Some(self.started.elapsed().as_millis() as u64);
        if let (Some(u), Some(key)) = (&self.usage, &ev.key_id) {
            let c = Counts {
                requests: 1,
                tokens_in: ev.tokens_in.unwrap_or(0),
                tokens_out: ev.tokens_out.unwrap_or(0),
            };
            u.record(key, ev.group.as_deref(), c, crate::util::unix_now());
        }
        let Some(log) = self.log else { return };
        if !log.include_content() {
            ev.content = None;
        }
        if let Err(e) = log.append(ev) {
            tracing::error!(error = %e, "audit record not written");
        }
    }
}

struct Recorded {
    inner: Body,
    done: Option<Pending>,
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            if let Some(p) = self.done.take() {
                p.write();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(p) = self.done.take() {
            p.write();
        }
    }
}
