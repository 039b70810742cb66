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
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::gate::{self, Admission, Call, Cost};
use super::openai::{self, Chunks, Delta, Kind, Parsed};
use super::tools::{Out, ToolStream};
use super::upstream::Forward;
use super::{json_response, rag, sse, unix_now, App, Body, Served};
use crate::engine::grammar::Grammar;
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
    // The route takes any key, since an agent-only key chats with its agents; a key that may
    // do neither is refused before its body is read.
    let agents = key
        .scopes
        .iter()
        .any(|s| matches!(s, Scope::Agent(_) | Scope::Admin));
    if !agents {
        gate::require(&key, &Scope::Chat)?;
    }
    if let Some(name) = agent_of(&c.body) {
        if kind == Kind::Chat {
            return super::agent::chat(c, &name).await;
        }
        return Err(ApiError::invalid_param(
            "model",
            "agents answer chat completions (/v1/chat/completions), not text completions",
        ));
    }
    gate::require(&key, &Scope::Chat)?;
    let mut parsed = openai::parse(kind, &c.body)?;
    c.note(|e| {
        e.model = Some(parsed.model.clone());
        e.collections = parsed
            .knowledge
            .as_ref()
            .map(|k| k.collections.clone())
            .unwrap_or_default();
        if parsed.web.is_some() {
            e.tools = vec!["web_search".into()];
        }
    });
    c.note_content();
    // An unknown name is refused before anything else (a 404 says nothing about collections);
    // whether the model is loaded is asked after admission.
    let canonical = app.models.canonical(&parsed.model);
    let remotes = app.remotes();
    let remote = remotes.get(&canonical);
    if remote.is_none() && !app.models.names().contains(&canonical) {
        return Err(ApiError::model_not_found(&parsed.model));
    }
    // Scopes of the knowledge collections first: a key must not learn anything about a
    // collection it may not read, not even whether the model is loaded.
    if let Some(k) = &parsed.knowledge {
        for col in &k.collections {
            gate::require(&key, &Scope::KbRead(col.clone()))?;
        }
    }
    let web = match &parsed.web {
        Some(_) => {
            gate::require(&key, &Scope::Web)?;
            Some(app.web().search.ok_or_else(|| {
                ApiError::invalid_param(
                    "web_search",
                    "web_search is not configured on this server ([web_search] searxng_url)",
                )
            })?)
        }
        None => None,
    };
    let collections: Vec<String> = parsed
        .knowledge
        .as_ref()
        .map(|k| k.collections.clone())
        .unwrap_or_default();
    if let (Some(up), Some(why)) = (&remote, remotes.must_stay(&key, &collections)) {
        return Err(ApiError::forbidden_because(
            "local_only",
            format!("`{}` is a remote model, and {why}", up.name()),
        ));
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
    if let Some(up) = remote {
        let citations = grounding(&app, web.as_ref(), &mut parsed).await?;
        return Forward::from_call(&mut c, up, kind, parsed, citations, None)?
            .answer()
            .await;
    }
    let served = app.models.resolve(&parsed.model)?;
    // Answers name the model that wrote them, also when asked for `default`.
    parsed.model = served.name.clone();
    c.note(|e| e.model = Some(served.name.clone()));
    // Sources go into the messages before the model's own preparation (which rewrites earlier
    // tool calls for its template), so an overflowed request leaves with the client's
    // messages plus the sources.
    let citations = grounding(&app, web.as_ref(), &mut parsed).await?;
    let overflow = remotes.overflow_for(&served.name, &key, &collections);
    let forwardable = overflow.as_ref().map(|_| parsed.clone());
    prepare(&served, &mut parsed).await?;
    let rid = c.rid.clone();
    tracing::debug!(request_id = %rid, key_id = %key.id, n = parsed.n, stream = parsed.stream, "inference");

    let queued = served.scheduler.stats().queued;
    let slots = served.scheduler.config().max_batch;
    let early = overflow.is_some() && remotes.wait_too_long(&served.name, queued, slots);
    let submitted = if early {
        Err(ApiError::queue_full(
            "estimated wait exceeds overflow max_wait_s",
        ))
    } else {
        submit(&served, &parsed).await
    };
    let handles = match (submitted, overflow, forwardable) {
        (Err(e), Some(up), Some(plain)) if e.code == Some("queue_full") => {
            tracing::info!(request_id = %rid, model = %served.name, remote = %up.name(), "local model busy; request overflows");
            return Forward::from_call(
                &mut c,
                up,
                kind,
                plain,
                citations,
                Some(served.name.clone()),
            )?
            .answer()
            .await;
        }
        (r, _, _) => r?,
    };

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
        audit: c.audit.clone(),
    };
    if ctx.parsed.stream {
        Ok(stream_response(ctx, rx))
    } else {
        whole_response(ctx, rx).await
    }
}

