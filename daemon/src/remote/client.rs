//! [`Upstream`]: one configured remote backend — its HTTP client, credentials, concurrency
//! limit and health — and the requests sent to it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{check_url, validate_one, RemoteConfig};
use super::health::{Failure, Health, HealthState, PROBE_TIMEOUT};
use super::sse::{error_event, Stream};
use super::{RemoteError, Scrub};

/// The largest JSON answer read (a guard against a broken upstream, not a quota: a batch of
/// embeddings in JSON is large).
const MAX_JSON_BODY: usize = 256 << 20;
/// The largest error body read: only its message is wanted.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Idle pooled connections are closed after this: below the 5 s keep-alive of uvicorn (vLLM,
/// SGLang), so a request never goes out on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// The endpoints [`Upstream::post`] forwards to.
const PATHS: [&str; 3] = ["chat/completions", "completions", "embeddings"];

/// What [`Upstream::post`] got back. A JSON answer was read whole, so its request no longer
/// counts against `max_concurrency`; a stream holds its place until it is dropped.
#[derive(Debug)]
pub enum Reply {
    Json(Value),
    Stream(Stream),
}

/// A request failure and what it says about the upstream's health (`None`: nothing; the
/// upstream answered, e.g. a 4xx about the request).
pub(crate) type Fail = (RemoteError, Option<Failure>);

