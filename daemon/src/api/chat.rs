//! Chat and text completions: parse, admit, retrieve (knowledge), submit to the scheduler, and
//! answer as one JSON body or as server-sent events.
//!
//! Cancellation chain: the response side owns the receiving end of the channel the per-choice
//! forwarders send into. When a streaming client disconnects, hyper drops the body, the pump
//! notices and returns, dropping the receiver; each forwarder then drops its `RequestHandle`,
//! which makes the scheduler free the slot within one step. A non-streaming client that
//! disconnects drops the handler future, with the same effect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::gate::{self, Admission, Call, Cost};
use super::openai::{self, Chunks, Delta, Kind, Parsed};
use super::{json_response, rag, sse, unix_now, App, Body};
use crate::engine::{Event, GenerateOutput, RequestHandle, TokenLogprob};
use crate::keys::{KeyInfo, Scope};

/// `POST /v1/chat/completions`.
pub async fn chat(c: Call) -> Result<Response<Body>, ApiError> {
    inference(c, Kind::Chat).await
}

/// `POST /v1/completions`.
pub async fn completion(c: Call) -> Result<Response<Body>, ApiError> {
    inference(c, Kind::Completion).await
}

async fn inference(mut c: Call, kind: Kind) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let key = c.key()?.clone();
    let mut parsed = openai::parse(kind, &c.body)?;
    if parsed.model != app.model_name {
        return Err(ApiError::model_not_found(&parsed.model));
    }
    // Scopes of the knowledge collections first: a key must not learn anything about a
    // collection it may not read, not even whether the model is loaded.
    if let Some(k) = &parsed.knowledge {
        for col in &k.collections {
            gate::require(&key, &Scope::KbRead(col.clone()))?;
        }
    }
    // Admission before any work (retrieval, templating, the engine): `n` choices are `n`
    // requests and `n` sequences in flight, and the prompt counts against the token budget
    // (estimated from the body; the exact count is settled after generation).
    let n = u32::try_from(parsed.n).unwrap_or(u32::MAX);
    c.admit(Cost {
        requests: n,
        tokens: gate::estimate_tokens(c.body.len()).saturating_mul(u64::from(n)),
        inflight: parsed.n,
    })?;
    let served = app.ready()?;
    let citations = match parsed.knowledge.clone() {
        Some(k) => Some(retrieve(&app, k, &mut parsed).await?),
        None => None,
    };
    let rid = c.rid.clone();
    tracing::debug!(request_id = %rid, key_id = %key.id, n = parsed.n, stream = parsed.stream, "inference");

    let sched = served.scheduler.clone();
    let p = parsed.clone();
    // Submitting renders the chat template and tokenizes: CPU work, off the reactor. If one
    // of n choices is refused, the handles already made are dropped (cancelled).
    let handles = tokio::task::spawn_blocking(move || {
        (0..p.n)
            .map(|i| sched.submit(p.request_for(i)))
            .collect::<Result<Vec<RequestHandle>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("submit task failed: {e}")))??;

    let prompt_tokens = handles.first().map_or(0, RequestHandle::prompt_tokens);
    let (tx, rx) = mpsc::channel(64);
    for (i, h) in handles.into_iter().enumerate() {
        tokio::spawn(forward(h, i, tx.clone()));
    }
    drop(tx);
    let ctx = Ctx {
        app: app.clone(),
        admitted_tokens: c.admitted_tokens(),
        _admission: c.take_admission(),
        key,
        parsed,
        id: format!(
            "{}-{rid}",
            match kind {
                Kind::Chat => "chatcmpl",
                Kind::Completion => "cmpl",
            }
        ),
        created: unix_now(),
        started: Instant::now(),
        prompt_tokens,
        citations,
    };
    if ctx.parsed.stream {
        Ok(stream_response(ctx, rx))
    } else {
        whole_response(ctx, rx).await
    }
}

