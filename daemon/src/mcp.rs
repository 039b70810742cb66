//! The client side of the Model Context Protocol: agents use the tools of MCP servers that the
//! administrator registered in `[[mcp.servers]]` (streamable HTTP transport, the one MCP
//! servers on a LAN speak; `rmcp` is the protocol implementation).
//!
//! Why it is shaped this way:
//!
//! * **One session per server, opened on first use and kept.** An MCP session costs an
//!   `initialize` round trip (and for many servers a worker of their own); an agent turn may
//!   call several tools, and several agents run at once, so every call to a server shares its
//!   one session (rmcp multiplexes concurrent requests over it). A session that fails at the
//!   transport (server restarted, connection lost) is dropped and the request is tried once
//!   more on a fresh one; a server that answers 404 for an expired session is re-initialized
//!   by rmcp itself. Connecting is serialized per server, so a burst of calls to a server that
//!   just came back opens one session, not one each. A call in flight while its server restarts
//!   loses its answer with the old process; rmcp does not report that, so it ends at its
//!   timeout (the next call works). A call retried after a transport failure runs twice if the
//!   server had already read it when the connection broke; MCP has no idempotency key to stop
//!   that, and a server that is down is the common case the retry is for.
//! * **Tool lists are cached** for [`TOOLS_TTL`]: every agent request needs the list (to
//!   offer the model its tools, to check an allowlist), and asking each server every time
//!   would put a LAN round trip in front of every chat. A failed tool call marks the list
//!   stale (the tool may be gone or renamed); a server that could not be listed is asked again
//!   after [`FAILED_TTL`], so a server that is down costs one timeout per few seconds rather
//!   than one per request.
//! * **Cancellation is dropping the future.** The agent loop drops a call when its client
//!   disconnects or the step times out. rmcp sends `notifications/cancelled` for a request
//!   whose future is dropped before its answer, so the server can stop working on it, and the
//!   session stays usable for the next call: nothing here holds state across an `.await` that
//!   a drop could leave half-updated (the session slot and the list cache are updated only
//!   after the awaited work completes).
//!
//! This module stands at the bottom of the crate: it imports nothing above `util`, and the API
//! and agent layers use it through [`Mcp`], [`McpRef`] and [`tool_id`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, ResourceContents,
};
use rmcp::service::{ClientInitializeError, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError,
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{Peer, ServiceExt};
use serde::Deserialize;

/// How long a server's tool list is served from the cache.
pub const TOOLS_TTL: Duration = Duration::from_secs(60);
/// How long a failed listing is kept before the server is asked again.
pub const FAILED_TTL: Duration = Duration::from_secs(5);
/// The longest a server name may be.
const MAX_NAME: usize = 64;
/// Same-origin redirects followed per request (fastmcp answers `/mcp` with 307 → `/mcp/`).
const MAX_REDIRECTS: usize = 5;

fn default_timeout_s() -> u64 {
    30
}

/// `[[mcp.servers]]`: one MCP server reachable over the streamable HTTP transport.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// What agents call it: tools are `mcp:NAME/TOOL`. 1-64 letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The endpoint, `http://` or `https://` (e.g. `http://10.0.0.7:8000/mcp`).
    pub url: String,
    /// Seconds one request to this server may take (connecting, listing, a tool call); the
    /// ceiling of any tool call's own timeout.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// A file holding the bearer token sent as `Authorization: Bearer …`; read when a session
    /// is opened, so a rotated token is picked up on the next reconnect.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

/// `[mcp]`: the MCP servers agents may use.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub servers: Vec<McpServerConfig>,
}

/// A bad `[mcp]` setting: the key as written in the file (`mcp.servers[1].name`) and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct McpConfigError {
    pub key: String,
    pub msg: String,
}

