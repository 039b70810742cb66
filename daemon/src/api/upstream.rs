//! Remote models: chat, completions and embeddings answered by the company's own
//! OpenAI-compatible inference servers (`[remote.NAME]`), and overflow from a busy local model
//! to one of them (`[[overflow]]`), within the data-residency rules (`[residency]`).
//!
//! What makes the appliance worth having stays here: the gate (keys, scopes, rate limits,
//! quotas), retrieval (`knowledge`, `web_search` put their sources into the messages before
//! they leave), the agent loop (each model turn is one forwarded request), audit and metrics.
//! The upstream sees one request per model call, with its own model name and our bearer
//! token; the client sees the answer under the remote model's edgeseek name and id, chunk by
//! chunk as the upstream sends them.
//!
//! Cancellation: the upstream's response body is read by the task that writes the client's
//! stream; when the client goes, that task ends and drops the body, which closes the
//! upstream connection (vLLM, llama.cpp and edgeseek all abort generation then).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::gate::{Admission, Call};
use super::openai::{Kind, Parsed};
use super::{json_response, sse, App, Body};
use crate::config::{OverflowRule, ResidencyConfig};
use crate::keys::KeyInfo;
use crate::remote::{RemoteError, Reply, Upstream, Usage};

/// Request fields only edgeseek understands: handled here, never forwarded.
const EXTENSIONS: [&str; 3] = ["knowledge", "web_search", "max_reasoning_tokens"];

/// Weight of the newest local request in the recent request time (an exponential average).
const RECENT_WEIGHT: f64 = 0.2;

/// The remote models of the configuration and the overflow rules. Built once at start (a
/// change needs a restart, like any model setting).
#[derive(Default)]
pub struct Remotes {
    ups: BTreeMap<String, Arc<Upstream>>,
    overflow: BTreeMap<String, Overflow>,
    residency: ResidencyConfig,
}

/// One `[[overflow]]` rule and what its wait estimate needs.
struct Overflow {
    to: String,
    max_wait: Option<Duration>,
    /// Recent duration of the local model's requests, milliseconds (0: none seen yet).
    recent_ms: AtomicU64,
}

impl Remotes {
    pub fn new(
        ups: BTreeMap<String, Arc<Upstream>>,
        rules: &[OverflowRule],
        residency: ResidencyConfig,
    ) -> Remotes {
        let overflow = rules
            .iter()
            .map(|r| {
                (
                    r.model.clone(),
                    Overflow {
                        to: r.to.clone(),
                        max_wait: (r.max_wait_s > 0.0)
                            .then(|| Duration::from_secs_f64(r.max_wait_s)),
                        recent_ms: AtomicU64::new(0),
                    },
                )
            })
            .collect();
        Remotes {
            ups,
            overflow,
            residency,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.ups.get(name).cloned()
    }

    /// Every remote model, by name.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Arc<Upstream>)> {
        self.ups.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.ups.is_empty()
    }

    /// Why a request of `key` that uses `collections` must stay on this appliance, if it must.
    pub fn must_stay(&self, key: &KeyInfo, collections: &[String]) -> Option<String> {
        if let Some(g) = key
            .group
            .as_ref()
            .filter(|g| self.residency.local_groups.contains(g))
        {
            return Some(format!(
                "requests of the usage group `{g}` stay on this appliance ([residency] local_groups)"
            ));
        }
        collections
            .iter()
            .find(|c| self.residency.local_collections.contains(c))
            .map(|c| {
                format!(
                    "the collection `{c}` stays on this appliance ([residency] local_collections)"
                )
            })
    }

    /// The remote model a request for the local model `local` may overflow to now: a rule
    /// names one, it is up, and residency lets this request leave.
    pub fn overflow_for(
        &self,
        local: &str,
        key: &KeyInfo,
        collections: &[String],
    ) -> Option<Arc<Upstream>> {
        let rule = self.overflow.get(local)?;
        let up = self.ups.get(&rule.to)?;
        if !up.health().up || self.must_stay(key, collections).is_some() {
            return None;
        }
        Some(up.clone())
    }