/// Retrieve for a knowledge-grounded chat: search the collections for the last user message,
/// put the hits into that message as numbered sources, and return the `citations`.
async fn retrieve(
    app: &Arc<App>,
    k: rag::Knowledge,
    parsed: &mut Parsed,
) -> Result<Value, ApiError> {
    let kb = app.kb()?;
    let crate::engine::Prompt::Messages(messages) = &mut parsed.request.prompt else {
        return Err(ApiError::invalid_param(
            "knowledge",
            "knowledge is only supported on chat completions",
        ));
    };
    let query = rag::query_of(messages)
        .ok_or_else(|| {
            ApiError::invalid_param("knowledge", "knowledge needs a user message to search for")
        })?
        .to_string();
    let req = crate::kb::base::SearchRequest {
        collections: k.collections,
        query,
        top_k: k.top_k,
        mode: crate::kb::base::SearchMode::Hybrid,
    };
    let hits = tokio::task::spawn_blocking(move || kb.base().search(&req))
        .await
        .map_err(|e| ApiError::internal(format!("search task failed: {e}")))??;
    rag::augment(messages, &hits);
    Ok(rag::citations_json(&hits))
}

/// Move one choice's events from the engine into the response's channel. It ends at the last
/// event, or as soon as the response side is gone (client disconnected): dropping the handle
/// then cancels the request in the engine, which frees the slot within one step.
async fn forward(mut handle: RequestHandle, index: usize, tx: mpsc::Sender<(usize, Event)>) {
    loop {
        let ev = tokio::select! {
            ev = handle.next() => ev,
            // A queued request produces no events: notice a gone client anyway.
            _ = tx.closed() => return,
        };
        let Some(ev) = ev else {
            let _ = tx
                .send((
                    index,
                    Event::Error("the engine stopped before the request finished".into()),
                ))
                .await;
            return;
        };
        let last = matches!(ev, Event::Done(_) | Event::Error(_));
        if tx.send((index, ev)).await.is_err() || last {
            return;
        }
    }
}

/// One inference response in flight.
struct Ctx {
    app: Arc<App>,
    /// The key's in-flight share, held until the response is complete.
    _admission: Option<Admission>,
    /// Tokens charged at admission (the estimate); `account` charges the rest.
    admitted_tokens: u64,
    key: KeyInfo,
    parsed: Parsed,
    id: String,
    created: u64,
    started: Instant,
    prompt_tokens: usize,
    /// `citations` of a knowledge-grounded chat answer (see `rag`).
    citations: Option<Value>,
}

impl Ctx {
    /// Time-to-first-token and inter-token latency from text events of choice `i`.
    fn observe_text(&self, last: &mut [Option<Instant>], i: usize) {
        let now = Instant::now();
        let m = &self.app.metrics;
        if let Some(slot) = last.get_mut(i) {
            match slot {
                None => m.ttft.observe(now - self.started),
                Some(prev) => m.itl.observe(now - *prev),
            }
            *slot = Some(now);
        }
    }

    fn account(&self, outs: &[&GenerateOutput]) {
        let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
        let m = &self.app.metrics;
        m.prompt_tokens
            .fetch_add(self.prompt_tokens as u64, Ordering::Relaxed);
        m.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
        // Every choice prefilled the prompt: n × prompt + completions, less what admission
        // already charged.
        let used = (self.prompt_tokens * outs.len().max(1) + completion) as u64;
        self.app
            .keys
            .charge_tokens(&self.key, used.saturating_sub(self.admitted_tokens));
    }
}

async fn whole_response(
    ctx: Ctx,
    mut rx: mpsc::Receiver<(usize, Event)>,
) -> Result<Response<Body>, ApiError> {
    let n = ctx.parsed.n;
    let mut outs: Vec<Option<GenerateOutput>> = vec![None; n];
    let mut last = vec![None; n];
    while outs.iter().any(Option::is_none) {
        let Some((i, ev)) = rx.recv().await else {
            return Err(ApiError::internal(
                "the engine stopped before the request finished",
            ));
        };
        match ev {
            Event::Reasoning(_) | Event::Content(_) => ctx.observe_text(&mut last, i),
            Event::Logprob(_) => {}
            Event::Done(out) => {
                if let Some(slot) = outs.get_mut(i) {
                    *slot = Some(out);
                }
            }
            Event::Error(msg) => return Err(ApiError::internal(msg)),
        }
    }
    let outs: Vec<GenerateOutput> = outs.into_iter().flatten().collect();
    ctx.account(&outs.iter().collect::<Vec<_>>());
    let mut v = openai::response(&ctx.parsed, &ctx.id, ctx.created, &outs);
    if let (Some(c), Some(o)) = (&ctx.citations, v.as_object_mut()) {
        o.insert("citations".into(), c.clone());
    }
    Ok(json_response(StatusCode::OK, &v))
}

