//! The HTTP API: one route table ([`routes`]), one request gate ([`gate`]: authentication,
//! scope, rate limits and in-flight share, body), then the handlers — OpenAI endpoints (JSON
//! and SSE, [`chat`], [`embeddings`]), the knowledge base ([`kb`]), admin ([`admin_http`]),
//! health, metrics and the API description ([`basic`]), and the console's files.
//!
//! Request path: `handle` → `routes::find` (404 / 405 with `Allow`) → `gate::pass` (401 / 403 /
//! 429 / 400 / 413) → handler. Every response gets the request id and the hardening headers,
//! and is counted in the metrics by route pattern.

pub mod admin_http;
pub mod agent;
pub mod agents_http;
pub mod auth_http;
pub mod basic;
pub mod chat;
pub mod console;
pub mod embeddings;
pub mod error;
pub mod gate;
pub mod kb;
pub mod metrics;
pub mod models_http;
pub mod openai;
pub mod openapi;
pub mod rag;
pub mod registry;
pub mod routes;
pub mod sse;
pub mod tools;
pub mod upstream;
pub mod usage_http;
pub mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use crate::agents::AgentStore;
use crate::engine::{Embedder, Scheduler};
use crate::keys::KeyStore;
use crate::util::{read, unix_now, write};
use error::ApiError;
mod audit;
use metrics::Metrics;

pub type Body = BoxBody<Bytes, Infallible>;

/// The committed OpenAPI document; a test checks it lists exactly the route table.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// A loaded model, serving.
pub struct Served {
    /// Its served name (the directory name).
    pub name: String,
    pub scheduler: Scheduler,
    /// Unix seconds when it finished loading (`created` in `/v1/models`).
    pub loaded_at: u64,
}

/// The knowledge base: it opens once the embedding model has loaded.
pub enum KbState {
    Loading,
    Ready(Arc<crate::kb::ingest::Ingestor>),
    /// Not available, and why (no embedding model, or the store failed to open).
    Off(String),
}

/// The embedding model behind `/v1/embeddings` (and the knowledge base).
pub enum EmbedState {
    /// Not loaded and not coming: disabled in the config, or no model found. The cause.
    Off(String),
    Loading,
    Ready {
        embedder: Embedder,
        /// Unix seconds when it finished loading (`created` in `/v1/models`).
        loaded_at: u64,
    },
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Body limit of the inference routes, bytes.
    pub max_body_bytes: usize,
    /// Sequences one key may have in flight (`limits.key_queue_share` of the engine's
    /// capacity).
    pub max_inflight_per_key: usize,
    /// Tool timeout and result size of agent runs (`[agents]`).
    pub agents: agent::run::AgentLimits,
    /// Token quotas of the usage groups (`[usage.groups]`).
    pub group_quotas: std::collections::BTreeMap<String, crate::usage::Quota>,
}

/// What the daemon may reach on the web: pages through the address rules of `[fetch]`
/// (always), web search when `[web_search]` names a SearXNG.
#[derive(Clone, Default)]
pub struct WebTools {
    pub fetcher: Option<crate::web::Fetcher>,
    pub search: Option<crate::web::WebSearch>,
    /// The MCP servers of `[mcp]` (none configured: empty).
    pub mcp: crate::mcp::Mcp,
}

/// Shared state of every connection.
pub struct App {
    /// The chat models: routing by `model`, loading and unloading.
    pub models: registry::Registry,
    embed: RwLock<EmbedState>,
    kb: RwLock<KbState>,
    keys: KeyStore,
    /// The agents admins built (chat with them as model `agent:NAME`).
    pub agents: AgentStore,
    /// Web search and page fetching (`[web_search]`, `[fetch]`); replaced on reload.
    web: RwLock<WebTools>,
    pub metrics: Metrics,
    /// Admin HTTP endpoints: the status source and the tokens/s history.
    pub admin: admin_http::AdminHttp,
    /// Replaced by a config reload (SIGHUP); each request reads the current value.
    cfg: RwLock<ApiConfig>,
    /// Work each key has in flight (the gate's per-key share).
    pub inflight: Arc<gate::InFlight>,
    /// The audit log (one record per call); unset only in tests that build an App bare.
    pub audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
    /// Usage counters and quota state; unset only in tests that build an App bare.
    pub usage: std::sync::OnceLock<Arc<crate::usage::UsageStore>>,
    /// The company directory of `[auth.ldap]`, when configured; replaced on reload.
    directory: RwLock<Option<Arc<crate::auth::Directory>>>,
    /// Console sessions of directory sign-ins, in memory only (a restart signs everyone out).
    pub sessions: crate::auth::Sessions,
    /// The remote models and overflow rules (`[remote]`, `[[overflow]]`, `[residency]`).
    remotes: RwLock<Arc<upstream::Remotes>>,
    /// Sign-in attempts per account and per source address.
    pub login_attempts: crate::auth::Attempts,
}