/// The agent a request body names (`"model": "agent:NAME"`), read before the body is
/// parsed as a chat request, since an agent request is parsed its own way.
fn agent_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    let m: Model = serde_json::from_slice(body).ok()?;
    m.model?
        .strip_prefix(crate::agents::MODEL_PREFIX)
        .map(str::to_string)
}

/// Make a parsed request ready for this model: whether the model can take its tools and how
/// its calls read, then the grammar its answer must follow.
pub(super) async fn prepare(served: &Arc<Served>, parsed: &mut Parsed) -> Result<(), ApiError> {
    parsed.tool_parsing =
        super::tools::resolve(parsed.tools.as_ref(), served.scheduler.template())?;
    if served.scheduler.template().tool_format()
        == Some(crate::engine::toolcall::ToolFormat::Hermes)
    {
        if let crate::engine::Prompt::Messages(m) = &mut parsed.request.prompt {
            arguments_as_objects(m);
        }
    }
    constrain(served, parsed).await
}

/// Earlier calls' `arguments` (a JSON string on the wire) as the JSON objects Hermes-style
/// (Qwen) templates print: shown a string, the model goes on to write its own calls with
/// string arguments. Arguments that are not a JSON object stay as they are.
fn arguments_as_objects(messages: &mut [crate::engine::template::ChatMessage]) {
    for m in messages.iter_mut().filter(|m| m.role == "assistant") {
        let Some(Value::Array(calls)) = m.extra.get_mut("tool_calls") else {
            continue;
        };
        for c in calls {
            let f = &mut c["function"]["arguments"];
            if let Some(v) = f
                .as_str()
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                .filter(Value::is_object)
            {
                *f = v;
            }
        }
    }
}

/// Submit the `n` choices of `parsed` to the engine. Submitting renders the chat template and
/// tokenizes: CPU work, off the reactor. If one of n choices is refused, the handles already
/// made are dropped (cancelled).
pub(super) async fn submit(
    served: &Arc<Served>,
    parsed: &Parsed,
) -> Result<Vec<RequestHandle>, ApiError> {
    let sched = served.scheduler.clone();
    let p = parsed.clone();
    tokio::task::spawn_blocking(move || {
        (0..p.n)
            .map(|i| sched.submit(p.request_for(i)))
            .collect::<Result<Vec<RequestHandle>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("submit task failed: {e}")))?
    .map_err(ApiError::from)
}

/// Compile the grammar the answer must follow (`response_format`, or forced tool calls) for
/// this model: a grammar the engine cannot enforce is a 400 naming its parameter.
async fn constrain(served: &Arc<Served>, parsed: &mut Parsed) -> Result<(), ApiError> {
    let calls = match (&parsed.tools, &parsed.tool_parsing) {
        (Some(t), Some(p)) => super::tools::call_constraint(t, p.format)?,
        _ => None,
    };
    let trigger = calls.as_ref().and_then(|(_, t)| *t);
    let (grammar, param) = match (parsed.response_format.clone(), calls) {
        (None, None) => return Ok(()),
        // Optional calls: the answer is free text or calls, and the JSON format would
        // contradict both.
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param(
                "response_format",
                "response_format cannot be combined with constrained tool calls (tool_choice \
                 \"required\", a named function, or strict tools)",
            ))
        }
        (Some(g), None) => (g, "response_format"),
        (None, Some((lark, _))) => (Grammar::Lark(lark), "tool_choice"),
    };
    let s = served.clone();
    let compiled = tokio::task::spawn_blocking(move || s.scheduler.grammars().compile(&grammar))
        .await
        .map_err(|e| ApiError::internal(format!("grammar task failed: {e}")))?;
    let c = compiled.map_err(|e| {
        ApiError::invalid_param(param, format!("{param} cannot be enforced: {}", e.0))
    })?;
    parsed.request.constraint = Some(match trigger {
        Some(t) => c.dormant_until(t),
        None => c,
    });
    Ok(())
}

