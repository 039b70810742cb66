//! The HTTP API: routing, authentication and scopes, the OpenAI endpoints (JSON and SSE),
//! health, metrics and the OpenAPI document.
//!
//! Request path: `handle` → route table → auth (bearer key, scope) → body (content type,
//! size limit) → `openai::parse` → model checks → `Scheduler::submit` (on a blocking thread:
//! it renders the template and tokenizes) → events bridged from the scheduler's std channel
//! into tokio by one blocking thread per choice → JSON or SSE.
//!
//! Cancellation: the response side owns the receiving end of the bridge. When a streaming
//! client disconnects, hyper drops the body, the pump notices, drops its receiver, and each
//! bridge thread then drops its `RequestHandle`, which makes the scheduler free the slot
//! within one step. A non-streaming client that disconnects drops the handler future, with
//! the same effect.

pub mod admin_http;
pub mod console;
pub mod embeddings;
pub mod error;
pub mod kb;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod rag;
pub mod sse;
pub mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine::{Embedder, Event, GenerateOutput, RequestHandle, Scheduler, TokenLogprob};
use crate::keys::{KeyInfo, KeyStore, Scope};
use error::ApiError;
use metrics::Metrics;
use openai::{Chunks, Delta, Kind, Parsed};

pub type Body = BoxBody<Bytes, Infallible>;

/// The committed OpenAPI document; a test checks it lists exactly [`ROUTES`].
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route the server answers: `(method, path)`. `{…}` segments are path parameters.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/console/{asset}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/admin/status"),
    ("GET", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys"),
    ("DELETE", "/v1/admin/keys/{id}"),
    ("GET", "/v1/admin/metrics/history"),
    ("GET", "/v1/kb/collections"),
    ("POST", "/v1/kb/collections"),
    ("GET", "/v1/kb/collections/{collection}"),
    ("DELETE", "/v1/kb/collections/{collection}"),
    ("GET", "/v1/kb/collections/{collection}/documents"),
    ("POST", "/v1/kb/collections/{collection}/documents"),
    (
        "GET",
        "/v1/kb/collections/{collection}/documents/{document}",
    ),
    (
        "DELETE",
        "/v1/kb/collections/{collection}/documents/{document}",
    ),
    ("POST", "/v1/kb/search"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Console,
    ConsoleAsset,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Models,
    Model,
    Chat,
    Completions,
    Embeddings,
    AdminStatus,
    AdminKeys,
    AdminKey,
    AdminHistory,
    KbCollections,
    KbCollection,
    KbDocuments,
    KbDocument,
    KbSearch,
}

impl Route {
    /// The route for `path`, and its label (the table path, so metric labels stay bounded).
    fn find(path: &str) -> Option<(Route, &'static str)> {
        Some(match path {
            "/" => (Route::Console, "/"),
            "/healthz" => (Route::Healthz, "/healthz"),
            "/readyz" => (Route::Readyz, "/readyz"),
            "/metrics" => (Route::Metrics, "/metrics"),
            "/openapi.json" => (Route::OpenApi, "/openapi.json"),
            "/v1/models" => (Route::Models, "/v1/models"),
            "/v1/chat/completions" => (Route::Chat, "/v1/chat/completions"),
            "/v1/completions" => (Route::Completions, "/v1/completions"),
            "/v1/embeddings" => (Route::Embeddings, "/v1/embeddings"),
            "/v1/admin/status" => (Route::AdminStatus, "/v1/admin/status"),
            "/v1/admin/keys" => (Route::AdminKeys, "/v1/admin/keys"),
            "/v1/admin/metrics/history" => (Route::AdminHistory, "/v1/admin/metrics/history"),
            p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
                (Route::Model, "/v1/models/{model}")
            }
            p if p.starts_with("/v1/admin/keys/") && p.len() > "/v1/admin/keys/".len() => {
                (Route::AdminKey, "/v1/admin/keys/{id}")
            }
            p if p.starts_with("/console/") && p.len() > "/console/".len() => {
                (Route::ConsoleAsset, "/console/{asset}")
            }
            p if p.starts_with("/v1/kb/") => {
                let kp = kb::KbPath::parse(p)?;
                let route = match kp {
                    kb::KbPath::Collections => Route::KbCollections,
                    kb::KbPath::Collection(_) => Route::KbCollection,
                    kb::KbPath::Documents(_) => Route::KbDocuments,
                    kb::KbPath::Document(..) => Route::KbDocument,
                    kb::KbPath::Search => Route::KbSearch,
                };
                (route, kp.label())
            }
            _ => return None,
        })
    }

    /// The methods the route answers, as the `Allow` header lists them.
    fn methods(self) -> &'static str {
        match self {
            Route::Chat | Route::Completions | Route::Embeddings => "POST",
            Route::AdminKeys => "GET, POST",
            Route::AdminKey => "DELETE",
            Route::KbCollections | Route::KbDocuments => "GET, POST",
            Route::KbCollection | Route::KbDocument => "GET, DELETE",
            Route::KbSearch => "POST",
            _ => "GET",
        }
    }

    fn allows(self, method: &str) -> bool {
        self.methods().split(", ").any(|m| m == method)
    }
}