    /// Whether the wait in the local model's queue is estimated to exceed the rule's bound:
    /// the queued requests ahead, spread over the batch slots, each taking the model's recent
    /// request time. Without a bound (or before any request finished) only a full queue
    /// overflows.
    pub fn wait_too_long(&self, local: &str, queued: usize, slots: usize) -> bool {
        let Some(rule) = self.overflow.get(local) else {
            return false;
        };
        let (Some(bound), recent) = (rule.max_wait, rule.recent_ms.load(Ordering::Relaxed)) else {
            return false;
        };
        if recent == 0 || queued == 0 {
            return false;
        }
        let rounds = queued.div_ceil(slots.max(1)) as u64;
        Duration::from_millis(rounds.saturating_mul(recent)) > bound
    }

    /// Note how long a request of the local model `local` took (the wait estimate's basis).
    pub fn observe_local(&self, local: &str, took: Duration) {
        let Some(rule) = self.overflow.get(local) else {
            return;
        };
        let ms = took.as_millis().min(u128::from(u32::MAX)) as f64;
        let old = rule.recent_ms.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 {
            ms
        } else {
            old + RECENT_WEIGHT * (ms - old)
        };
        rule.recent_ms.store(new.max(1.0) as u64, Ordering::Relaxed);
    }

    /// Each remote model for admins (`edgeseek status`, `/v1/admin/status`).
    pub fn status(&self) -> Vec<super::wire::admin::RemoteStatus> {
        self.ups
            .iter()
            .map(|(n, u)| {
                let h = u.health();
                super::wire::admin::RemoteStatus {
                    id: n.clone(),
                    upstream_model: u.upstream_model().to_string(),
                    up: h.up,
                    since: h.since,
                    checked: h.checked,
                    error: h.error,
                    in_flight: u.in_flight(),
                    overflow_from: self
                        .overflow
                        .iter()
                        .filter(|(_, r)| &r.to == n)
                        .map(|(m, _)| m.clone())
                        .collect(),
                }
            })
            .collect()
    }

    /// `up` / `down` of each remote model (`/readyz`).
    pub fn states(&self) -> BTreeMap<String, String> {
        self.ups
            .iter()
            .map(|(n, u)| (n.clone(), if u.health().up { "up" } else { "down" }.into()))
            .collect()
    }
}

/// The API error for a failed upstream call, logged with the upstream's name and cause (its
/// Display names the host, never the credentials); the client's message names only the model.
pub fn error(app: &App, up: &Upstream, e: &RemoteError) -> ApiError {
    app.metrics.remote_error(up.name());
    tracing::warn!(remote = %up.name(), error = %e, "remote model call failed");
    ApiError::upstream(e.http_status(), e.client_message(up.name()))
}

/// The upstream's path for a kind of request.
fn path(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => "chat/completions",
        Kind::Completion => "completions",
    }
}

/// The body the upstream gets: the client's, with the upstream's model name, without
/// edgeseek's extensions, with the last user message as retrieval left it in `grounded` (the
/// question with its numbered sources), and (streaming) always asking for usage, which quotas
/// and audit need whether or not the client wants it.
pub fn upstream_body(
    client: &Map<String, Value>,
    up: &Upstream,
    grounded: Option<&Parsed>,
) -> Map<String, Value> {
    let mut b = client.clone();
    for k in EXTENSIONS {
        b.remove(k);
    }
    b.insert("model".into(), up.upstream_model().into());
    let question = match grounded.map(|p| &p.request.prompt) {
        Some(crate::engine::Prompt::Messages(m)) => m
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| m.content.clone()),
        _ => None,
    };
    if let (Some(q), Some(Value::Array(msgs))) = (question, b.get_mut("messages")) {
        if let Some(last) = msgs.iter_mut().rev().find(|m| m["role"] == "user") {
            last["content"] = q.into();
        }
    }
    if b.get("stream").and_then(Value::as_bool) == Some(true) {
        b.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    b
}

/// A request answered by a remote model, from the gate to the last byte.
pub struct Forward {
    pub app: Arc<App>,
    pub up: Arc<Upstream>,
    pub kind: Kind,
    /// The client's body, checked.
    pub body: Map<String, Value>,
    /// The parsed request, as retrieval left its messages.
    pub parsed: Parsed,
    pub citations: Option<Value>,
    pub key: KeyInfo,
    /// The local model the request overflowed from.
    pub overflow: Option<String>,
    pub id: String,
    pub admitted_tokens: u64,
    /// The key's in-flight share, held until the answer is complete.
    pub _admission: Option<Admission>,
    pub audit: Arc<std::sync::Mutex<crate::audit::Event>>,
}