/// The sources of a grounded chat (`knowledge`, `web_search`) put into its messages, and the
/// `citations`; nothing when the request asks for neither.
async fn grounding(
    app: &Arc<App>,
    web: Option<&crate::web::WebSearch>,
    parsed: &mut Parsed,
) -> Result<Option<Value>, ApiError> {
    if parsed.knowledge.is_some() || web.is_some() {
        Ok(Some(retrieve(app, web, parsed).await?))
    } else {
        Ok(None)
    }
}

/// Retrieve for a grounded chat: search the knowledge collections and/or the web for the
/// last user message, put the sources into that message as numbered sources, and return the
/// `citations`.
async fn retrieve(
    app: &Arc<App>,
    web: Option<&crate::web::WebSearch>,
    parsed: &mut Parsed,
) -> Result<Value, ApiError> {
    let param = if parsed.knowledge.is_some() {
        "knowledge"
    } else {
        "web_search"
    };
    let crate::engine::Prompt::Messages(messages) = &mut parsed.request.prompt else {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} is only supported on chat completions"),
        ));
    };
    let query = rag::query_of(messages)
        .ok_or_else(|| {
            ApiError::invalid_param(param, format!("{param} needs a user message to search for"))
        })?
        .to_string();
    let hits = match parsed.knowledge.clone() {
        Some(k) => {
            let kb = app.kb()?;
            let req = crate::kb::base::SearchRequest {
                collections: k.collections,
                query: query.clone(),
                top_k: k.top_k,
                mode: crate::kb::base::SearchMode::Hybrid,
            };
            tokio::task::spawn_blocking(move || kb.base().search(&req))
                .await
                .map_err(|e| ApiError::internal(format!("search task failed: {e}")))??
        }
        None => Vec::new(),
    };
    let results = match (web, &parsed.web) {
        (Some(ws), Some(p)) => {
            let top_n = p.top_n.unwrap_or(ws.config().top_n);
            let fetch = p.fetch.unwrap_or(ws.config().fetch).min(top_n);
            ws.search(&query, top_n, fetch)
                .await
                .map_err(|e| ApiError::unavailable(format!("web search failed: {e}")))?
        }
        _ => Vec::new(),
    };
    rag::augment(messages, &hits, &results);
    Ok(rag::citations_json(&hits, &results))
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
    /// The call's audit record, given the tokens once they are known.
    audit: Arc<std::sync::Mutex<crate::audit::Event>>,
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
        // Every choice prefilled the prompt: n × prompt + completions.
        settle(
            &self.app,
            &self.key,
            self.admitted_tokens,
            &self.audit,
            (self.prompt_tokens * outs.len().max(1)) as u64,
            completion as u64,
        );
        super::upstream::observe(&self.app, &self.parsed.model, self.started);
    }
}

/// Settle a finished call's tokens: the metrics, its audit record, and the key's budget,
/// less what admission already charged (`admitted`).
pub(super) fn settle(
    app: &App,
    key: &KeyInfo,
    admitted: u64,
    audit: &std::sync::Mutex<crate::audit::Event>,
    tokens_in: u64,
    tokens_out: u64,
) {
    let m = &app.metrics;
    m.prompt_tokens.fetch_add(tokens_in, Ordering::Relaxed);
    m.completion_tokens.fetch_add(tokens_out, Ordering::Relaxed);
    {
        let mut e = crate::util::lock(audit);
        e.tokens_in = Some(tokens_in);
        e.tokens_out = Some(tokens_out);
    }
    app.keys
        .charge_tokens(key, (tokens_in + tokens_out).saturating_sub(admitted));
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
    sse::response(body)
}

