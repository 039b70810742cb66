//! Agents on `/v1/chat/completions`: a request for model `agent:NAME` runs the agent's loop
//! inside the daemon (see [`run`]) and answers as a chat completion of that model.
//!
//! The answer is the text of every turn (`content`, `reasoning_content`), so a streamed and a
//! whole answer say the same. The trace is an extension the official SDKs ignore:
//! - streamed, each step is a chunk whose one choice has an empty delta, with the step in
//!   `agent_step` (once `running`, once finished: `ok`, `error`, `timeout` or `refused`); the
//!   last chunk carries `agent` (`name`, `tools` offered, `stopped`) and `citations`;
//! - whole, the response carries `agent` (with `steps`) and `citations`.
//!
//! Scope: the key needs `agent:NAME` (or `agent:*`); what the agent's tools may reach is cut
//! down to the key's scopes ([`tools::Kit::for_caller`]).

pub mod run;
pub mod tools;

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::gate::{self, Call, Cost};
use super::openai::{self, Chunks, Delta, Kind, Parsed};
use super::{json_response, sse, unix_now, App, Body};
use crate::agents::Agent;
use crate::engine::{FinishReason, GenerateOutput};
use crate::keys::{KeyInfo, Scope};
use run::{Ev, Outcome, Run};

/// `POST /v1/chat/completions` for `agent:NAME`.
pub async fn chat(mut c: Call, name: &str) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let key = c.key()?.clone();
    c.note(|e| e.model = Some(format!("{}{name}", crate::agents::MODEL_PREFIX)));
    c.note_content();
    gate::require(&key, &Scope::Agent(name.to_string()))?;
    let body = match super::wire::object(&c.body)? {
        Value::Object(o) => o,
        _ => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ))
        }
    };
    // The client's request, checked as a chat request; `tool_choice` (and
    // `parallel_tool_calls`) are for the agent's tools, which the client does not send.
    let mut checked = body.clone();
    checked.remove("tool_choice");
    checked.remove("parallel_tool_calls");
    let parsed = openai::parse(
        Kind::Chat,
        &serde_json::to_vec(&checked).unwrap_or_default(),
    )?;
    let agent = app
        .agents
        .get(name)
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?;
    refuse_unsupported(&parsed)?;
    c.admit(Cost {
        requests: 1,
        tokens: gate::estimate_tokens(c.body.len()),
        inflight: 1,
    })?;
    // The agent's model, or the default one; an agent whose model is not served now is a
    // 503 naming it (the caller did nothing wrong).
    let model = agent
        .model
        .clone()
        .unwrap_or_else(|| app.models.default_name());
    let remotes = app.remotes();
    let backend = match remotes.get(&model) {
        Some(up) => {
            if let Some(why) = remotes.must_stay(&key, &agent.collections) {
                return Err(ApiError::forbidden_because(
                    "local_only",
                    format!("agent `{name}` uses the remote model `{model}`, and {why}"),
                ));
            }
            c.note(|e| e.remote = Some(model.clone()));
            run::Backend::Remote(up)
        }
        None => run::Backend::Local(app.models.resolve(&model).map_err(|e| {
            if e.status == hyper::StatusCode::NOT_FOUND {
                ApiError::unavailable(format!(
                    "agent `{name}` uses model `{model}`, which this daemon does not serve now \
                     (serving: {})",
                    app.models.names().join(", ")
                ))
            } else {
                e
            }
        })?),
    };
    let kit = tools::Kit::for_caller(&app, &agent, &key).await;
    let offered = kit.ids();
    let run = Run::new(
        app.clone(),
        backend,
        agent.clone(),
        kit,
        body,
        app.agent_limits(),
    );
    // The first turn is prepared here, so what makes it impossible (a template without tool
    // support, a tool_choice naming a tool not offered) is an HTTP error, not a stream error.
    let first = run.next_turn().await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run.go(first, tx));
    tracing::debug!(request_id = %c.rid, key_id = %key.id, agent = %agent.name, tools = ?offered, "agent run");
    let ctx = Ctx {
        app,
        admitted_tokens: c.admitted_tokens(),
        _admission: c.take_admission(),
        key,
        agent,
        offered,
        id: format!("chatcmpl-{}", c.rid),
        created: unix_now(),
        parsed,
        audit: c.audit.clone(),
    };
    if ctx.parsed.stream {
        Ok(stream(ctx, rx))
    } else {
        whole(ctx, rx).await
    }
}

/// Request features an agent run does not take: the agent brings its own tools and
/// knowledge, and answers once.
fn refuse_unsupported(p: &Parsed) -> Result<(), ApiError> {
    let no = |param: &str, why: &str| Err(ApiError::invalid_param(param, why.to_string()));
    if p.tools.is_some() {
        return no("tools", "an agent brings its own tools; send no `tools`");
    }
    if p.knowledge.is_some() {
        return no(
            "knowledge",
            "an agent searches its own collections; send no `knowledge`",
        );
    }
    if p.n != 1 {
        return no("n", "an agent answers once: n must be 1");
    }
    if p.response_format.is_some() {
        return no(
            "response_format",
            "response_format is not supported with agents",
        );
    }
    if p.request.logprobs.is_some() {
        return no("logprobs", "logprobs are not supported with agents");
    }
    Ok(())
}

/// One agent response in flight.
struct Ctx {
    app: Arc<App>,
    _admission: Option<gate::Admission>,
    admitted_tokens: u64,
    key: KeyInfo,
    agent: Arc<Agent>,
    offered: Vec<String>,
    id: String,
    created: u64,
    parsed: Parsed,
    /// The call's audit record, given the tools called and the tokens at the end.
    audit: Arc<std::sync::Mutex<crate::audit::Event>>,
}