impl Forward {
    /// The parts of a call that follow its answer.
    pub fn from_call(
        c: &mut Call,
        up: Arc<Upstream>,
        kind: Kind,
        parsed: Parsed,
        citations: Option<Value>,
        overflow: Option<String>,
    ) -> Result<Forward, ApiError> {
        let body = match super::wire::object(&c.body)? {
            Value::Object(o) => o,
            _ => {
                return Err(ApiError::bad_request(
                    "the request body must be a JSON object",
                ))
            }
        };
        let id = match kind {
            Kind::Chat => format!("chatcmpl-{}", c.rid),
            Kind::Completion => format!("cmpl-{}", c.rid),
        };
        let name = up.name().to_string();
        c.note(|e| {
            e.model = Some(name.clone());
            e.remote = Some(name.clone());
            e.overflow = overflow.is_some().then_some(true);
        });
        Ok(Forward {
            app: c.app.clone(),
            up,
            kind,
            body,
            parsed,
            citations,
            key: c.key()?.clone(),
            overflow,
            id,
            admitted_tokens: c.admitted_tokens(),
            _admission: c.take_admission(),
            audit: c.audit.clone(),
        })
    }

    /// Send the request upstream and answer the client.
    pub async fn answer(self) -> Result<Response<Body>, ApiError> {
        let grounded = self.citations.as_ref().map(|_| &self.parsed);
        let body = Value::Object(upstream_body(&self.body, &self.up, grounded));
        self.app.metrics.remote_request(self.up.name());
        if let Some(local) = &self.overflow {
            self.app.metrics.overflowed(local, self.up.name());
        }
        let reply = self
            .up
            .post(path(self.kind), &body)
            .await
            .map_err(|e| error(&self.app, &self.up, &e))?;
        match reply {
            Reply::Json(v) => self.whole(v),
            Reply::Stream(s) => {
                let (tx, rx) = sse::channel(32);
                tokio::spawn(self.pump(s, tx));
                Ok(sse::response(rx))
            }
        }
    }