/// Per-choice state of a stream.
#[derive(Default)]
struct ChoiceState {
    logprobs: Vec<TokenLogprob>,
    text_len: usize,
    done: Option<GenerateOutput>,
    /// Reads tool calls out of the answer (chat with tools and `tool_choice: auto`).
    tools: Option<ToolStream>,
}

impl ChoiceState {
    fn new(parsed: &Parsed) -> Self {
        ChoiceState {
            tools: parsed.tool_parsing.as_ref().map(ToolStream::new),
            ..ChoiceState::default()
        }
    }

    /// The chunks for a piece of reasoning or answer text of choice `i`. Answer text goes
    /// through the tool-call reader when there is one, which may hold it back (a call being
    /// written) and returns it as content or `tool_calls` deltas. Logprobs go with the next
    /// chunk sent.
    fn text_chunks(&mut self, chunks: &Chunks<'_>, i: usize, ev: &Event) -> Vec<Value> {
        let (content, reasoning) = match ev {
            Event::Content(t) => (Some(t.as_str()), None),
            Event::Reasoning(t) => (None, Some(t.as_str())),
            _ => return Vec::new(),
        };
        let offset = self.text_len;
        self.text_len += content.map_or(0, str::len) + reasoning.map_or(0, str::len);
        match (&mut self.tools, content) {
            (Some(ts), Some(text)) => {
                let outs = ts.push(text);
                self.out_chunks(chunks, i, outs)
            }
            _ => {
                let lps = std::mem::take(&mut self.logprobs);
                let d = Delta {
                    content,
                    reasoning,
                    logprobs: &lps,
                    ..Delta::default()
                };
                vec![chunks.delta(i, d, offset)]
            }
        }
    }

    fn out_chunks(&mut self, chunks: &Chunks<'_>, i: usize, outs: Vec<Out>) -> Vec<Value> {
        let mut v = Vec::with_capacity(outs.len());
        for o in outs {
            let lps = std::mem::take(&mut self.logprobs);
            let d = match o {
                Out::Content(t) => chunks.delta(
                    i,
                    Delta {
                        content: Some(&t),
                        logprobs: &lps,
                        ..Delta::default()
                    },
                    self.text_len,
                ),
                Out::Call(c) => chunks.delta(
                    i,
                    Delta {
                        logprobs: &lps,
                        tool_call: Some(c),
                        ..Delta::default()
                    },
                    self.text_len,
                ),
            };
            v.push(d);
        }
        v
    }

    /// The last chunks of choice `i`: what the tool-call reader still held, then the
    /// `finish_reason`.
    fn done_chunks(&mut self, chunks: &Chunks<'_>, i: usize, o: GenerateOutput) -> Vec<Value> {
        let mut v = match self.tools.as_mut().map(ToolStream::finish) {
            Some(outs) => self.out_chunks(chunks, i, outs),
            None => Vec::new(),
        };
        let lps = std::mem::take(&mut self.logprobs);
        let d = Delta {
            // Chat's final delta is empty; completions carry an empty text.
            content: None,
            logprobs: &lps,
            finish: Some(o.finish_reason),
            made_tool_calls: self.tools.as_ref().is_some_and(|t| t.calls() > 0),
            ..Delta::default()
        };
        v.push(chunks.delta(i, d, self.text_len));
        self.done = Some(o);
        v
    }
}