impl McpConfig {
    /// Checks every server entry; the error names the first bad key.
    pub fn validate(&self) -> Result<(), McpConfigError> {
        for (i, s) in self.servers.iter().enumerate() {
            let bad = |field: &str, msg: String| McpConfigError {
                key: format!("mcp.servers[{i}].{field}"),
                msg,
            };
            check_name(&s.name).map_err(|m| bad("name", m))?;
            if let Some(j) = self.servers[..i].iter().position(|o| o.name == s.name) {
                return Err(bad(
                    "name",
                    format!("`{}` is already the name of mcp.servers[{j}]", s.name),
                ));
            }
            check_url(&s.url).map_err(|m| bad("url", m))?;
            if !(1..=3600).contains(&s.timeout_s) {
                return Err(bad("timeout_s", "must be 1 to 3600 seconds".into()));
            }
            if s.bearer_token_file
                .as_ref()
                .is_some_and(|f| f.as_os_str().is_empty())
            {
                return Err(bad("bearer_token_file", "must name a file".into()));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("must be 1 to {MAX_NAME} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{name}`: {c:?} is not allowed (letters, digits, `-`, `_`, `.`)"
        ));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host"));
    }
    Ok(())
}

/// The tool id agents and allowlists use: `mcp:SERVER/TOOL`.
pub fn tool_id(server: &str, tool: &str) -> String {
    format!("mcp:{server}/{tool}")
}

/// An allowlist entry naming MCP tools: `mcp:SERVER/TOOL`, or `mcp:SERVER/*` for every tool
/// of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpRef {
    pub server: String,
    /// `None` for `*`.
    pub tool: Option<String>,
}

/// A malformed `mcp:` allowlist entry.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{entry}`: {msg}")]
pub struct McpRefError {
    pub entry: String,
    pub msg: String,
}

impl McpRef {
    /// Whether `entry` is meant as an MCP tool (starts with `mcp:`), well formed or not.
    pub fn is_mcp(entry: &str) -> bool {
        entry.starts_with("mcp:")
    }

    /// Parses `mcp:SERVER/TOOL` or `mcp:SERVER/*`. The server name follows the config's rule;
    /// the tool is everything after the first `/` (MCP tool names may hold characters server
    /// names may not), not empty and without spaces or control characters.
    pub fn parse(entry: &str) -> Result<McpRef, McpRefError> {
        let bad = |msg: String| McpRefError {
            entry: entry.to_string(),
            msg,
        };
        let form = "must be mcp:SERVER/TOOL or mcp:SERVER/*";
        let rest = entry.strip_prefix("mcp:").ok_or_else(|| bad(form.into()))?;
        let (server, tool) = rest.split_once('/').ok_or_else(|| bad(form.into()))?;
        check_name(server).map_err(|m| bad(format!("server name {m}")))?;
        if tool == "*" {
            return Ok(McpRef {
                server: server.to_string(),
                tool: None,
            });
        }
        if tool.is_empty() {
            return Err(bad(form.into()));
        }
        if tool.len() > 128 {
            return Err(bad("the tool name is longer than 128 characters".into()));
        }
        if tool.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "the tool name holds a space or control character".into()
            ));
        }
        Ok(McpRef {
            server: server.to_string(),
            tool: Some(tool.to_string()),
        })
    }

    /// Whether this entry allows `tool` of `server`.
    pub fn matches(&self, server: &str, tool: &str) -> bool {
        self.server == server && self.tool.as_deref().is_none_or(|t| t == tool)
    }
}

impl std::fmt::Display for McpRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mcp:{}/{}",
            self.server,
            self.tool.as_deref().unwrap_or("*")
        )
    }
}

/// One tool a server offers.
#[derive(Clone, Debug, PartialEq)]
pub struct McpTool {
    pub name: String,
    /// "" when the server gives none.
    pub description: String,
    /// The JSON Schema of the arguments (an object schema).
    pub input_schema: serde_json::Value,
}

/// A server's tool list, or why it could not be had.
#[derive(Clone, Debug)]
pub struct ServerTools {
    pub server: String,
    pub url: String,
    pub tools: Result<Vec<McpTool>, McpError>,
}

/// Why an MCP request failed. Each message is one line that names the server and its URL.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum McpError {
    #[error("MCP server {server} is not configured")]
    UnknownServer { server: String },
    /// The server could not be reached or the session broke (refused, DNS, TLS, HTTP status,
    /// unreadable token file).
    #[error("MCP server {server} ({url}): {}", one_line(msg))]
    Unavailable {
        server: String,
        url: String,
        msg: String,
    },
    /// The server answered with a JSON-RPC error (unknown tool, invalid arguments) or with
    /// something this client does not handle.
    #[error("MCP server {server} ({url}): {}", one_line(msg))]
    Protocol {
        server: String,
        url: String,
        msg: String,
    },
    /// The tool ran and reported failure (`isError: true`); `msg` is its text as sent (the
    /// message shows it on one line).
    #[error("MCP server {server} ({url}): tool {tool} failed: {}", one_line(msg))]
    Tool {
        server: String,
        url: String,
        tool: String,
        msg: String,
    },
    #[error("MCP server {server} ({url}): tool arguments must be a JSON object")]
    Arguments { server: String, url: String },
    #[error("MCP server {server} ({url}): no answer within {after:?}")]
    Timeout {
        server: String,
        url: String,
        after: Duration,
    },
}

