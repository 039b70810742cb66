//! The agent loop: model turn → tool calls → results → model turn, until an answer or the
//! step limit.
//!
//! Each model turn is an ordinary chat request built from the client's body (its sampling
//! parameters, `max_tokens` per turn) with the agent's instructions, the conversation so far
//! and the offered tools, parsed and prepared by the same code as any chat request (so the
//! template, tool reading and grammars are the ones `/v1/chat/completions` uses). The client's
//! `tool_choice` applies to the first turn; later turns choose freely; after `max_steps`
//! rounds of calls the model gets a last turn without tools to answer with what it has.
//!
//! Cancellation: the run ends as soon as the response side is gone — a turn waiting for the
//! engine drops its handle (the engine frees the slot within a step), and tool calls in flight
//! are aborted (their futures dropped).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::super::chat::{prepare, submit};
use super::super::error::ApiError;
use super::super::openai::{self, Kind, Parsed};
use super::super::rag::cut;
use super::super::tools::{Out, ToolParsing, ToolStream};
use super::super::{App, Served};
use super::tools::{self, Failure, Kit, Output};
use crate::agents::Agent;
use crate::engine::{Event, FinishReason, RequestHandle};
use crate::remote::Upstream;

/// What the run tells the response side.
#[derive(Debug)]
pub enum Ev {
    Reasoning(String),
    Content(String),
    /// A step of the trace (see the module doc of `agent`).
    Step(Value),
    Done(Outcome),
    Failed(ApiError),
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub finish: Option<FinishReason>,
    /// `max_steps` when the model used every round of calls and answered without tools.
    pub stopped: Option<&'static str>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
    pub steps: Vec<Value>,
    pub citations: Vec<Value>,
}

/// Why a run stopped early.
enum Stop {
    /// The client is gone.
    Gone,
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Stop {
        Stop::Failed(e)
    }
}

/// Most tool calls run for one model turn; the model's further calls are dropped.
pub const MAX_CALLS_PER_TURN: usize = 8;

/// Limits of every run, from `[agents]` in the configuration.
#[derive(Clone, Copy, Debug)]
pub struct AgentLimits {
    pub tool_timeout: Duration,
    /// Longest tool result the model is given, in characters.
    pub result_chars: usize,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            tool_timeout: Duration::from_secs(30),
            result_chars: 4000,
        }
    }
}

/// The model an agent's turns go to.
#[derive(Clone)]
pub enum Backend {
    Local(Arc<Served>),
    /// A remote model: each turn is one forwarded chat request, its calls read by the upstream.
    Remote(Arc<Upstream>),
}

impl Backend {
    pub fn name(&self) -> &str {
        match self {
            Backend::Local(s) => &s.name,
            Backend::Remote(u) => u.name(),
        }
    }
}

/// A model turn's request: parsed (and, for a local model, prepared), and as the JSON body a
/// remote model is sent.
pub struct TurnRequest {
    pub parsed: Parsed,
    body: Map<String, Value>,
}

/// One run of an agent for one request.
pub struct Run {
    pub app: Arc<App>,
    pub backend: Backend,
    pub agent: Arc<Agent>,
    pub kit: Arc<Kit>,
    /// The client's request body (a JSON object).
    pub body: Map<String, Value>,
    /// The conversation the next turn sees.
    messages: Vec<Value>,
    /// How many of `messages` are the instructions and the client's (the rest: the run's).
    base: usize,
    limits: AgentLimits,
    round: u32,
    outcome: Outcome,
}

/// A call the model made in a turn.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// A finished call: the tool as the trace names it, the arguments as shown, the result, the
/// time it took.
type Finished = (String, Value, Result<Output, Failure>, Duration);

/// What one model turn produced.
struct Turn {
    content: String,
    calls: Vec<Call>,
    finish: FinishReason,
}

impl Run {
    pub fn new(
        app: Arc<App>,
        backend: Backend,
        agent: Arc<Agent>,
        kit: Kit,
        body: Map<String, Value>,
        limits: AgentLimits,
    ) -> Run {
        let mut messages = Vec::new();
        if !agent.instructions.trim().is_empty() {
            messages.push(json!({"role": "system", "content": agent.instructions}));
        }
        if let Some(Value::Array(m)) = body.get("messages") {
            messages.extend(m.iter().cloned());
        }
        Run {
            app,
            backend,
            agent,
            kit: Arc::new(kit),
            body,
            base: messages.len(),
            messages,
            limits,
            round: 0,
            outcome: Outcome::default(),
        }
    }