impl App {
    pub fn new(
        models: registry::Registry,
        keys: KeyStore,
        agents: AgentStore,
        cfg: ApiConfig,
    ) -> App {
        App {
            models,
            embed: RwLock::new(EmbedState::Off("no embedding model is configured".into())),
            kb: RwLock::new(KbState::Loading),
            keys,
            agents,
            web: RwLock::default(),
            metrics: Metrics::default(),
            admin: admin_http::AdminHttp::default(),
            audit: std::sync::OnceLock::new(),
            usage: std::sync::OnceLock::new(),
            cfg: RwLock::new(cfg),
            inflight: Arc::default(),
            directory: RwLock::default(),
            sessions: crate::auth::Sessions::default(),
            login_attempts: crate::auth::Attempts::default(),
            remotes: RwLock::default(),
        }
    }

    /// The remote models (none configured: empty).
    pub fn remotes(&self) -> Arc<upstream::Remotes> {
        read(&self.remotes).clone()
    }

    /// Every chat model a request may name: the local ones, then the remote ones.
    pub fn model_names(&self) -> Vec<String> {
        let mut names = self.models.names();
        names.extend(self.remotes().all().map(|(n, _)| n.clone()));
        names
    }

    pub fn set_remotes(&self, r: upstream::Remotes) {
        *write(&self.remotes) = Arc::new(r);
    }

    /// The directory sign-ins go to, if `[auth.ldap]` is configured.
    pub fn directory(&self) -> Option<Arc<crate::auth::Directory>> {
        read(&self.directory).clone()
    }

    /// A new directory (start, config reload); `None` turns directory sign-in off.
    pub fn set_directory(&self, d: Option<Arc<crate::auth::Directory>>) {
        *write(&self.directory) = d;
    }

    /// The default model, if it serves (status, metrics, the watchdog's heartbeat).
    pub fn served(&self) -> Option<Arc<Served>> {
        self.models.default_served()
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    pub fn set_embedder(&self, s: EmbedState) {
        *write(&self.embed) = s;
    }

    /// The embedding service, once loaded (cheap to clone).
    pub fn embedder(&self) -> Option<Embedder> {
        self.embedder_loaded().map(|(e, _)| e)
    }

    fn embedder_loaded(&self) -> Option<(Embedder, u64)> {
        match &*read(&self.embed) {
            EmbedState::Ready {
                embedder,
                loaded_at,
            } => Some((embedder.clone(), *loaded_at)),
            _ => None,
        }
    }

    /// Why there is no embedding service, if there is none: `(loading, cause)`.
    pub fn embedder_problem(&self) -> Option<(bool, String)> {
        match &*read(&self.embed) {
            EmbedState::Ready { .. } => None,
            EmbedState::Loading => Some((true, "loading".into())),
            EmbedState::Off(cause) => Some((false, cause.clone())),
            EmbedState::Failed(msg) => Some((false, format!("failed to load: {msg}"))),
        }
    }

    /// `Err` with the 503 to return while embeddings are not serving.
    fn embedder_ready(&self) -> Result<Embedder, ApiError> {
        match &*read(&self.embed) {
            EmbedState::Ready { embedder, .. } => Ok(embedder.clone()),
            EmbedState::Loading => {
                let mut e = ApiError::loading();
                e.message = "the embedding model is still loading; retry shortly".into();
                Err(e)
            }
            EmbedState::Off(cause) => Err(ApiError::unavailable(format!(
                "embeddings are not available: {cause}"
            ))),
            EmbedState::Failed(msg) => Err(ApiError::unavailable(format!(
                "embeddings are not available: the embedding model failed to load: {msg}"
            ))),
        }
    }

    pub fn set_kb(&self, s: KbState) {
        *write(&self.kb) = s;
    }

    /// The knowledge base, if it is open.
    pub fn kb_ready(&self) -> Option<Arc<crate::kb::ingest::Ingestor>> {
        match &*read(&self.kb) {
            KbState::Ready(k) => Some(k.clone()),
            _ => None,
        }
    }

    /// The knowledge base, or the 503 that says why it is not there.
    pub fn kb(&self) -> Result<Arc<crate::kb::ingest::Ingestor>, ApiError> {
        match &*read(&self.kb) {
            KbState::Ready(k) => Ok(k.clone()),
            KbState::Loading => {
                let mut e = ApiError::loading();
                e.message =
                    "the knowledge base is still loading (embedding model); retry shortly".into();
                Err(e)
            }
            KbState::Off(cause) => Err(ApiError::unavailable(format!(
                "the knowledge base is not available: {cause}"
            ))),
        }
    }

    /// The API settings in effect.
    pub fn config(&self) -> ApiConfig {
        read(&self.cfg).clone()
    }

    /// The web tools now.
    pub fn web(&self) -> WebTools {
        read(&self.web).clone()
    }

    /// New web tools (start, config reload).
    pub fn set_web(&self, w: WebTools) {
        *write(&self.web) = w;
    }

    /// The limits of agent runs now.
    pub fn agent_limits(&self) -> agent::run::AgentLimits {
        read(&self.cfg).agents
    }

    /// New API settings (config reload); requests that already read their limit keep it.
    pub fn set_config(&self, cfg: ApiConfig) {
        *write(&self.cfg) = cfg;
    }
}

/// The client's `x-request-id` if it is a sane token (so ids can be followed through a
/// proxy), else a fresh random one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string)
}

pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(a) = e.allow {
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(a));
    }
    r
}

/// Entry point for every request.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let rid = request_id(&req);
    let method = req.method().clone();
    let (head, body) = req.into_parts();
    let found = routes::find(method.as_str(), head.uri.path());
    let label = match &found {
        routes::Found::Route(r, _) => r.path,
        routes::Found::WrongMethod(_, p) => p,
        routes::Found::NotFound => "other",
    };
    let mut audit = Arc::default();
    let result = match found {
        routes::Found::NotFound => Err(ApiError::not_found(format!(
            "no route for {} {}",
            method,
            head.uri.path()
        ))),
        routes::Found::WrongMethod(allow, _) => Err(ApiError::method_not_allowed(allow)),
        routes::Found::Route(route, params) => {
            let call = gate::Call::new(app.clone(), rid.clone(), peer, head, params);
            audit = call.audit.clone();
            gate::pass(route, call, body).await
        }
    };
    let mut error = None;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(request_id = %rid, error = %e.message, "request failed");
            }
            error = Some(e.message.clone());
            error_response(&e)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    console::harden(resp.headers_mut());
    let status = resp.status().as_u16();
    app.metrics.request(label, status);
    tracing::info!(
        request_id = %rid,
        method = %method,
        route = label,
        status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if app.audit.get().is_none() && app.usage.get().is_none() {
        return Ok(resp);
    }
    let event = crate::audit::Event {
        kind: if status == 401 { "auth_failure" } else { "api" }.into(),
        request_id: Some(rid),
        source: Some(peer.to_string()),
        method: Some(method.to_string()),
        route: Some(label.to_string()),
        status: Some(status),
        error,
        ..Default::default()
    };
    Ok(audit::finish_when_sent(resp, &app, event, started, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed OpenAPI document lists exactly the routes the router serves.
    #[test]
    fn openapi_matches_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")));
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                if ["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = routes::list()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn documented_parameters_match_the_parser() {
        use wire::tests::accepted_fields;
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        for (schema, parsed) in [
            (
                "ChatCompletionRequest",
                accepted_fields::<wire::chat::ChatCompletionRequest>(),
            ),
            (
                "CompletionRequest",
                accepted_fields::<wire::chat::CompletionRequest>(),
            ),
            (
                "EmbeddingRequest",
                accepted_fields::<wire::embeddings::EmbeddingRequest>(),
            ),
            ("ChatMessage", accepted_fields::<wire::chat::ChatMessage>()),
            (
                "KbSearchRequest",
                accepted_fields::<wire::kb::KbSearchRequest>(),
            ),
            (
                "ApiKeyCreate",
                accepted_fields::<wire::admin::ApiKeyCreate>(),
            ),
            (
                "LoginRequest",
                accepted_fields::<wire::auth::LoginRequest>(),
            ),
        ] {
            let props = doc["components"]["schemas"][schema]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{schema}"));
            let mut documented: Vec<&str> = props.keys().map(String::as_str).collect();
            documented.sort();
            assert_eq!(documented, parsed, "{schema}");
        }
    }
}