fn stream_response(ctx: Ctx, rx: mpsc::Receiver<(usize, Event)>) -> Response<Body> {
    let (body_tx, body) = sse::channel(32);
    tokio::spawn(pump(ctx, rx, body_tx));
    let mut r = Response::new(BoxBody::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Per-choice state of a stream.
#[derive(Default)]
struct ChoiceState {
    logprobs: Vec<TokenLogprob>,
    text_len: usize,
    done: Option<GenerateOutput>,
}

/// Turn engine events into SSE chunks until every choice is done or the client is gone.
async fn pump(ctx: Ctx, mut rx: mpsc::Receiver<(usize, Event)>, out: mpsc::Sender<Bytes>) {
    let chunks = Chunks {
        parsed: &ctx.parsed,
        id: &ctx.id,
        created: ctx.created,
    };
    let n = ctx.parsed.n;
    let mut state: Vec<ChoiceState> = (0..n).map(|_| ChoiceState::default()).collect();
    let mut last = vec![None; n];
    let gone = |ctx: &Ctx| {
        ctx.app
            .metrics
            .client_disconnects
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %ctx.id, "client disconnected; generation cancelled");
    };
    macro_rules! send {
        ($v:expr) => {
            if out.send(sse::data(&$v)).await.is_err() {
                gone(&ctx);
                return;
            }
        };
    }
    if ctx.parsed.kind == Kind::Chat {
        for i in 0..n {
            let first = Delta {
                role: true,
                content: Some(""),
                ..Delta::default()
            };
            let mut v = chunks.delta(i, &first, 0);
            // The sources come with the first chunk, so a client can show them while the
            // answer streams.
            if let (0, Some(c), Some(o)) = (i, &ctx.citations, v.as_object_mut()) {
                o.insert("citations".into(), c.clone());
            }
            send!(v);
        }
    }
    while state.iter().any(|s| s.done.is_none()) {
        let next = tokio::select! {
            ev = rx.recv() => ev,
            // Waiting in the queue produces no events: notice a disconnect anyway.
            _ = out.closed() => {
                gone(&ctx);
                return;
            }
        };
        let Some((i, ev)) = next else {
            send!(sse::error_chunk(&ApiError::internal(
                "the engine stopped before the request finished"
            )));
            let _ = out.send(sse::done()).await;
            return;
        };
        let Some(st) = state.get_mut(i) else { continue };
        match ev {
            Event::Logprob(l) => st.logprobs.push(l),
            Event::Reasoning(t) | Event::Content(t) if t.is_empty() => {}
            ev @ (Event::Reasoning(_) | Event::Content(_)) => {
                let (content, reasoning) = match &ev {
                    Event::Content(t) => (Some(t.as_str()), None),
                    Event::Reasoning(t) => (None, Some(t.as_str())),
                    _ => (None, None),
                };
                let lps = std::mem::take(&mut st.logprobs);
                let offset = st.text_len;
                st.text_len += content.map_or(0, str::len) + reasoning.map_or(0, str::len);
                let d = Delta {
                    content,
                    reasoning,
                    logprobs: &lps,
                    ..Delta::default()
                };
                let v = chunks.delta(i, &d, offset);
                ctx.observe_text(&mut last, i);
                send!(v);
            }
            Event::Done(o) => {
                let lps = std::mem::take(&mut st.logprobs);
                let d = Delta {
                    // Chat's final delta is empty; completions carry an empty text.
                    content: None,
                    logprobs: &lps,
                    finish: Some(o.finish_reason),
                    ..Delta::default()
                };
                let v = chunks.delta(i, &d, st.text_len);
                st.done = Some(o);
                send!(v);
            }
            Event::Error(msg) => {
                send!(sse::error_chunk(&ApiError::internal(msg)));
                let _ = out.send(sse::done()).await;
                return;
            }
        }
    }
    let outs: Vec<&GenerateOutput> = state.iter().filter_map(|s| s.done.as_ref()).collect();
    ctx.account(&outs);
    if ctx.parsed.include_usage {
        send!(chunks.usage(ctx.prompt_tokens, &outs));
    }
    let _ = out.send(sse::done()).await;
}