    /// The chat request of the next model turn, parsed and prepared for the model.
    pub async fn next_turn(&self) -> Result<TurnRequest, ApiError> {
        let mut b = self.body.clone();
        for k in [
            "stream",
            "stream_options",
            "tool_choice",
            "parallel_tool_calls",
        ] {
            b.remove(k);
        }
        b.insert("model".into(), self.backend.name().into());
        let mut messages = self.messages.clone();
        if self.round >= self.agent.max_steps {
            // The last turn sees the conversation as the client sent it, with every tool
            // result put into the last user message: shown the calls, a model that has been
            // calling tools goes on writing calls (as text) instead of answering. Where the
            // call syntax opens with one token, that token is banned too.
            messages = self.final_messages();
            let opener = match &self.backend {
                Backend::Local(served) => {
                    let sched = &served.scheduler;
                    sched
                        .template()
                        .tool_format()
                        .and_then(crate::engine::toolcall::grammar::trigger)
                        .and_then(|t| sched.grammars().token_id(t))
                }
                // Token ids of a remote model are not known here.
                Backend::Remote(_) => None,
            };
            if let Some(id) = opener {
                let bias = b
                    .entry("logit_bias")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(o) = bias.as_object_mut() {
                    o.insert(id.to_string(), (-100).into());
                }
            }
        }
        b.insert("messages".into(), Value::Array(messages));
        // After the last round of calls the model sees no tools: shown them, small models
        // go on writing calls (as text) instead of answering.
        if !self.kit.tools.is_empty() && self.round < self.agent.max_steps {
            b.insert("tools".into(), self.kit.definitions());
            let choice = if self.round == 0 {
                self.body
                    .get("tool_choice")
                    .cloned()
                    .unwrap_or_else(|| "auto".into())
            } else {
                "auto".into()
            };
            b.insert("tool_choice".into(), choice);
        }
        if let Some(t) = self.agent.temperature {
            b.insert("temperature".into(), t.into());
        }
        if let Some(budget) = self.agent.reasoning_budget {
            let asked = b.get("max_reasoning_tokens").and_then(Value::as_u64);
            let budget = asked.map_or(u64::from(budget), |a| a.min(u64::from(budget)));
            b.insert("max_reasoning_tokens".into(), budget.into());
        }
        let bytes =
            serde_json::to_vec(&b).map_err(|e| ApiError::internal(format!("agent turn: {e}")))?;
        let mut parsed = openai::parse(Kind::Chat, &bytes)?;
        if let Backend::Local(served) = &self.backend {
            prepare(served, &mut parsed).await?;
        }
        Ok(TurnRequest { parsed, body: b })
    }

