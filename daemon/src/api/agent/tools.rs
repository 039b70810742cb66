//! The tools of one agent run: which the caller gets (the agent's list, cut down to what the
//! caller's key may do), how the model sees them (OpenAI function definitions), and running
//! one call.
//!
//! What the caller may do bounds the agent: `kb_search` searches only the agent's collections
//! that the key may read (no such collection: the tool is not offered); `web_search` and
//! `fetch_url` need the key's `web` scope and a configured backend. MCP tools are the admin's
//! choice for the agent and need nothing more of the caller.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::super::App;
use crate::agents::Agent;
use crate::keys::{KeyInfo, Scope};

/// Passages `kb_search` returns per call.
const KB_TOP_K: usize = 5;

/// What runs a tool.
#[derive(Clone, Debug, PartialEq)]
pub enum Impl {
    KbSearch { collections: Vec<String> },
    CurrentTime,
}

/// A tool offered to the model in this run.
#[derive(Clone, Debug)]
pub struct Offered {
    /// The function name the model calls.
    pub name: String,
    pub description: String,
    pub parameters: Value,
    pub imp: Impl,
}

/// One source a tool found: what the answer cites as `[n]`.
#[derive(Clone, Debug)]
pub struct Source {
    /// The citation object without its `index` (a KB hit, or `url` / `title` / `text`).
    pub citation: Value,
    /// The line above the source's text in the tool result (`filename, p. 3`).
    pub header: String,
    pub text: String,
}

/// A finished call.
#[derive(Debug, Default)]
pub struct Output {
    /// The result for the model when the tool has no sources (e.g. the time).
    pub text: String,
    pub sources: Vec<Source>,
    /// One line for the step trace.
    pub summary: String,
}

/// Why a call did not produce a result; its `status` in the trace.
#[derive(Debug)]
pub struct Failure {
    pub status: &'static str,
    pub message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Failure {
        Failure {
            status: "error",
            message: message.into(),
        }
    }
}

/// The tools of one run.
pub struct Kit {
    pub tools: Vec<Offered>,
}

impl Kit {
    /// The agent's tools that `key` may use, in the agent's order.
    pub fn for_caller(app: &App, agent: &Agent, key: &KeyInfo) -> Kit {
        let mut tools = Vec::new();
        for t in &agent.tools {
            match t.as_str() {
                "kb_search" => {
                    let collections: Vec<String> = agent
                        .collections
                        .iter()
                        .filter(|c| key.allows(&Scope::KbRead((*c).clone())))
                        .cloned()
                        .collect();
                    if collections.is_empty() || app.kb().is_err() {
                        continue;
                    }
                    tools.push(Offered {
                        name: "kb_search".into(),
                        description: "Search the company's documents. Returns numbered \
                                      passages; cite them as [n]."
                            .into(),
                        parameters: json!({
                            "type": "object",
                            "properties": {"query": {"type": "string", "description": "What to look for"}},
                            "required": ["query"]
                        }),
                        imp: Impl::KbSearch { collections },
                    });
                }
                "current_time" => tools.push(Offered {
                    name: "current_time".into(),
                    description: "The current date and time (UTC).".into(),
                    parameters: json!({"type": "object", "properties": {}}),
                    imp: Impl::CurrentTime,
                }),
                _ => {}
            }
        }
        Kit { tools }
    }

    /// The OpenAI `tools` array the model sees.
    pub fn definitions(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters
                    }})
                })
                .collect(),
        )
    }

    /// The names the model may call.
    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Offered> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// Run one call of `tool` with the model's `arguments` (a JSON object).
pub async fn call(app: Arc<App>, tool: Offered, arguments: Value) -> Result<Output, Failure> {
    match tool.imp {
        Impl::CurrentTime => {
            let now = time::OffsetDateTime::now_utc();
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z ({})",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second(),
                now.weekday()
            );
            Ok(Output {
                summary: text.clone(),
                text,
                sources: Vec::new(),
            })
        }
        Impl::KbSearch { collections } => {
            let query = string_arg(&arguments, "query")?;
            let kb = app.kb().map_err(|e| Failure::error(e.message))?;
            let req = crate::kb::base::SearchRequest {
                collections,
                query,
                top_k: KB_TOP_K,
                mode: crate::kb::base::SearchMode::Hybrid,
            };
            let started = Instant::now();
            let hits = tokio::task::spawn_blocking(move || kb.base().search(&req))
                .await
                .map_err(|e| Failure::error(format!("search task failed: {e}")))?
                .map_err(|e| Failure::error(e.to_string()))?;
            let mut files: Vec<&str> = Vec::new();
            for h in &hits {
                if !files.contains(&h.filename.as_str()) {
                    files.push(&h.filename);
                }
            }
            let summary = match hits.len() {
                0 => "no passage matched".to_string(),
                n => format!(
                    "{n} passage{} from {} ({} ms)",
                    if n == 1 { "" } else { "s" },
                    files.join(", "),
                    started.elapsed().as_millis()
                ),
            };
            let sources = hits
                .iter()
                .map(|h| Source {
                    citation: crate::api::wire::value(h),
                    header: match h.page {
                        Some(p) => format!("{} ({}), p. {p}", h.filename, h.collection),
                        None => format!("{} ({})", h.filename, h.collection),
                    },
                    text: h.text.clone(),
                })
                .collect();
            Ok(Output {
                text: "No passage in the company's documents matched.".into(),
                sources,
                summary,
            })
        }
    }
}

/// A required string argument.
fn string_arg(args: &Value, name: &str) -> Result<String, Failure> {
    match args.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(Failure::error(format!(
            "argument `{name}` (a non-empty string) is required"
        ))),
    }
}