/// Turn engine events into SSE chunks until every choice is done or the client is gone.
async fn pump(ctx: Ctx, mut rx: mpsc::Receiver<(usize, Event)>, out: mpsc::Sender<Bytes>) {
    let chunks = Chunks {
        parsed: &ctx.parsed,
        id: &ctx.id,
        created: ctx.created,
    };
    let n = ctx.parsed.n;
    let mut state: Vec<ChoiceState> = (0..n).map(|_| ChoiceState::new(&ctx.parsed)).collect();
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
            let mut v = chunks.delta(i, first, 0);
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
                let vs = st.text_chunks(&chunks, i, &ev);
                ctx.observe_text(&mut last, i);
                for v in vs {
                    send!(v);
                }
            }
            Event::Done(o) => {
                for v in st.done_chunks(&chunks, i, o) {
                    send!(v);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::toolcall::ToolFormat;
    use crate::engine::FinishReason;

    /// A chat request with two tools, parsed as the handler parses it, and the tool reading
    /// `resolve` would pick for a model with a Hermes (Qwen2.5) or DeepSeek template.
    fn parsed(format: ToolFormat, extra: &str) -> Parsed {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":true,
            "tools":[{{"type":"function","function":{{"name":"get_weather"}}}},
                     {{"type":"function","function":{{"name":"get_time"}}}}]{extra}}}"#
        );
        let mut p = openai::parse(Kind::Chat, body.as_bytes()).unwrap();
        let t = p.tools.as_ref().unwrap();
        p.tool_parsing = Some(super::super::tools::ToolParsing {
            format,
            names: t.names.clone(),
            parallel: t.parallel,
        });
        p
    }

    fn output(text: &str, reasoning: Option<&str>) -> GenerateOutput {
        GenerateOutput {
            token_ids: vec![1],
            text: text.into(),
            reasoning: reasoning.map(str::to_string),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 3,
            completion_tokens: 1,
            reasoning_tokens: 0,
            logprobs: None,
            mask: None,
        }
    }

    /// The stream of one choice for these engine events, through the handler's chunk code.
    fn stream(p: &Parsed, events: Vec<Event>, done: GenerateOutput) -> Vec<Value> {
        let chunks = Chunks {
            parsed: p,
            id: "chatcmpl-x",
            created: 1,
        };
        let mut st = ChoiceState::new(p);
        let mut out = Vec::new();
        for ev in events {
            out.extend(st.text_chunks(&chunks, 0, &ev));
        }
        out.extend(st.done_chunks(&chunks, 0, done));
        out
    }

    /// Reassemble a stream as the official SDKs do: content and reasoning concatenated,
    /// tool calls merged by `index` (id, type and name from the first delta, arguments
    /// appended).
    fn reassemble(chunks: &[Value]) -> Value {
        let (mut content, mut reasoning) = (String::new(), String::new());
        let mut calls: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        for c in chunks {
            let choice = &c["choices"][0];
            let d = &choice["delta"];
            content.push_str(d["content"].as_str().unwrap_or(""));
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    assert!(
                        tc["id"].is_string() && tc["function"]["name"].is_string(),
                        "{tc}"
                    );
                    calls.push(serde_json::json!({
                        "id": tc["id"], "type": tc["type"],
                        "function": {"name": tc["function"]["name"], "arguments": ""}
                    }));
                }
                let args = tc["function"]["arguments"].as_str().unwrap_or("");
                let a = calls[i]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string()
                    + args;
                calls[i]["function"]["arguments"] = Value::String(a);
            }
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
        }
        serde_json::json!({"content": content, "reasoning": reasoning, "calls": calls, "finish": finish})
    }

    /// The same answer as a whole response: the fields `reassemble` gives, ids left out.
    fn whole(p: &Parsed, o: GenerateOutput) -> Value {
        let v = openai::response(p, "chatcmpl-x", 1, &[o]);
        let m = &v["choices"][0]["message"];
        let calls: Vec<Value> = m["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| serde_json::json!({"type": c["type"], "function": c["function"]}))
            .collect();
        serde_json::json!({
            "content": m["content"].as_str().unwrap_or(""),
            "reasoning": m["reasoning_content"].as_str().unwrap_or(""),
            "calls": calls,
            "finish": v["choices"][0]["finish_reason"],
        })
    }

    fn without_ids(mut v: Value) -> Value {
        for c in v["calls"].as_array_mut().unwrap() {
            let id = c.as_object_mut().unwrap().remove("id").unwrap();
            assert!(id.as_str().unwrap().starts_with("call_"), "{id}");
        }
        v
    }

    fn pieces(text: &str, n: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }

    #[test]
    fn streamed_tool_calls_reassemble_to_the_whole_response() {
        let r1 = "Let me look. <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>";
        for (format, text, reasoning) in [
            (ToolFormat::DeepSeek, r1, Some("The user wants weather.")),
            (ToolFormat::Hermes, hermes, None),
        ] {
            let p = parsed(format, "");
            for n in [1, 3, 17] {
                let mut events: Vec<Event> = reasoning
                    .map(|r| pieces(r, n).into_iter().map(Event::Reasoning).collect())
                    .unwrap_or_default();
                events.extend(pieces(text, n).into_iter().map(Event::Content));
                let chunks = stream(&p, events, output(text, reasoning));
                let got = without_ids(reassemble(&chunks));
                let want = whole(&p, output(text, reasoning));
                assert_eq!(got, want, "{format:?} {n}");
                assert_eq!(want["finish"], "tool_calls");
                assert_eq!(want["reasoning"], reasoning.unwrap_or(""));
                assert!(!want["calls"].as_array().unwrap().is_empty());
            }
        }
        // The content before the calls, in the whole response.
        let p = parsed(ToolFormat::DeepSeek, "");
        let v = openai::response(&p, "x", 1, &[output(r1, None)]);
        assert_eq!(v["choices"][0]["message"]["content"], "Let me look.");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\": \"北京\"}"
        );
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][1]["type"],
            "function"
        );
    }

    #[test]
    fn answers_without_calls_and_malformed_calls_are_content() {
        let p = parsed(ToolFormat::Hermes, "");
        for text in [
            "It is sunny.",
            "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\"",
        ] {
            let chunks = stream(
                &p,
                pieces(text, 2).into_iter().map(Event::Content).collect(),
                output(text, None),
            );
            let got = reassemble(&chunks);
            assert_eq!(got["content"], text);
            assert_eq!(got["finish"], "stop");
            assert!(got["calls"].as_array().unwrap().is_empty());
            assert_eq!(whole(&p, output(text, None))["content"], text);
        }
        // Without tool reading (tool_choice none) the same call text is content too.
        let mut none = parsed(ToolFormat::Hermes, r#","tool_choice":"none""#);
        none.tool_parsing = None;
        let text = "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";
        let got = reassemble(&stream(
            &none,
            vec![Event::Content(text.into())],
            output(text, None),
        ));
        assert_eq!(
            (got["content"].as_str(), got["finish"].as_str()),
            (Some(text), Some("stop"))
        );
    }

    #[test]
    fn hermes_templates_see_earlier_arguments_as_objects() {
        let mut m: Vec<crate::engine::template::ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"北京\"}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}},
                {"id": "c", "type": "function", "function": {"name": "h", "arguments": "[1]"}}]}
        ]))
        .unwrap();
        arguments_as_objects(&mut m);
        let calls = &m[1].extra["tool_calls"];
        assert_eq!(
            calls[0]["function"]["arguments"],
            serde_json::json!({"city": "北京"})
        );
        assert_eq!(calls[1]["function"]["arguments"], "not json");
        assert_eq!(calls[2]["function"]["arguments"], "[1]");
    }

    #[test]
    fn one_call_when_parallel_calls_are_off() {
        let p = parsed(ToolFormat::Hermes, r#","parallel_tool_calls":false"#);
        let text = "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
        let got = reassemble(&stream(
            &p,
            vec![Event::Content(text.into())],
            output(text, None),
        ));
        assert_eq!(got["calls"].as_array().unwrap().len(), 1);
        assert_eq!(got["calls"][0]["function"]["name"], "get_time");
        assert_eq!(
            whole(&p, output(text, None))["calls"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