    /// The conversation of the last turn: the client's, the last user message carrying the
    /// results of every call so far.
    fn final_messages(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self.messages[..self.base].to_vec();
        let results: Vec<&str> = self.messages[self.base..]
            .iter()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| m["content"].as_str())
            .collect();
        if let Some(last) = out.iter_mut().rev().find(|m| m["role"] == "user") {
            let question = last["content"].as_str().unwrap_or_default().to_string();
            last["content"] = format!(
                "Results of the tools called for this question:\n\n{}\n\nAnswer the \
                 question from these results in plain text, citing the sources you use as [n]. \
                 Do not call any more tools.\n\nQuestion: {question}",
                results.join("\n\n")
            )
            .into();
        }
        out
    }

    /// Run to the end, from the first turn's prepared request, sending events to `tx`.
    pub async fn go(mut self, first: TurnRequest, tx: mpsc::Sender<Ev>) {
        let name = self.agent.name.clone();
        let started = Instant::now();
        let end = match self.rounds(first, &tx).await {
            Ok(()) => {
                let o = std::mem::take(&mut self.outcome);
                tracing::info!(agent = %name, steps = o.steps.len(), ms = started.elapsed().as_millis() as u64, "agent run finished");
                Ev::Done(o)
            }
            Err(Stop::Gone) => {
                self.app
                    .metrics
                    .client_disconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(agent = %name, round = self.round, "client disconnected; agent run cancelled");
                return;
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!(agent = %name, round = self.round, error = %e.message, "agent run failed");
                Ev::Failed(e)
            }
        };
        let _ = tx.send(end).await;
    }

    async fn rounds(&mut self, first: TurnRequest, tx: &mpsc::Sender<Ev>) -> Result<(), Stop> {
        let mut req = first;
        loop {
            let turn = match self.backend.clone() {
                Backend::Local(served) => {
                    let handle = submit(&served, &req.parsed)
                        .await?
                        .into_iter()
                        .next()
                        .ok_or_else(|| ApiError::internal("no choice submitted"))?;
                    self.outcome.prompt_tokens += handle.prompt_tokens();
                    self.turn(handle, req.parsed.tool_parsing.as_ref(), tx)
                        .await?
                }
                Backend::Remote(up) => {
                    let stream = super::super::upstream::turn(&self.app, &up, &req.body).await?;
                    self.remote_turn(&up, stream, &req, tx).await?
                }
            };
            let last = self.round >= self.agent.max_steps;
            if turn.calls.is_empty() || last {
                self.outcome.finish = Some(turn.finish);
                if last {
                    self.outcome.stopped = Some("max_steps");
                }
                return Ok(());
            }
            self.round += 1;
            self.run_calls(turn, tx).await?;
            req = self.next_turn().await?;
        }
    }

    /// One model turn: its text goes out as it comes, its calls are collected.
    async fn turn(
        &mut self,
        mut handle: RequestHandle,
        parsing: Option<&ToolParsing>,
        tx: &mpsc::Sender<Ev>,
    ) -> Result<Turn, Stop> {
        let mut reader = parsing.map(ToolStream::new);
        let mut t = Turn {
            content: String::new(),
            calls: Vec::new(),
            finish: FinishReason::Stop,
        };
        loop {
            let ev = tokio::select! {
                ev = handle.next() => ev,
                _ = tx.closed() => return Err(Stop::Gone),
            };
            match ev {
                None => {
                    return Err(Stop::Failed(ApiError::internal(
                        "the engine stopped before the request finished",
                    )))
                }
                Some(Event::Logprob(_)) => {}
                Some(Event::Reasoning(r)) if !r.is_empty() => send(tx, Ev::Reasoning(r)).await?,
                Some(Event::Reasoning(_)) => {}
                Some(Event::Content(c)) => match reader.as_mut() {
                    Some(rd) => {
                        let outs = rd.push(&c);
                        self.take(&mut t, outs, tx).await?;
                    }
                    None if c.is_empty() => {}
                    None => {
                        t.content.push_str(&c);
                        send(tx, Ev::Content(c)).await?;
                    }
                },
                Some(Event::Done(o)) => {
                    if let Some(rd) = reader.as_mut() {
                        let mut outs = rd.finish();
                        // What the reader still held after whole calls is a call cut off by
                        // max_tokens: not an answer, and the next turn follows anyway.
                        if !t.calls.is_empty() {
                            outs.retain(|o| !matches!(o, Out::Content(_)));
                        }
                        self.take(&mut t, outs, tx).await?;
                    }
                    self.outcome.completion_tokens += o.completion_tokens;
                    self.outcome.reasoning_tokens += o.reasoning_tokens;
                    t.finish = o.finish_reason;
                    return Ok(t);
                }
                Some(Event::Error(m)) => return Err(Stop::Failed(ApiError::internal(m))),
            }
        }
    }

    /// One model turn on a remote model: its text goes out as it comes; its calls, which the
    /// upstream read, are collected whole.
    async fn remote_turn(
        &mut self,
        up: &Upstream,
        mut stream: crate::remote::Stream,
        req: &TurnRequest,
        tx: &mpsc::Sender<Ev>,
    ) -> Result<Turn, Stop> {
        let mut all = crate::remote::Assembled::default();
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = tx.closed() => return Err(Stop::Gone),
            };
            let chunk = match next {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    return Err(Stop::Failed(super::super::upstream::error(
                        &self.app, up, &e,
                    )))
                }
            };
            let before = (all.content.len(), all.reasoning.len());
            all.push(&chunk);
            if all.reasoning.len() > before.1 {
                send(tx, Ev::Reasoning(all.reasoning[before.1..].to_string())).await?;
            }
            if all.content.len() > before.0 {
                send(tx, Ev::Content(all.content[before.0..].to_string())).await?;
            }
        }
        let usage = all.usage.clone().unwrap_or_else(|| {
            let prompt = serde_json::to_string(&req.body["messages"]).unwrap_or_default();
            let answer = format!("{}{}", all.reasoning, all.content);
            let count = |t: &str| {
                up.count_tokens(t).map_or_else(
                    || super::super::gate::estimate_tokens(t.len()),
                    |n| n as u64,
                )
            };
            crate::remote::Usage {
                prompt_tokens: count(&prompt),
                completion_tokens: count(&answer),
                reasoning_tokens: 0,
            }
        });
        self.outcome.prompt_tokens += usage.prompt_tokens as usize;
        self.outcome.completion_tokens += usage.completion_tokens as usize;
        self.outcome.reasoning_tokens += usage.reasoning_tokens as usize;
        let calls = all
            .tool_calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let name = c["function"]["name"].as_str()?.to_string();
                Some(Call {
                    id: c["id"]
                        .as_str()
                        .map_or_else(|| format!("call_{}_{i}", self.round), str::to_string),
                    name,
                    arguments: c["function"]["arguments"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
            })
            .collect();
        let finish = match all.finish_reason.as_deref() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        Ok(Turn {
            content: all.content,
            calls,
            finish,
        })
    }

    /// Content and call pieces from the tool-call reader.
    async fn take(&self, t: &mut Turn, outs: Vec<Out>, tx: &mpsc::Sender<Ev>) -> Result<(), Stop> {
        for o in outs {
            match o {
                Out::Content(c) if c.is_empty() => {}
                Out::Content(c) => {
                    t.content.push_str(&c);
                    send(tx, Ev::Content(c)).await?;
                }
                Out::Call(d) => {
                    if let (Some(id), Some(name)) = (d.id, d.function.name) {
                        t.calls.push(Call {
                            id,
                            name,
                            arguments: String::new(),
                        });
                    }
                    if let (Some(c), Some(a)) = (t.calls.get_mut(d.index), d.function.arguments) {
                        c.arguments.push_str(&a);
                    }
                }
            }
        }
        Ok(())
    }

    /// Run the calls of a turn (at once, each under the tool timeout), report each as a step,
    /// and add the turn and its results to the conversation.
    async fn run_calls(&mut self, mut turn: Turn, tx: &mpsc::Sender<Ev>) -> Result<(), Stop> {
        let step = self.round;
        // The same call twice in one turn runs once (small models repeat themselves), and a
        // turn runs at most MAX_CALLS_PER_TURN calls.
        let mut seen = std::collections::HashSet::new();
        turn.calls
            .retain(|c| seen.insert((c.name.clone(), c.arguments.trim().to_string())));
        turn.calls.truncate(MAX_CALLS_PER_TURN);
        let mut set = JoinSet::new();
        for (i, call) in turn.calls.iter().enumerate() {
            let args: Result<Value, String> = match serde_json::from_str::<Value>(&call.arguments) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err("the arguments are not a JSON object".into()),
                Err(e) => Err(format!("the arguments are not valid JSON: {e}")),
            };
            let shown = args
                .clone()
                .unwrap_or_else(|_| Value::String(call.arguments.clone()));
            let tool = self.kit.get(&call.name).cloned();
            let id = tool.as_ref().map_or(call.name.clone(), |t| t.id.clone());
            send(
                tx,
                Ev::Step(json!({"step": step, "call": call.id, "tool": id,
                    "arguments": shown, "status": "running"})),
            )
            .await?;
            let app = self.app.clone();
            let timeout = self.limits.tool_timeout;
            set.spawn(async move {
                let started = Instant::now();
                let r = match (tool, args) {
                    (None, _) => Err(Failure::error("no such tool")),
                    (_, Err(e)) => Err(Failure::error(e)),
                    (Some(t), Ok(a)) => {
                        match tokio::time::timeout(timeout, tools::call(app, t, a, timeout)).await {
                            Ok(r) => r,
                            Err(_) => Err(Failure {
                                status: "timeout",
                                message: format!(
                                    "the tool did not answer within {} s",
                                    timeout.as_secs_f64()
                                ),
                            }),
                        }
                    }
                };
                (i, id, shown, r, started.elapsed())
            });
        }
        // Results in call order, so sources are numbered the same way every time.
        let mut done: Vec<Option<Finished>> = (0..turn.calls.len()).map(|_| None).collect();
        while !set.is_empty() {
            let joined = tokio::select! {
                j = set.join_next() => j,
                // Dropping the set aborts the calls still running.
                _ = tx.closed() => return Err(Stop::Gone),
            };
            match joined {
                Some(Ok((i, id, shown, r, took))) => {
                    if let Some(slot) = done.get_mut(i) {
                        *slot = Some((id, shown, r, took));
                    }
                }
                Some(Err(e)) => {
                    return Err(Stop::Failed(ApiError::internal(format!(
                        "tool task failed: {e}"
                    ))))
                }
                None => break,
            }
        }
        let calls_json: Vec<Value> = turn
            .calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        let content = if turn.content.is_empty() {
            Value::Null
        } else {
            turn.content.clone().into()
        };
        self.messages
            .push(json!({"role": "assistant", "content": content, "tool_calls": calls_json}));
        for (call, d) in turn.calls.iter().zip(done) {
            let Some((id, shown, r, took)) = d else {
                continue;
            };
            let (status, summary, text, cites) = match r {
                Ok(out) => {
                    let (text, cites) = self.render(out.text, out.sources);
                    ("ok", out.summary, text, cites)
                }
                Err(f) => (
                    f.status,
                    f.message.clone(),
                    format!("error: {}", f.message),
                    Vec::new(),
                ),
            };
            let mut s = json!({"step": step, "call": call.id, "tool": id,
                "arguments": shown, "status": status, "summary": summary,
                "duration_ms": took.as_millis() as u64});
            if !cites.is_empty() {
                s["citations"] = Value::Array(cites);
            }
            // Arguments carry the user's words (queries, URLs): like prompts they stay out of the
            // info log and appear at debug level only.
            tracing::info!(agent = %self.agent.name, step, tool = %id, status, %summary, ms = took.as_millis() as u64, "agent tool call");
            tracing::debug!(agent = %self.agent.name, step, tool = %id, arguments = %shown, "agent tool call arguments");
            self.outcome.steps.push(s.clone());
            send(tx, Ev::Step(s)).await?;
            self.messages.push(
                json!({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": text}),
            );
        }
        Ok(())
    }

    /// A tool result as the model reads it (sources numbered on from the run's earlier ones,
    /// cut to the result limit), and the citations it adds.
    fn render(&mut self, text: String, sources: Vec<tools::Source>) -> (String, Vec<Value>) {
        if sources.is_empty() {
            return (cut(&text, self.limits.result_chars), Vec::new());
        }
        let mut out = String::new();
        let mut cites = Vec::new();
        let per = self.limits.result_chars / sources.len().max(1);
        for s in sources {
            let n = self.outcome.citations.len() + 1;
            out.push_str(&format!("[{n}] {}\n{}\n\n", s.header, cut(&s.text, per)));
            let mut c = s.citation;
            if let Some(o) = c.as_object_mut() {
                o.insert("index".into(), n.into());
            }
            self.outcome.citations.push(c.clone());
            cites.push(c);
        }
        let mut text = cut(out.trim_end(), self.limits.result_chars);
        // Said with every result: small models forget an instruction given only once, at the
        // top of a long conversation.
        text.push_str("\n\nCite a source you use as [n] right after the statement it supports.");
        (text, cites)
    }
}

async fn send(tx: &mpsc::Sender<Ev>, ev: Ev) -> Result<(), Stop> {
    tx.send(ev).await.map_err(|_| Stop::Gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_cut_on_character_boundaries() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("北京上海", 2), "北京 […]");
        assert_eq!(cut("", 0), "");
    }
}