/// A loaded model, serving.
pub struct Served {
    pub scheduler: Scheduler,
    /// Unix seconds when it finished loading (`created` in `/v1/models`).
    pub loaded_at: u64,
}

pub enum ModelState {
    Loading,
    Ready(Arc<Served>),
    Failed(String),
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
}

/// Shared state of every connection.
pub struct App {
    /// The served name of the model (its directory name), known before it is loaded.
    pub model_name: String,
    pub model_dir: PathBuf,
    state: RwLock<ModelState>,
    embed: RwLock<EmbedState>,
    kb: RwLock<KbState>,
    keys: KeyStore,
    pub metrics: Metrics,
    /// Admin HTTP endpoints: the status source and the tokens/s history.
    pub admin: admin_http::AdminHttp,
    /// Replaced by a config reload (SIGHUP); each request reads the current value.
    cfg: RwLock<ApiConfig>,
}

impl App {
    pub fn new(model_name: String, model_dir: PathBuf, keys: KeyStore, cfg: ApiConfig) -> App {
        App {
            model_name,
            model_dir,
            state: RwLock::new(ModelState::Loading),
            embed: RwLock::new(EmbedState::Off("no embedding model is configured".into())),
            kb: RwLock::new(KbState::Loading),
            keys,
            metrics: Metrics::default(),
            admin: admin_http::AdminHttp::default(),
            cfg: RwLock::new(cfg),
        }
    }