impl McpError {
    /// The agent step status this error gives: `"timeout"` or `"error"`.
    pub fn kind(&self) -> &'static str {
        match self {
            McpError::Timeout { .. } => "timeout",
            _ => "error",
        }
    }

    /// The text worth showing the model: the tool's own words for a tool failure, the whole
    /// line otherwise.
    pub fn message(&self) -> String {
        match self {
            McpError::Tool { msg, .. } => msg.clone(),
            other => other.to_string(),
        }
    }
}

/// The longest server-supplied text an error message repeats.
const MAX_ERROR_TEXT: usize = 500;

/// `text` on one line (runs of whitespace, newlines included, become one space) and at most
/// [`MAX_ERROR_TEXT`] characters: a server's error can be a multi-line validation report.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if let Some((cut, _)) = out.char_indices().nth(MAX_ERROR_TEXT) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The MCP client of the daemon: one per process, cheap to clone (all clones share sessions
/// and caches).
#[derive(Clone)]
pub struct Mcp {
    servers: Arc<[Arc<Server>]>,
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.servers.iter().map(|s| (&s.config.name, &s.config.url)))
            .finish()
    }
}

type Session = RunningService<RoleClient, ClientConfig>;

struct Server {
    config: McpServerConfig,
    /// The HTTP client (TLS with ring and the system's roots), or why it could not be built.
    http: Result<reqwest::Client, String>,
    /// The open session, if any. Locked while connecting, so one connect runs at a time.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The last listing. Locked while listing, so concurrent callers share one request.
    tools: tokio::sync::Mutex<Option<Listing>>,
    /// Set by a failed call: the next `tools()` asks the server again.
    stale: AtomicBool,
}

struct Listing {
    at: Instant,
    tools: Result<Vec<McpTool>, McpError>,
}

impl Default for Mcp {
    /// No servers.
    fn default() -> Self {
        Mcp::new(McpConfig::default())
    }
}

impl Mcp {
    /// Takes a validated config. Nothing is contacted until the first request.
    pub fn new(config: McpConfig) -> Mcp {
        let http = http_client();
        let servers = config
            .servers
            .into_iter()
            .map(|config| {
                Arc::new(Server {
                    config,
                    http: http.clone(),
                    session: tokio::sync::Mutex::new(None),
                    tools: tokio::sync::Mutex::new(None),
                    stale: AtomicBool::new(false),
                })
            })
            .collect();
        Mcp { servers }
    }

    /// The configured servers, in config order.
    pub fn servers(&self) -> impl Iterator<Item = &McpServerConfig> {
        self.servers.iter().map(|s| &s.config)
    }