impl Ctx {
    fn chunks(&self) -> Chunks<'_> {
        Chunks {
            parsed: &self.parsed,
            id: &self.id,
            created: self.created,
        }
    }

    /// `agent` of the response: name, tools offered, why it stopped, and (whole answers)
    /// the steps.
    fn agent_json(&self, o: &Outcome, with_steps: bool) -> Value {
        let mut a = json!({"name": self.agent.name, "tools": self.offered});
        if let Some(s) = o.stopped {
            a["stopped"] = s.into();
        }
        if with_steps {
            a["steps"] = Value::Array(o.steps.clone());
        }
        a
    }

    /// Settle the tokens of every turn against the key's budget.
    fn account(&self, o: &Outcome) {
        super::chat::settle(
            &self.app,
            &self.key,
            self.admitted_tokens,
            &self.audit,
            o.prompt_tokens as u64,
            o.completion_tokens as u64,
        );
        {
            let mut e = crate::util::lock(&self.audit);
            e.tools = o
                .steps
                .iter()
                .filter_map(|s| s["tool"].as_str().map(str::to_string))
                .collect();
            e.collections = self.agent.collections.clone();
        }
    }
}

/// The whole answer as one engine output, for the chat response builder.
fn output(o: &Outcome, content: String, reasoning: String) -> GenerateOutput {
    GenerateOutput {
        token_ids: Vec::new(),
        text: content,
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        finish_reason: o.finish.unwrap_or(FinishReason::Stop),
        prompt_tokens: o.prompt_tokens,
        completion_tokens: o.completion_tokens,
        reasoning_tokens: o.reasoning_tokens,
        logprobs: None,
        mask: None,
    }
}

async fn whole(ctx: Ctx, mut rx: mpsc::Receiver<Ev>) -> Result<Response<Body>, ApiError> {
    let (mut content, mut reasoning) = (String::new(), String::new());
    loop {
        match rx.recv().await {
            Some(Ev::Reasoning(r)) => reasoning.push_str(&r),
            Some(Ev::Content(t)) => content.push_str(&t),
            Some(Ev::Step(_)) => {}
            Some(Ev::Failed(e)) => return Err(e),
            Some(Ev::Done(o)) => {
                ctx.account(&o);
                let mut v = openai::response(
                    &ctx.parsed,
                    &ctx.id,
                    ctx.created,
                    &[output(&o, content, reasoning)],
                );
                v["agent"] = ctx.agent_json(&o, true);
                v["citations"] = Value::Array(o.citations);
                return Ok(json_response(StatusCode::OK, &v));
            }
            None => {
                return Err(ApiError::internal(
                    "the agent run stopped before it finished",
                ))
            }
        }
    }
}

fn stream(ctx: Ctx, rx: mpsc::Receiver<Ev>) -> Response<Body> {
    let (body_tx, body) = sse::channel(32);
    tokio::spawn(pump(ctx, rx, body_tx));
    sse::response(body)
}

async fn pump(ctx: Ctx, mut rx: mpsc::Receiver<Ev>, out: mpsc::Sender<Bytes>) {
    let chunks = ctx.chunks();
    // Dropping `rx` on return is what cancels the run when the client is gone.
    macro_rules! send {
        ($v:expr) => {
            if out.send(sse::data(&$v)).await.is_err() {
                return;
            }
        };
    }
    send!(chunks.delta(
        0,
        Delta {
            role: true,
            content: Some(""),
            ..Delta::default()
        },
        0
    ));
    let (mut content_len, mut reasoning, mut content) = (0usize, 0usize, 0usize);
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = out.closed() => return,
        };
        match ev {
            Some(Ev::Reasoning(r)) => {
                reasoning += r.len();
                send!(chunks.delta(
                    0,
                    Delta {
                        reasoning: Some(&r),
                        ..Delta::default()
                    },
                    content_len
                ));
            }
            Some(Ev::Content(t)) => {
                content += t.len();
                content_len += t.len();
                send!(chunks.delta(
                    0,
                    Delta {
                        content: Some(&t),
                        ..Delta::default()
                    },
                    content_len
                ));
            }
            Some(Ev::Step(s)) => {
                let mut v = chunks.delta(0, Delta::default(), content_len);
                v["agent_step"] = s;
                send!(v);
            }
            Some(Ev::Done(o)) => {
                ctx.account(&o);
                let mut v = chunks.delta(
                    0,
                    Delta {
                        finish: Some(o.finish.unwrap_or(FinishReason::Stop)),
                        ..Delta::default()
                    },
                    content_len,
                );
                v["agent"] = ctx.agent_json(&o, false);
                v["citations"] = Value::Array(o.citations.clone());
                send!(v);
                if ctx.parsed.include_usage {
                    let out_ = output(&o, String::new(), String::new());
                    send!(chunks.usage(o.prompt_tokens, &[&out_]));
                }
                tracing::debug!(id = %ctx.id, reasoning, content, "agent answer streamed");
                let _ = out.send(sse::done()).await;
                return;
            }
            Some(Ev::Failed(e)) => {
                send!(sse::error_chunk(&e));
                let _ = out.send(sse::done()).await;
                return;
            }
            None => {
                send!(sse::error_chunk(&ApiError::internal(
                    "the agent run stopped before it finished"
                )));
                let _ = out.send(sse::done()).await;
                return;
            }
        }
    }
}