    pub fn set_state(&self, s: ModelState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The serving model, if loaded.
    pub fn served(&self) -> Option<Arc<Served>> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            ModelState::Ready(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Why the model failed to load, if it did.
    pub fn failure(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            ModelState::Failed(msg) => Some(msg.clone()),
            _ => None,
        }
    }

    /// `Err` with the 503 to return while the model is not serving.
    fn ready(&self) -> Result<Arc<Served>, ApiError> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            ModelState::Ready(s) => Ok(s.clone()),
            ModelState::Loading => Err(ApiError::loading()),
            ModelState::Failed(msg) => Err(ApiError::unavailable(format!(
                "the model failed to load: {msg}"
            ))),
        }
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    pub fn set_embedder(&self, s: EmbedState) {
        *self.embed.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The embedding service, once loaded (cheap to clone).
    pub fn embedder(&self) -> Option<Embedder> {
        self.embedder_loaded().map(|(e, _)| e)
    }

    fn embedder_loaded(&self) -> Option<(Embedder, u64)> {
        match &*self.embed.read().unwrap_or_else(|p| p.into_inner()) {
            EmbedState::Ready {
                embedder,
                loaded_at,
            } => Some((embedder.clone(), *loaded_at)),
            _ => None,
        }
    }

    /// Why there is no embedding service, if there is none: `(loading, cause)`.
    pub fn embedder_problem(&self) -> Option<(bool, String)> {
        match &*self.embed.read().unwrap_or_else(|p| p.into_inner()) {
            EmbedState::Ready { .. } => None,
            EmbedState::Loading => Some((true, "loading".into())),
            EmbedState::Off(cause) => Some((false, cause.clone())),
            EmbedState::Failed(msg) => Some((false, format!("failed to load: {msg}"))),
        }
    }

    /// `Err` with the 503 to return while embeddings are not serving.
    fn embedder_ready(&self) -> Result<Embedder, ApiError> {
        match &*self.embed.read().unwrap_or_else(|p| p.into_inner()) {
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
        *self.kb.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The knowledge base, if it is open.
    pub fn kb_ready(&self) -> Option<Arc<crate::kb::ingest::Ingestor>> {
        match &*self.kb.read().unwrap_or_else(|p| p.into_inner()) {
            KbState::Ready(k) => Some(k.clone()),
            _ => None,
        }
    }

    /// The knowledge base, or the 503 that says why it is not there.
    pub fn kb(&self) -> Result<Arc<crate::kb::ingest::Ingestor>, ApiError> {
        match &*self.kb.read().unwrap_or_else(|p| p.into_inner()) {
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
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New API settings (config reload); requests that already read their limit keep it.
    pub fn set_config(&self, cfg: ApiConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let found = Route::find(req.uri().path());
    let label = found.map_or("other", |(_, l)| l);
    let result = match found {
        None => Err(ApiError::not_found(format!(
            "no route for {} {}",
            method,
            req.uri().path()
        ))),
        Some((route, _)) if !route.allows(method.as_str()) => {
            Err(ApiError::method_not_allowed(route.methods()))
        }
        Some((route, _)) => dispatch(&app, route, req, peer, &rid).await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(request_id = %rid, error = %e.message, "request failed");
            }
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
    Ok(resp)
}

async fn dispatch(
    app: &Arc<App>,
    route: Route,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: &str,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Console => Ok(console::index(&req)),
        Route::ConsoleAsset => console::asset(&req),
        Route::Healthz => Ok(json_response(
            StatusCode::OK,
            &wire::value(&wire::models::Health { status: "ok" }),
        )),
        Route::Readyz => {
            app.ready()?;
            Ok(json_response(
                StatusCode::OK,
                &wire::value(&wire::models::Ready {
                    status: "ready",
                    model: app.model_name.clone(),
                }),
            ))
        }
        Route::OpenApi => Ok(full(StatusCode::OK, "application/json", OPENAPI)),
        Route::Metrics => {
            // Prometheus on the appliance itself scrapes over loopback without a key; from
            // the network the numbers (load, traffic) are for admins only.
            if !peer.ip().is_loopback() {
                authorize(app, &req, &Scope::Admin, "admin")?;
            }
            let served = app.served();
            let stats = served.as_ref().map(|s| s.scheduler.stats());
            Ok(full(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                app.metrics.render(stats.as_ref(), served.is_some()),
            ))
        }
        Route::Models => {
            authenticate(app, &req)?;
            let mut data: Vec<wire::models::Model> = app
                .served()
                .map(|s| model_json(&app.model_name, s.loaded_at))
                .into_iter()
                .collect();
            if let Some((e, loaded_at)) = app.embedder_loaded() {
                data.push(model_json(e.name(), loaded_at));
            }
            Ok(json_response(
                StatusCode::OK,
                &wire::value(&wire::List::new(data)),
            ))
        }
        Route::Model => {
            authenticate(app, &req)?;
            let id = req.uri().path().trim_start_matches("/v1/models/");
            match (app.served(), app.embedder_loaded()) {
                (Some(s), _) if id == app.model_name => Ok(json_response(
                    StatusCode::OK,
                    &wire::value(&model_json(&app.model_name, s.loaded_at)),
                )),
                (_, Some((e, loaded_at))) if id == e.name() => Ok(json_response(
                    StatusCode::OK,
                    &wire::value(&model_json(e.name(), loaded_at)),
                )),
                _ => Err(ApiError::model_not_found(id)),
            }
        }
        Route::Chat => inference(app, Kind::Chat, req, rid).await,
        Route::Completions => inference(app, Kind::Completion, req, rid).await,
        Route::Embeddings => embeddings::create(app, req, rid).await,
        Route::AdminStatus => admin_http::status(app, &req),
        Route::AdminKeys => admin_http::keys(app, req).await,
        Route::AdminKey => admin_http::revoke(app, &req).await,
        Route::AdminHistory => admin_http::history(app, &req),
        Route::KbCollections
        | Route::KbCollection
        | Route::KbDocuments
        | Route::KbDocument
        | Route::KbSearch => match kb::KbPath::parse(req.uri().path()) {
            Some(path) => kb::handle(app, path, req).await,
            None => Err(ApiError::not_found("no such knowledge-base route")),
        },
    }
}

fn model_json(id: &str, loaded_at: u64) -> wire::models::Model {
    wire::models::Model::new(id, loaded_at)
}

/// The key of the request's bearer token, or 401.
fn authenticate(app: &App, req: &Request<Incoming>) -> Result<KeyInfo, ApiError> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            )
        })?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    match app.keys.authenticate(secret) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::unauthorized(
            "Incorrect API key provided (unknown or revoked).",
        )),
        Err(e) => Err(ApiError::internal(format!("key store: {e}"))),
    }
}