    /// Whether no server is configured.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every server's tools, in config order, from the cache where it is fresh. Servers are
    /// asked concurrently; each listing is bounded by its server's `timeout_s`.
    pub async fn tools(&self) -> Vec<ServerTools> {
        let mut set = tokio::task::JoinSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let server = server.clone();
            set.spawn(async move { (i, server.tools().await) });
        }
        let mut out: Vec<Option<ServerTools>> = vec![None; self.servers.len()];
        while let Some(done) = set.join_next().await {
            if let Ok((i, tools)) = done {
                out[i] = Some(tools);
            }
        }
        out.into_iter()
            .zip(self.servers.iter())
            .map(|(t, s)| {
                t.unwrap_or_else(|| ServerTools {
                    server: s.config.name.clone(),
                    url: s.config.url.clone(),
                    tools: Err(s.unavailable("listing the tools failed".into())),
                })
            })
            .collect()
    }

    /// Calls `tool` of `server` with `arguments` (a JSON object, or null for none) and returns
    /// its text content joined by newlines; other content is described in one line each. Waits
    /// at most `timeout` (and at most the server's `timeout_s`). Dropping the future cancels
    /// the request at the server.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: serde_json::Value,
        timeout: Duration,
    ) -> Result<String, McpError> {
        let s = self
            .servers
            .iter()
            .find(|s| s.config.name == server)
            .ok_or_else(|| McpError::UnknownServer {
                server: server.to_string(),
            })?;
        let result = s.call(tool, arguments, timeout).await;
        if matches!(
            &result,
            Err(e) if !matches!(e, McpError::Tool { .. } | McpError::Arguments { .. })
        ) {
            s.stale.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl Server {
    fn limit(&self) -> Duration {
        Duration::from_secs(self.config.timeout_s)
    }

    fn unavailable(&self, msg: String) -> McpError {
        McpError::Unavailable {
            server: self.config.name.clone(),
            url: self.config.url.clone(),
            msg,
        }
    }

    fn timeout(&self, after: Duration) -> McpError {
        McpError::Timeout {
            server: self.config.name.clone(),
            url: self.config.url.clone(),
            after,
        }
    }

    async fn tools(&self) -> ServerTools {
        let mut cache = self.tools.lock().await;
        let stale = self.stale.swap(false, Ordering::Relaxed);
        let fresh = cache.as_ref().is_some_and(|c| {
            let ttl = if c.tools.is_ok() {
                TOOLS_TTL
            } else {
                FAILED_TTL
            };
            c.at.elapsed() < ttl
        });
        if stale || !fresh {
            let limit = self.limit();
            let tools = match tokio::time::timeout(limit, self.list()).await {
                Ok(r) => r,
                Err(_) => Err(self.timeout(limit)),
            };
            *cache = Some(Listing {
                at: Instant::now(),
                tools,
            });
        }
        let tools = match cache.as_ref() {
            Some(c) => c.tools.clone(),
            None => Err(self.unavailable("listing the tools failed".into())),
        };
        ServerTools {
            server: self.config.name.clone(),
            url: self.config.url.clone(),
            tools,
        }
    }

    async fn list(&self) -> Result<Vec<McpTool>, McpError> {
        let tools = self
            .request(
                "tools/list",
                |peer| async move { peer.list_all_tools().await },
            )
            .await?;
        Ok(tools
            .into_iter()
            .map(|t| McpTool {
                name: t.name.into_owned(),
                description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                input_schema: serde_json::Value::Object((*t.input_schema).clone()),
            })
            .collect())
    }

    async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Value,
        timeout: Duration,
    ) -> Result<String, McpError> {
        let mut params = CallToolRequestParams::new(tool.to_string());
        match arguments {
            serde_json::Value::Object(map) => params = params.with_arguments(map),
            serde_json::Value::Null => {}
            _ => {
                return Err(McpError::Arguments {
                    server: self.config.name.clone(),
                    url: self.config.url.clone(),
                });
            }
        }
        let limit = timeout.min(self.limit());
        let what = format!("tools/call {tool}");
        let call = self.request(&what, |peer| {
            let params = params.clone();
            async move { peer.call_tool(params).await }
        });
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r?,
            Err(_) => return Err(self.timeout(limit)),
        };
        let text = result_text(&result);
        if result.is_error == Some(true) {
            return Err(McpError::Tool {
                server: self.config.name.clone(),
                url: self.config.url.clone(),
                tool: tool.to_string(),
                msg: if text.is_empty() {
                    "(no message)".into()
                } else {
                    text
                },
            });
        }
        Ok(text)
    }

    /// Runs `op` on the server's session, opening one if needed; a transport failure drops the
    /// session and `op` is tried once more on a new one.
    async fn request<T, F, Fut>(&self, what: &str, op: F) -> Result<T, McpError>
    where
        F: Fn(Peer<RoleClient>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match op(session.peer().clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = is_transport(&e) || session.is_closed();
                    if broken {
                        self.discard(&session).await;
                        if !retried {
                            retried = true;
                            tracing::debug!(server = %self.config.name, error = %e, "MCP session broke; reconnecting");
                            continue;
                        }
                    }
                    return Err(self.service_error(what, e));
                }
            }
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, McpError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *slot = None;
        let limit = self.limit();
        let session = match tokio::time::timeout(limit, self.connect()).await {
            Ok(r) => Arc::new(r?),
            Err(_) => return Err(self.timeout(limit)),
        };
        tracing::debug!(server = %self.config.name, url = %self.config.url, "MCP session opened");
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forgets `failed` if it is still the open session (a concurrent caller may already have
    /// replaced it). The session closes when its last user lets go.
    async fn discard(&self, failed: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Session, McpError> {
        let http = self.http.clone().map_err(|e| self.unavailable(e))?;
        let mut transport = StreamableHttpClientTransportConfig::with_uri(self.config.url.as_str());
        if let Some(file) = &self.config.bearer_token_file {
            let token = std::fs::read_to_string(file).map_err(|e| {
                self.unavailable(format!(
                    "cannot read bearer_token_file {}: {e}",
                    file.display()
                ))
            })?;
            let token = token.trim();
            if token.is_empty() {
                return Err(
                    self.unavailable(format!("bearer_token_file {} is empty", file.display()))
                );
            }
            transport = transport.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::with_client(http, transport);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("edgeseek", env!("CARGO_PKG_VERSION")),
        );
        info.serve(transport)
            .await
            .map_err(|e| self.unavailable(describe(&e)))
    }

    fn service_error(&self, what: &str, e: ServiceError) -> McpError {
        let protocol = |msg: String| McpError::Protocol {
            server: self.config.name.clone(),
            url: self.config.url.clone(),
            msg,
        };
        match e {
            ServiceError::McpError(data) => {
                protocol(format!("{what}: {} (code {})", data.message, data.code.0))
            }
            ServiceError::UnexpectedResponse => protocol(format!(
                "{what}: the server answered with something other than a result (input requests and tasks are not supported)"
            )),
            ServiceError::Timeout { timeout } => self.timeout(timeout),
            ServiceError::TransportClosed => self.unavailable("the connection closed".into()),
            ServiceError::Cancelled { reason } => self.unavailable(format!(
                "{what}: cancelled by the server{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            other => self.unavailable(describe(&other)),
        }
    }
}

/// Whether `e` means the session's transport broke (rather than the server answering).
fn is_transport(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::TransportSend(_) | ServiceError::TransportClosed
    )
}

/// One HTTP client for every server: the daemon's outbound TLS ([`crate::web::tls`]);
/// HTTP/1.1; no idle pool (rmcp's choice: a reused connection whose last body was not drained
/// stalls on delayed ACKs); only same-origin 307/308 redirects, which keep a POST's body
/// (301-303 would turn it into a GET and lose the message).
fn http_client() -> Result<reqwest::Client, String> {
    let mut tls = crate::web::tls::client_config()?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        let keeps_body = matches!(attempt.status().as_u16(), 307 | 308);
        if same_origin && keeps_body && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0)
        .redirect(redirects)
        .build()
        .map_err(|e| format!("HTTP client setup failed: {}", describe(&e)))
}

/// The text of a tool result: text blocks as they are, embedded text resources by their text,
/// anything else one `[…]` line; the structured content as JSON when there is no content.
fn result_text(result: &CallToolResult) -> String {
    let mut parts = Vec::new();
    for block in &result.content {
        parts.push(match block {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => {
                format!("[{}, {} bytes]", i.mime_type, base64_len(&i.data))
            }
            ContentBlock::Audio(a) => {
                format!("[{}, {} bytes]", a.mime_type, base64_len(&a.data))
            }
            ContentBlock::Resource(r) => match &r.resource {
                ResourceContents::TextResourceContents { text, .. } => text.clone(),
                ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => format!(
                    "[{} {uri}, {} bytes]",
                    mime_type.as_deref().unwrap_or("resource"),
                    base64_len(blob)
                ),
                _ => "[an embedded resource of a kind this client does not read]".to_string(),
            },
            ContentBlock::ResourceLink(l) => format!("[resource link {} ({})]", l.uri, l.name),
            _ => "[content of a type this client does not read]".to_string(),
        });
    }
    if let (true, Some(structured)) = (parts.is_empty(), &result.structured_content) {
        parts.push(structured.to_string());
    }
    parts.join("\n")
}

/// Bytes that `b64` (standard base64, maybe with padding) decodes to.
fn base64_len(b64: &str) -> usize {
    let s = b64.trim_end_matches('=');
    s.len() * 3 / 4
}

/// One line for an error and its causes: the innermost cause that says what happened, with
/// the common ones in plain words ("connection refused", "HTTP 503", "HTTP 401 …").
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(p) = crate::util::plain_io_error(io) {
                return p.to_string();
            }
        }
        if e.downcast_ref::<AuthRequiredError>().is_some() {
            return "HTTP 401: the server wants authorization (check bearer_token_file)".into();
        }
        if e.downcast_ref::<InsufficientScopeError>().is_some() {
            return "HTTP 403: the token is not allowed here".into();
        }
        if let Some(h) = e.downcast_ref::<HttpStatusError>() {
            return format!("HTTP {}", h.status);
        }
        last = e.to_string();
        cur = cause(e);
    }
    last
}

/// The next error down the chain, also where rmcp's wrappers do not report it as `source()`.
fn cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match e.downcast_ref::<ClientInitializeError>() {
        Some(ClientInitializeError::TransportError { error, .. }) => return Some(error),
        Some(ClientInitializeError::LegacyFallbackFailed { fallback, .. }) => {
            return Some(fallback.as_ref());
        }
        _ => {}
    }
    if let Some(StreamableHttpError::Client(inner)) =
        e.downcast_ref::<StreamableHttpError<reqwest::Error>>()
    {
        return Some(inner);
    }
    e.source()
}

#[cfg(test)]
mod tests;