/// One `[remote.NAME]` backend. Send + Sync; held in an `Arc` by the API layer and the
/// health loop ([`Upstream::watch`]).
pub struct Upstream {
    name: String,
    model: String,
    cfg: RemoteConfig,
    /// The configured URL without a trailing `/`; request paths are appended to it.
    base: String,
    auth: Option<HeaderValue>,
    scrub: Scrub,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    health: Arc<HealthState>,
    tokenizer: Option<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for Upstream {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Reads the key file (permission check; empty file refused), the CA file and the
    /// tokenizer, and builds the HTTP client: HTTP/1.1 (what every OpenAI-compatible server
    /// speaks; SSE needs nothing more), ring TLS, the connect timeout, no redirects (a POST
    /// redirected elsewhere would carry the key there), no proxy from the environment.
    /// Contacts nothing.
    pub fn new(name: &str, cfg: RemoteConfig) -> Result<Upstream, RemoteError> {
        validate_one(name, &cfg).map_err(|e| RemoteError::Config(e.to_string()))?;
        let url = check_url(&cfg.url).map_err(RemoteError::Config)?;
        let token = match &cfg.api_key_file {
            Some(p) => Some(read_key(name, p)?),
            None => None,
        };
        let auth = match &token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    RemoteError::Config(format!(
                        "remote.{name}.api_key_file: the token holds characters a header \
                         cannot carry"
                    ))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut tls = match &cfg.ca_file {
            Some(ca) => tls_with_roots(name, ca)?,
            None => crate::web::tls::client_config().map_err(RemoteError::Config)?,
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_s))
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(concat!("edgeseek/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::Config(format!("remote.{name}: HTTP client setup: {e}")))?;
        let tokenizer = match &cfg.tokenizer {
            Some(p) => Some(tokenizers::Tokenizer::from_file(p).map_err(|e| {
                RemoteError::Config(format!(
                    "remote.{name}.tokenizer {}: cannot be loaded: {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        let host = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (h, _) => h.unwrap_or("").to_string(),
        };
        Ok(Upstream {
            name: name.to_string(),
            model: cfg.model.clone().unwrap_or_else(|| name.to_string()),
            base: cfg.url.trim_end_matches('/').to_string(),
            auth,
            scrub: Scrub::new(&url, token.as_deref()),
            http,
            permits: Arc::new(Semaphore::new(cfg.max_concurrency)),
            health: Arc::new(HealthState::new(name, &host)),
            tokenizer,
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model name the upstream serves: `model`, else the entry's name.
    pub fn upstream_model(&self) -> &str {
        &self.model
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// A snapshot of the upstream's health.
    pub fn health(&self) -> Health {
        self.health.snapshot()
    }

    /// Requests in flight (streams count until they are dropped).
    pub fn in_flight(&self) -> usize {
        self.cfg
            .max_concurrency
            .saturating_sub(self.permits.available_permits())
    }

    /// Tokens of `text` with the configured tokenizer, else `None` (also when it cannot
    /// encode the text). CPU work: for long texts call it off the reactor.
    pub fn count_tokens(&self, text: &str) -> Option<usize> {
        let t = self.tokenizer.as_ref()?;
        t.encode(text, false).ok().map(|e| e.len())
    }

    pub(crate) fn health_state(&self) -> &HealthState {
        &self.health
    }

    pub(crate) fn scrub(&self) -> &Scrub {
        &self.scrub
    }

    /// POST `{url}/{path}` (`chat/completions`, `completions` or `embeddings`) with `body` as
    /// JSON, its `model` set to [`Upstream::upstream_model`] (clients name the backend by its
    /// edgeseek name). If `body["stream"]` is true the reply is [`Reply::Stream`], else
    /// [`Reply::Json`].
    ///
    /// Refuses at once with `Unavailable` while the upstream is marked down, and with `Busy`
    /// past `max_concurrency`. A connect error marks the upstream down; a 5xx, timeout or
    /// broken connection counts towards it; a 2xx marks it up.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply, RemoteError> {
        if !PATHS.contains(&path) {
            return Err(RemoteError::Config(format!(
                "remote backends serve {}, not `{path}`",
                PATHS.join(", ")
            )));
        }
        if let Some(why) = self.health.down() {
            return Err(RemoteError::Unavailable(why));
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| RemoteError::Busy)?;
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let mut body = body.clone();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("model".into(), Value::String(self.model.clone()));
        }
        let payload = serde_json::to_vec(&body).map_err(|e| RemoteError::Garbage(e.to_string()))?;
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let req = self
            .http
            .post(format!("{}/{path}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .body(payload);
        match self.exchange(req, stream, permit).await {
            Ok(reply) => Ok(reply),
            Err((e, kind)) => {
                if let Some(k) = kind {
                    self.health.fail(k, &e.to_string(), false);
                }
                Err(e)
            }
        }
    }

    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        stream: bool,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, Fail> {
        let first_byte = Duration::from_secs(self.cfg.first_byte_timeout_s);
        let resp = self.send(req, first_byte).await?;
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        if stream && !is_json {
            self.health.ok(false);
            return Ok(Reply::Stream(Stream::new(
                resp,
                permit,
                self.idle(),
                self.health.clone(),
                self.scrub.clone(),
            )));
        }
        let bytes = self.read_body(resp, MAX_JSON_BODY).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                RemoteError::Garbage(format!("the answer is not JSON ({e})")),
                None,
            )
        })?;
        if let Some(e) = error_event(&v, &self.scrub) {
            return Err((e, None));
        }
        if stream {
            // Asked for a stream and got one JSON object that is not an error.
            return Err((
                RemoteError::Garbage("asked for an event stream, got one JSON object".into()),
                None,
            ));
        }
        self.health.ok(false);
        drop(permit);
        Ok(Reply::Json(v))
    }

    /// Send `req` with the key, waiting at most `first_byte` for the response headers; a
    /// non-2xx answer becomes `Status` with the upstream's message.
    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        first_byte: Duration,
    ) -> Result<reqwest::Response, Fail> {
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let resp = match tokio::time::timeout(first_byte, req.send()).await {
            Err(_) => return Err((RemoteError::Timeout("first byte"), Some(Failure::Soft))),
            Ok(Err(e)) => return Err(self.transport_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let reason = status.canonical_reason().unwrap_or("error").to_string();
        let code = status.as_u16();
        // The message is wanted even from a body cut short; without one the reason will do.
        let body = self
            .read_body(resp, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let message = self.scrub.text(&upstream_message(&body, &reason));
        let kind = (500..=599).contains(&code).then_some(Failure::Soft);
        Err((
            RemoteError::Status {
                status: code,
                message,
            },
            kind,
        ))
    }

    /// The whole body, each piece within the idle timeout, at most `limit` bytes.
    async fn read_body(&self, mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.idle(), resp.chunk()).await {
                Err(_) => return Err((RemoteError::Timeout("idle"), Some(Failure::Soft))),
                Ok(Err(_)) => return Err((RemoteError::Truncated, Some(Failure::Soft))),
                Ok(Ok(None)) => return Ok(out),
                Ok(Ok(Some(piece))) => {
                    if out.len() + piece.len() > limit {
                        return Err((
                            RemoteError::Garbage(format!(
                                "the answer is larger than {} MiB",
                                limit >> 20
                            )),
                            None,
                        ));
                    }
                    out.extend_from_slice(&piece);
                }
            }
        }
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_s)
    }

    /// A failed send: a connect failure (the upstream is not there: down at once), or a
    /// connection that broke before the answer (counts towards down).
    fn transport_error(&self, e: &reqwest::Error) -> Fail {
        if e.is_connect() {
            if e.is_timeout() {
                return (RemoteError::Timeout("connect"), Some(Failure::Hard));
            }
            let why = self.scrub.text(&transport_message(e));
            return (RemoteError::Connect(why), Some(Failure::Hard));
        }
        if e.is_timeout() {
            return (RemoteError::Timeout("first byte"), Some(Failure::Soft));
        }
        let why = self.scrub.text(&transport_message(e));
        (RemoteError::Connect(why), Some(Failure::Soft))
    }

    /// GET `{url}/models` → the ids of `data[]`. Used by the health loop and by
    /// `edgeseek doctor`; it records nothing (see [`Upstream::check`]) and takes no place
    /// under `max_concurrency`, so a busy upstream can still be probed.
    pub async fn probe(&self) -> Result<Vec<String>, RemoteError> {
        self.probe_classified().await.map_err(|(e, _)| e)
    }

    pub(crate) async fn probe_classified(&self) -> Result<Vec<String>, Fail> {
        let limit = PROBE_TIMEOUT.min(Duration::from_secs(self.cfg.first_byte_timeout_s));
        let req = self
            .http
            .get(format!("{}/models", self.base))
            .header(ACCEPT, "application/json");
        let resp = self.send(req, limit).await?;
        let bytes = self.read_body(resp, 16 << 20).await?;
        let garbage = |why: String| (RemoteError::Garbage(why), None);
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| garbage(format!("the model list is not JSON ({e})")))?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| garbage("the model list has no `data` array".into()))?;
        Ok(data
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }
}

/// The bearer token from `path`: a regular file, readable by its owner only (a key readable
/// by every local user is everyone's key), one non-empty line.
fn read_key(name: &str, path: &Path) -> Result<String, RemoteError> {
    let bad = |m: String| {
        RemoteError::Config(format!(
            "remote.{name}.api_key_file {}: {m}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "may be read by group or others (mode {mode:04o}); `chmod 600` it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("is empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must hold the token alone, on one line".into()));
    }
    Ok(token.to_string())
}

/// rustls (ring) trusting only the certificates of `ca`: the company's own CA, without
/// trusting it for the rest of the system (or the system's roots for this upstream).
fn tls_with_roots(name: &str, ca: &Path) -> Result<rustls::ClientConfig, RemoteError> {
    crate::web::tls::client_config_with_roots(ca)
        .map_err(|m| RemoteError::Config(format!("remote.{name}.ca_file {}: {m}", ca.display())))
}

/// The useful part of a transport error: the innermost cause (reqwest's outer layers say only
/// "error sending request"), the common ones in plain words. Not yet scrubbed.
fn transport_message(e: &reqwest::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = String::from("connection failed");
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(p) = crate::util::plain_io_error(io) {
                return p.to_string();
            }
        }
        last = c.to_string();
        cur = c.source();
    }
    last
}

/// The message of an error answer: the OpenAI shape `error.message`, FastAPI's `detail`
/// (a string, or a list of validation errors), a bare `message` or `error` string, else the
/// body's text; an HTML error page (a proxy's) or an empty body gives the status's reason.
fn upstream_message(body: &[u8], reason: &str) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let s = |v: &Value| v.as_str().map(str::to_string);
        if let Some(m) = v.pointer("/error/message").and_then(s) {
            return m;
        }
        if let Some(m) = v.get("error").and_then(s) {
            return m;
        }
        match v.get("detail") {
            Some(Value::String(d)) => return d.clone(),
            Some(Value::Array(items)) => {
                let msgs: Vec<String> = items
                    .iter()
                    .map(|i| i.get("msg").and_then(s).unwrap_or_else(|| i.to_string()))
                    .collect();
                if !msgs.is_empty() {
                    return msgs.join("; ");
                }
            }
            _ => {}
        }
        if let Some(m) = v.get("message").and_then(s) {
            return m;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        reason.to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests;