/// The key, if it carries `scope` (401 / 403 otherwise).
fn authorize(
    app: &App,
    req: &Request<Incoming>,
    scope: &Scope,
    scope_name: &str,
) -> Result<KeyInfo, ApiError> {
    let key = authenticate(app, req)?;
    if !key.allows(scope) {
        return Err(ApiError::forbidden(scope_name));
    }
    Ok(key)
}

/// The body of an inference request: JSON content type and at most `limit` bytes.
async fn read_json_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::bad_request(format!(
            "Content-Type must be application/json (got `{ct}`)"
        )));
    }
    read_body(req, limit).await
}

/// The body, whatever its type, at most `limit` bytes (413 beyond).
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(req.into_body(), limit.saturating_mul(2)).await;
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Read and discard up to `cap` bytes so a client that sent a moderately oversized body
/// gets to read the 413 instead of a reset connection; beyond `cap` the connection closes.
async fn drain(mut body: Incoming, cap: usize) {
    let mut seen = 0usize;
    while seen <= cap {
        match body.frame().await {
            Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

async fn inference(
    app: &Arc<App>,
    kind: Kind,
    req: Request<Incoming>,
    rid: &str,
) -> Result<Response<Body>, ApiError> {
    let key = authorize(app, &req, &Scope::Chat, "chat")?;
    let body = read_json_body(req, app.config().max_body_bytes).await?;
    let mut parsed = openai::parse(kind, &body)?;
    if parsed.model != app.model_name {
        return Err(ApiError::model_not_found(&parsed.model));
    }
    // Scopes of the knowledge collections first: a key must not learn anything about a
    // collection it may not read, not even whether the model is loaded.
    if let Some(k) = &parsed.knowledge {
        for c in &k.collections {
            let scope = Scope::KbRead(c.clone());
            if !key.allows(&scope) {
                return Err(ApiError::forbidden(&scope.to_string()));
            }
        }
    }
    let served = app.ready()?;
    let citations = match parsed.knowledge.clone() {
        Some(k) => Some(retrieve(app, k, &mut parsed).await?),
        None => None,
    };
    // Requests are admitted on the request budget and any token debt; the tokens are
    // charged when known (after generation), see `KeyStore::charge_tokens`.
    app.keys
        .check_rate(&key, 0)
        .map_err(|r| ApiError::rate_limited(r.retry_after_s))?;
    tracing::debug!(request_id = rid, key_id = %key.id, n = parsed.n, stream = parsed.stream, "inference");

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
        bridge(h, i, tx.clone());
    }
    drop(tx);
    let ctx = Ctx {
        app: app.clone(),
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

/// Forward one request's events from the scheduler's std channel into tokio, on a blocking
/// thread. It ends at the last event, or when the receiver is gone (client disconnected):
/// dropping the handle then cancels the request in the engine.
fn bridge(handle: RequestHandle, index: usize, tx: mpsc::Sender<(usize, Event)>) {
    tokio::task::spawn_blocking(move || loop {
        match handle.events().recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => {
                let last = matches!(ev, Event::Done(_) | Event::Error(_));
                if tx.blocking_send((index, ev)).is_err() || last {
                    return;
                }
            }
            // A queued request produces no events; notice a gone client anyway.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if tx.is_closed() {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = tx.blocking_send((
                    index,
                    Event::Error("the engine stopped before the request finished".into()),
                ));
                return;
            }
        }
    });
}

/// One inference response in flight.
struct Ctx {
    app: Arc<App>,
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
        self.app
            .keys
            .charge_tokens(&self.key, (self.prompt_tokens + completion) as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_table() {
        for (method, path) in ROUTES {
            let concrete = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x-1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let (route, label) = Route::find(&concrete).expect(path);
            assert_eq!(label, *path);
            assert!(route.allows(method), "{method} {path}");
        }
        // Every method a route allows is in the table (so the OpenAPI check covers it).
        for (_, path) in ROUTES {
            let (route, _) = Route::find(&path.replace(['{', '}'], "")).expect(path);
            for m in route.methods().split(", ") {
                assert!(
                    ROUTES.contains(&(m, path)),
                    "{m} {path} missing from ROUTES"
                );
            }
        }
        assert!(Route::find("/v1/models/").is_none());
        assert!(Route::find("/v1/embeddings/x").is_none());
        assert!(Route::find("/v1/admin/keys/").is_none());
        assert!(Route::find("/console/").is_none());
        assert!(Route::find("/index.html").is_none());
    }

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
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
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