    /// The answer as our own: our id, the remote model's edgeseek name, the citations.
    fn rewrite(&self, v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), self.id.clone().into());
            o.insert("model".into(), self.up.name().into());
        }
    }

    fn whole(self, mut v: Value) -> Result<Response<Body>, ApiError> {
        if !v.is_object() || !v["choices"].is_array() {
            let e = RemoteError::Garbage("the answer has no choices".into());
            return Err(error(&self.app, &self.up, &e));
        }
        self.rewrite(&mut v);
        let usage = match crate::remote::usage_of(&v) {
            Some(u) => u,
            None => {
                let u = self.counted(&answer_text(&v));
                v["usage"] = usage_json(&u);
                u
            }
        };
        if let Some(c) = &self.citations {
            v["citations"] = c.clone();
        }
        self.settle(&usage);
        Ok(json_response(StatusCode::OK, &v))
    }

    /// Chunks from the upstream to the client, rewritten, until the upstream's `[DONE]`, an
    /// error (sent as an error event, then `[DONE]`), or the client leaving.
    async fn pump(self, mut s: crate::remote::Stream, out: mpsc::Sender<Bytes>) {
        let wants_usage = self
            .body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let mut usage: Option<Usage> = None;
        let mut text = String::new();
        let mut first = true;
        let gone = |app: &App| {
            app.metrics
                .client_disconnects
                .fetch_add(1, Ordering::Relaxed);
        };
        loop {
            let next = tokio::select! {
                n = s.next() => n,
                _ = out.closed() => {
                    gone(&self.app);
                    tracing::info!(id = %self.id, remote = %self.up.name(), "client disconnected; remote request cancelled");
                    break;
                }
            };
            let mut chunk = match next {
                None => {
                    if wants_usage {
                        let u = usage.clone().unwrap_or_else(|| self.counted(&text));
                        let mut v = serde_json::json!({
                            "id": self.id, "object": object_of(self.kind), "created": super::unix_now(),
                            "model": self.up.name(), "choices": [], "usage": usage_json(&u)});
                        self.rewrite(&mut v);
                        let _ = out.send(sse::data(&v)).await;
                    }
                    let _ = out.send(sse::done()).await;
                    break;
                }
                Some(Err(e)) => {
                    let _ = out
                        .send(sse::data(&sse::error_chunk(&error(
                            &self.app, &self.up, &e,
                        ))))
                        .await;
                    let _ = out.send(sse::done()).await;
                    break;
                }
                Some(Ok(v)) => v,
            };
            if let Some(u) = crate::remote::usage_of(&chunk) {
                usage = Some(u);
            }
            text.push_str(&answer_text(&chunk));
            let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
            if let Some(o) = chunk.as_object_mut() {
                // The usage event is sent once, at the end, where the client asked for it.
                o.remove("usage");
            }
            if usage_only {
                continue;
            }
            self.rewrite(&mut chunk);
            if first {
                first = false;
                if let (Some(c), Some(o)) = (&self.citations, chunk.as_object_mut()) {
                    o.insert("citations".into(), c.clone());
                }
            }
            if out.send(sse::data(&chunk)).await.is_err() {
                gone(&self.app);
                break;
            }
        }
        let u = usage.unwrap_or_else(|| self.counted(&text));
        self.settle(&u);
    }

    /// Usage counted here when the upstream reports none: with the remote's tokenizer when
    /// one is configured, else estimated from the text's length.
    fn counted(&self, answer: &str) -> Usage {
        let prompt = prompt_text(&self.parsed);
        let count = |t: &str| {
            self.up
                .count_tokens(t)
                .map_or_else(|| super::gate::estimate_tokens(t.len()), |n| n as u64)
        };
        Usage {
            prompt_tokens: count(&prompt),
            completion_tokens: count(answer),
            reasoning_tokens: 0,
        }
    }

    fn settle(&self, u: &Usage) {
        super::chat::settle(
            &self.app,
            &self.key,
            self.admitted_tokens,
            &self.audit,
            u.prompt_tokens,
            u.completion_tokens,
        );
    }
}

fn object_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    }
}

fn usage_json(u: &Usage) -> Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// The generated text of a response or chunk: every choice's content, reasoning, text and
/// call arguments (what usage counts when the upstream reports none).
fn answer_text(v: &Value) -> String {
    let mut s = String::new();
    for c in v["choices"].as_array().into_iter().flatten() {
        for part in [&c["message"], &c["delta"]] {
            for f in ["content", "reasoning_content", "reasoning"] {
                s.push_str(part[f].as_str().unwrap_or_default());
            }
            for call in part["tool_calls"].as_array().into_iter().flatten() {
                s.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        s.push_str(c["text"].as_str().unwrap_or_default());
    }
    s
}

/// The prompt's text (what usage counts when the upstream reports none).
fn prompt_text(p: &Parsed) -> String {
    match &p.request.prompt {
        crate::engine::Prompt::Messages(m) => m
            .iter()
            .filter_map(|m| m.content.as_deref())
            .collect::<Vec<_>>()
            .join("\n"),
        crate::engine::Prompt::Text(t) => t.clone(),
        crate::engine::Prompt::Ids(_) => String::new(),
    }
}

/// One agent turn on a remote model: the turn's body (as the agent loop built it) forwarded
/// as a stream; the caller reads the chunks.
pub async fn turn(
    app: &App,
    up: &Upstream,
    body: &Map<String, Value>,
) -> Result<crate::remote::Stream, ApiError> {
    let mut b = body.clone();
    b.insert("stream".into(), true.into());
    let b = Value::Object(upstream_body(&b, up, None));
    app.metrics.remote_request(up.name());
    match up.post(path(Kind::Chat), &b).await {
        Ok(Reply::Stream(s)) => Ok(s),
        Ok(Reply::Json(_)) => Err(error(
            app,
            up,
            &RemoteError::Garbage("a streamed request got a whole answer".into()),
        )),
        Err(e) => Err(error(app, up, &e)),
    }
}

/// `/v1/embeddings` for a remote model: the client's body with the upstream's model name,
/// the answer under the remote model's name, its usage settled.
pub async fn embed(c: &mut Call, up: Arc<Upstream>) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let key = c.key()?.clone();
    if let Some(why) = app.remotes().must_stay(&key, &[]) {
        return Err(ApiError::forbidden_because(
            "local_only",
            format!("`{}` is a remote model, and {why}", up.name()),
        ));
    }
    let mut body = match super::wire::object(&c.body)? {
        Value::Object(o) => o,
        _ => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ))
        }
    };
    body.insert("model".into(), up.upstream_model().into());
    body.remove("stream");
    let name = up.name().to_string();
    c.note(|e| {
        e.model = Some(name.clone());
        e.remote = Some(name.clone());
    });
    app.metrics.remote_request(up.name());
    let mut v = match up.post("embeddings", &Value::Object(body)).await {
        Ok(Reply::Json(v)) if v["data"].is_array() => v,
        Ok(_) => {
            let e = RemoteError::Garbage("the answer has no embeddings".into());
            return Err(error(&app, &up, &e));
        }
        Err(e) => return Err(error(&app, &up, &e)),
    };
    v["model"] = up.name().into();
    let tokens = v["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap_or_else(|| super::gate::estimate_tokens(c.body.len()));
    super::chat::settle(&app, &key, c.admitted_tokens(), &c.audit, tokens, 0);
    Ok(json_response(StatusCode::OK, &v))
}

