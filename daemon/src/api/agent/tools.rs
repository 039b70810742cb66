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
#[derive(Clone, Debug)]
pub enum Impl {
    KbSearch {
        collections: Vec<String>,
    },
    WebSearch(crate::web::WebSearch),
    FetchUrl {
        fetcher: crate::web::Fetcher,
        /// The agent's `fetch_sites` (empty: any URL the fetch rules allow).
        sites: Vec<String>,
    },
    CurrentTime,
    /// A tool of an MCP server.
    Mcp {
        mcp: crate::mcp::Mcp,
        server: String,
        tool: String,
    },
}

/// A tool offered to the model in this run.
#[derive(Clone, Debug)]
pub struct Offered {
    /// The function name the model calls.
    pub name: String,
    /// The tool as the agent lists it and the trace shows it (`kb_search`, `mcp:erp/lookup`).
    pub id: String,
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
    pub async fn for_caller(app: &App, agent: &Agent, key: &KeyInfo) -> Kit {
        let mut tools = Vec::new();
        let web = app.web();
        let may_web = key.allows(&Scope::Web);
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
                        id: "kb_search".into(),
                        description: describe("kb_search")
                            .into(),
                        parameters: query_schema(),
                        imp: Impl::KbSearch { collections },
                    });
                }
                "web_search" => {
                    let Some(ws) = web.search.clone().filter(|_| may_web) else {
                        continue;
                    };
                    tools.push(Offered {
                        name: "web_search".into(),
                        id: "web_search".into(),
                        description: describe("web_search")
                            .into(),
                        parameters: query_schema(),
                        imp: Impl::WebSearch(ws),
                    });
                }
                "fetch_url" => {
                    let Some(fetcher) = web.fetcher.clone().filter(|_| may_web) else {
                        continue;
                    };
                    tools.push(Offered {
                        name: "fetch_url".into(),
                        id: "fetch_url".into(),
                        description: describe("fetch_url")
                            .into(),
                        parameters: json!({
                            "type": "object",
                            "properties": {"url": {"type": "string", "description": "The page's URL", "maxLength": 2048}},
                            "required": ["url"],
                            "additionalProperties": false
                        }),
                        imp: Impl::FetchUrl {
                            fetcher,
                            sites: agent.fetch_sites.clone(),
                        },
                    });
                }
                "current_time" => tools.push(Offered {
                    name: "current_time".into(),
                    id: "current_time".into(),
                    description: describe("current_time").into(),
                    parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
                    imp: Impl::CurrentTime,
                }),
                _ => {}
            }
        }
        let refs: Vec<crate::mcp::McpRef> = agent
            .tools
            .iter()
            .filter_map(|t| crate::mcp::McpRef::parse(t).ok())
            .collect();
        if !refs.is_empty() {
            mcp_tools(&web.mcp, &refs, &mut tools).await;
        }
        Kit { tools }
    }

    /// The OpenAI `tools` array the model sees.
    pub fn definitions(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    // Built-ins are strict: a call the model opens follows their schema
                    // (constrained decoding), so a small model cannot write a broken one. An
                    // MCP server's schema may use features the grammar compiler lacks, and
                    // one such tool must not break the run: those calls are read, not forced.
                    let strict = !matches!(t.imp, Impl::Mcp { .. });
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters,
                        "strict": strict
                    }})
                })
                .collect(),
        )
    }

    /// The tools offered, as the agent lists them.
    pub fn ids(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.id.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Offered> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// Run one call of `tool` with the model's `arguments` (a JSON object).
pub async fn call(
    app: Arc<App>,
    tool: Offered,
    arguments: Value,
    timeout: std::time::Duration,
) -> Result<Output, Failure> {
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
        Impl::WebSearch(ws) => {
            let query = string_arg(&arguments, "query")?;
            let cfg = ws.config();
            let results = ws
                .search(&query, cfg.top_n, cfg.fetch)
                .await
                .map_err(web_failure)?;
            let summary = match results.len() {
                0 => "no web result".to_string(),
                n => format!(
                    "{n} web result{}: {}",
                    if n == 1 { "" } else { "s" },
                    results
                        .iter()
                        .map(|r| r.url.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let sources = results
                .iter()
                .map(|r| Source {
                    citation: json!({"url": r.url, "title": r.title, "text": r.snippet}),
                    header: format!("{} — {}", r.title, r.url),
                    text: r.text.clone().unwrap_or_else(|| r.snippet.clone()),
                })
                .collect();
            Ok(Output {
                text: "The web search found nothing.".into(),
                sources,
                summary,
            })
        }
        Impl::FetchUrl { fetcher, sites } => {
            let url = string_arg(&arguments, "url")?;
            if !crate::agents::under_sites(&sites, &url) {
                return Err(Failure {
                    status: "refused",
                    message: format!(
                        "{url}: outside the sites this agent may read ({})",
                        sites.join(", ")
                    ),
                });
            }
            let page = fetcher.fetch(&url).await.map_err(web_failure)?;
            let title = page.title.clone().unwrap_or_else(|| page.url.clone());
            let summary = format!(
                "{} ({} bytes, {} characters of text)",
                page.url,
                page.bytes,
                page.text.chars().count()
            );
            let snippet = super::super::rag::cut(page.text.trim(), 300);
            Ok(Output {
                text: String::new(),
                sources: vec![Source {
                    citation: json!({"url": page.url, "title": title, "text": snippet}),
                    header: format!("{title} — {}", page.url),
                    text: page.text,
                }],
                summary,
            })
        }
        Impl::Mcp { mcp, server, tool } => {
            let text = mcp
                .call(&server, &tool, arguments, timeout)
                .await
                .map_err(|e| Failure {
                    status: e.kind(),
                    message: e.message(),
                })?;
            let first = text.lines().next().unwrap_or_default();
            Ok(Output {
                summary: super::super::rag::cut(first, 120),
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

/// The MCP tools the agent's `mcp:` entries allow, as the servers list them now. A server
/// that cannot be reached offers nothing this run (logged); the model sees each tool under a
/// function name made of the server's and the tool's (`erp_lookup_order`).
async fn mcp_tools(mcp: &crate::mcp::Mcp, refs: &[crate::mcp::McpRef], out: &mut Vec<Offered>) {
    for st in mcp.tools().await {
        if !refs.iter().any(|r| r.server == st.server) {
            continue;
        }
        let listed = match st.tools {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(server = %st.server, error = %e, "MCP tools unavailable for this agent run");
                continue;
            }
        };
        for t in listed {
            if !refs.iter().any(|r| r.matches(&st.server, &t.name)) {
                continue;
            }
            let name = function_name(&st.server, &t.name);
            if out.iter().any(|o| o.name == name) {
                continue;
            }
            let mut parameters = t.input_schema.clone();
            if !parameters.is_object() {
                parameters = json!({"type": "object"});
            }
            out.push(Offered {
                name,
                id: crate::mcp::tool_id(&st.server, &t.name),
                description: t.description.clone(),
                parameters,
                imp: Impl::Mcp {
                    mcp: mcp.clone(),
                    server: st.server.clone(),
                    tool: t.name.clone(),
                },
            });
        }
    }
}

/// An OpenAI function name (`[A-Za-z0-9_-]`, at most 64) for a server's tool.
fn function_name(server: &str, tool: &str) -> String {
    format!("{server}_{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// What a built-in tool does, as the model and the admin see it.
pub fn describe(builtin: &str) -> &'static str {
    match builtin {
        "kb_search" => {
            "Search the company's documents. Returns numbered passages; cite them as [n]."
        }
        "web_search" => {
            "Search the web. Returns numbered results (title, URL, text); cite them as [n]."
        }
        "fetch_url" => "Read a web page (http or https URL). Returns its text; cite it as [n].",
        "current_time" => "The current date and time (UTC).",
        _ => "",
    }
}

/// The parameters of the search tools.
fn query_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to look for", "maxLength": 200}},
        "required": ["query"],
        "additionalProperties": false
    })
}

/// A failed web call: its kind (`refused`, `timeout`, `error`) is the step's status.
fn web_failure(e: crate::web::WebError) -> Failure {
    Failure {
        status: e.kind(),
        message: e.to_string(),
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