/// How long a local request took, for the overflow estimate; call when it ends.
pub fn observe(app: &App, local: &str, started: Instant) {
    app.remotes().observe_local(local, started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: Option<&str>) -> KeyInfo {
        KeyInfo {
            id: "k".into(),
            name: "k".into(),
            scopes: vec![],
            rpm: None,
            tpm: None,
            group: group.map(str::to_string),
            quota: Default::default(),
        }
    }

    fn remotes(max_wait_s: f64) -> Remotes {
        Remotes::new(
            BTreeMap::new(),
            &[OverflowRule {
                model: "local".into(),
                to: "hq".into(),
                max_wait_s,
            }],
            ResidencyConfig {
                local_groups: vec!["legal".into()],
                local_collections: vec!["hr".into()],
            },
        )
    }

    #[test]
    fn residency_keeps_groups_and_collections_local() {
        let r = remotes(0.0);
        assert!(r.must_stay(&key(None), &[]).is_none());
        assert!(r.must_stay(&key(Some("sales")), &["docs".into()]).is_none());
        let why = r.must_stay(&key(Some("legal")), &[]).unwrap();
        assert!(why.contains("legal"), "{why}");
        let why = r
            .must_stay(&key(None), &["docs".into(), "hr".into()])
            .unwrap();
        assert!(why.contains("`hr`"), "{why}");
        // Without an upstream the rule has nowhere to go.
        assert!(r.overflow_for("local", &key(None), &[]).is_none());
    }

    #[test]
    fn the_wait_estimate_follows_recent_requests() {
        let r = remotes(2.0);
        // Nothing seen yet: only a full queue overflows.
        assert!(!r.wait_too_long("local", 100, 1));
        r.observe_local("local", Duration::from_millis(1000));
        assert!(!r.wait_too_long("local", 2, 1), "2 s is not more than 2 s");
        assert!(r.wait_too_long("local", 3, 1));
        assert!(
            !r.wait_too_long("local", 3, 4),
            "three fit in one round of four slots"
        );
        assert!(!r.wait_too_long("local", 0, 1));
        // The average moves toward new observations.
        for _ in 0..20 {
            r.observe_local("local", Duration::from_millis(100));
        }
        assert!(!r.wait_too_long("local", 10, 1));
        assert!(!r.wait_too_long("other", 1000, 1));
        // No bound: never by estimate.
        let r = remotes(0.0);
        r.observe_local("local", Duration::from_secs(60));
        assert!(!r.wait_too_long("local", 1000, 1));
    }

    #[test]
    fn usage_is_counted_from_every_kind_of_text() {
        let v = serde_json::json!({"choices": [
            {"delta": {"content": "ab", "reasoning_content": "cd",
                       "tool_calls": [{"function": {"arguments": "{}"}}]}},
            {"message": {"content": "ef"}},
            {"text": "gh"}]});
        assert_eq!(answer_text(&v), "abcd{}efgh");
        assert_eq!(answer_text(&serde_json::json!({"choices": []})), "");
    }
}
