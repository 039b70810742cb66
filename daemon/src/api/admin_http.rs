//! Administration over HTTPS for keys with the `admin` scope (the browser console's admin
//! page). The same operations as the admin socket, on the same sources: the status object is
//! the one `edgeseek status` prints ([`AdminBackend::status`]), keys go through [`KeyStore`],
//! engine numbers come from `Scheduler::stats()`.
//!
//! - `GET /v1/admin/status`: that status object plus the latest sampled tokens/s.
//! - `GET /v1/admin/keys`, `POST /v1/admin/keys` (`{"name", "scopes", "rpm", "tpm"}` → 201
//!   with the secret, shown this once), `DELETE /v1/admin/keys/{id}` (revoke).
//! - `GET /v1/admin/metrics/history`: tokens/s sampled every [`SAMPLE_INTERVAL`] over the last
//!   [`HISTORY_SAMPLES`] samples (15 minutes), so a chart has history as soon as it opens.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Response, StatusCode};
use tokio::sync::watch;

use super::error::ApiError;
use super::gate::Call;
use super::wire::admin::created_key_json;
use super::wire::admin::{
    AdminStatusAnswer, ApiKey, ApiKeyCreate, AppStatus, History as HistoryAnswer, Sample,
};
use super::wire::{self, List};
use super::{json_response, unix_now, App, Body};
use crate::engine::SchedulerStats;
use crate::keys::{KeyError, Scope};
use crate::util::lock;

/// How often tokens/s is sampled for the history.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes at one every 5 s.
pub const HISTORY_SAMPLES: usize = 180;

/// Live data the running server provides to `status` and `models list`.
pub trait AdminBackend: Send + Sync + 'static {
    /// Model, provider in use, queue depth, active sequences, tokens/s, uptime, TLS fingerprint
    /// and expiry: whatever the server knows, as one JSON object. Called on the async runtime,
    /// so it must not block (read atomics / snapshots, no I/O).
    fn status(&self) -> serde_json::Value;
    /// The served models (JSON array of objects, e.g. `{"id", "provider", "context"}`).
    fn models(&self) -> serde_json::Value;
    /// `reload` (also SIGHUP): re-read what the server caches, e.g. TLS certificates. API keys
    /// are reloaded by the admin plane itself before this is called.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
    /// Knowledge-base commands (`kb.ingest`, `kb.collections`, `kb.create`, `kb.delete`) with
    /// the whole request object. Called on a blocking thread: ingestion parses and embeds.
    fn kb(&self, cmd: &str, req: &serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = req;
        Err(format!("`{cmd}`: this daemon has no knowledge base"))
    }
    /// Agent commands (`agents.*`), run as [`agents_http::run`](super::agents_http::run) runs
    /// them for the HTTPS API. Called on a blocking thread (writes wait for redb).
    fn agents(&self, op: super::agents_http::AgentOp) -> Result<serde_json::Value, String> {
        let _ = op;
        Err("this daemon has no agents".into())
    }
    /// `models.load`, `models.unload`, `models.pin`, `models.unpin`: the registry's change, as
    /// `/v1/admin/models` runs it. Called on a blocking thread (a load takes seconds).
    fn model_op(&self, op: super::registry::ModelOp) -> Result<serde_json::Value, String> {
        let _ = op;
        Err("this daemon serves no models".into())
    }
    /// `usage`: the usage report for the request's `from`, `to`, `group` and `key`. Called
    /// on a blocking thread (it reads redb).
    fn usage(&self, req: &serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = req;
        Err("this daemon counts no usage".into())
    }
    /// Write an audit record of an admin-socket command (the daemon appends it to its log).
    fn audit(&self, event: crate::audit::Event) {
        let _ = event;
    }
}

#[derive(Default)]
struct History {
    samples: VecDeque<Sample>,
    /// The previous reading: when, and the engine's generated-token counter then.
    last: Option<(Instant, u64)>,
}

impl History {
    /// Turn a reading of the engine counters into a sample. The first reading is only the
    /// baseline for the next.
    fn record(&mut self, t: u64, now: Instant, stats: Option<&SchedulerStats>) {
        let generated = stats.map_or(0, |s| s.tokens_generated);
        if let Some((then, before)) = self.last {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            let tokens_per_s = if secs > 0.0 {
                // The counter starts again from zero if the engine was restarted.
                generated.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            if self.samples.len() == HISTORY_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                t,
                tokens_per_s,
                active: stats.map_or(0, |s| s.active),
                queued: stats.map_or(0, |s| s.queued),
            });
        }
        self.last = Some((now, generated));
    }
}

/// State of the admin endpoints, owned by [`App`].
#[derive(Default)]
pub struct AdminHttp {
    /// What `edgeseek status` reports; weak, since the daemon that implements it owns the app.
    backend: OnceLock<Weak<dyn AdminBackend>>,
    history: Mutex<History>,
}

impl AdminHttp {
    /// The source of the status object (set once, by `serve`).
    pub fn set_backend(&self, backend: Weak<dyn AdminBackend>) {
        let _ = self.backend.set(backend);
    }

    /// Take one reading of the engine counters (see [`run_sampler`]).
    pub fn sample(&self, stats: Option<&SchedulerStats>) {
        lock(&self.history).record(unix_now(), Instant::now(), stats);
    }

    pub fn history(&self) -> Vec<Sample> {
        let h = lock(&self.history);
        h.samples.iter().copied().collect()
    }
}

/// Sample tokens/s every [`SAMPLE_INTERVAL`] until `stop` turns true (or its sender is gone).
pub async fn run_sampler(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let stats = app.served().map(|s| s.scheduler.stats());
                app.admin.sample(stats.as_ref());
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The chat models' part of the status, as the app knows it.
pub fn app_status(app: &App) -> AppStatus {
    let stats = app.served().map(|s| s.scheduler.stats());
    AppStatus {
        model: app.models.default_name(),
        ready: stats.is_some(),
        models: app.models.list(),
        memory_used_bytes: app.models.used_bytes(),
        memory_budget_bytes: app.models.budget_bytes(),
        queue_depth: stats.map(|s| s.queued),
        active_sequences: stats.map(|s| s.active),
        tokens_generated: stats.map(|s| s.tokens_generated),
        cancellations: stats.map(|s| s.cancellations),
        version: env!("CARGO_PKG_VERSION"),
        remotes: app.remotes().status(),
    }
}

/// `GET /v1/admin/status`.
pub async fn status(c: Call) -> Result<Response<Body>, ApiError> {
    let app = &c.app;
    let status = match app.admin.backend.get().and_then(Weak::upgrade) {
        Some(b) => b.status(),
        // No daemon around the app (unit tests): what the app itself knows.
        None => wire::value(&app_status(app)),
    };
    let last = app.admin.history().last().copied();
    Ok(answer(
        StatusCode::OK,
        &AdminStatusAnswer {
            status,
            recent_tokens_per_s: last.map(|s| s.tokens_per_s),
            sample_interval_s: SAMPLE_INTERVAL.as_secs(),
        },
    ))
}

fn answer(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    json_response(status, &wire::value(body))
}

/// `GET /v1/admin/metrics/history`.
pub async fn history(c: Call) -> Result<Response<Body>, ApiError> {
    let app = &c.app;
    Ok(answer(
        StatusCode::OK,
        &HistoryAnswer {
            object: "list",
            interval_s: SAMPLE_INTERVAL.as_secs(),
            capacity: HISTORY_SAMPLES,
            data: app.admin.history(),
        },
    ))
}

/// `GET /v1/admin/keys`.
pub async fn list_keys(c: Call) -> Result<Response<Body>, ApiError> {
    let store = c.app.keys().clone();
    let list = blocking(move || store.list()).await?;
    let data: Vec<ApiKey> = list.into_iter().map(ApiKey::from).collect();
    Ok(answer(StatusCode::OK, &List::new(data)))
}

/// `POST /v1/admin/keys`.
pub async fn create_key(c: Call) -> Result<Response<Body>, ApiError> {
    let admin = c.key()?;
    let create = parse_create(&c.body)?;
    let store = c.app.keys().clone();
    let (info, secret) =
        blocking(move || store.create_with(&create.name, create.scopes, create.opts)).await?;
    tracing::info!(key_id = %info.id, by = %admin.id, "API key created over HTTPS");
    let mut r = json_response(StatusCode::CREATED, &created_key_json(info, &secret));
    // The only time the secret exists outside the client: keep it out of every cache.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `DELETE /v1/admin/keys/{id}`: revoke by id (or by name, when one active key has it).
pub async fn revoke(c: Call) -> Result<Response<Body>, ApiError> {
    let admin = c.key()?;
    let id = c.param("id")?.to_string();
    let store = c.app.keys().clone();
    let record = blocking(move || store.revoke(&id)).await?;
    tracing::info!(key_id = %record.id, by = %admin.id, "API key revoked over HTTPS");
    Ok(answer(StatusCode::OK, &ApiKey::from(record)))
}

/// A validated `POST /v1/admin/keys` body.
#[derive(Debug, PartialEq)]
struct Create {
    name: String,
    scopes: Vec<Scope>,
    opts: crate::keys::KeyOptions,
}

/// The 400 for a value of the wrong JSON type at `path`.
fn create_type_error(path: &str) -> ApiError {
    match wire::top(path) {
        "name" => ApiError::invalid_param("name", "`name` must be a string"),
        "scopes" if path == "scopes" => scopes_required(),
        "scopes" => ApiError::invalid_param("scopes", "every scope must be a string"),
        p @ ("rpm" | "tpm") => limit_error(p),
        p => ApiError::invalid_param(p, "invalid value"),
    }
}

fn scopes_required() -> ApiError {
    ApiError::invalid_param(
        "scopes",
        "`scopes` must be a non-empty array, e.g. [\"chat\"]",
    )
}

fn limit_error(param: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("`{param}` must be a whole number from 1 to 4294967295, or null for no limit"),
    )
}

fn parse_create(body: &[u8]) -> Result<Create, ApiError> {
    let r: ApiKeyCreate = wire::parse(body, create_type_error)?;
    let name = r
        .name
        .ok_or_else(|| ApiError::invalid_param("name", "`name` must be a string"))?;
    let scopes = match r.scopes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|s| {
                s.parse::<Scope>()
                    .map_err(|e| ApiError::invalid_param("scopes", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(scopes_required()),
    };
    let quota = |v: Option<u64>, param: &str| match v {
        Some(0) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be at least 1 (null for no quota)"),
        )),
        v => Ok(v),
    };
    Ok(Create {
        name,
        scopes,
        opts: crate::keys::KeyOptions {
            rpm: limit(r.rpm, "rpm")?,
            tpm: limit(r.tpm, "tpm")?,
            group: r.group,
            quota: crate::usage::Quota {
                tokens_per_day: quota(r.tokens_per_day, "tokens_per_day")?,
                tokens_per_month: quota(r.tokens_per_month, "tokens_per_month")?,
            },
        },
    })
}

/// `rpm` / `tpm`: absent or null for no limit, else a whole number from 1.
fn limit(v: Option<u64>, param: &str) -> Result<Option<u32>, ApiError> {
    v.map(|n| {
        u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| limit_error(param))
    })
    .transpose()
}

/// Run a key-store call off the reactor (redb writes wait for other writers).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::util::blocking(move || f().map_err(key_error)).await
}

fn conflict(message: String, code: &'static str, param: Option<&str>) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        message,
        kind: "invalid_request_error",
        param: param.map(str::to_string),
        code: Some(code),
        retry_after: None,
        allow: None,
    }
}

fn key_error(e: KeyError) -> ApiError {
    let msg = e.to_string();
    match e {
        KeyError::InvalidScope { .. } => ApiError::invalid_param("scopes", msg),
        KeyError::InvalidName(_) => ApiError::invalid_param("name", msg),
        KeyError::InvalidGroup(_) => ApiError::invalid_param("group", msg),
        KeyError::Invalid(_) => ApiError::bad_request(msg),
        KeyError::NameTaken(_) => conflict(msg, "name_taken", Some("name")),
        KeyError::Ambiguous { .. } => conflict(msg, "ambiguous_key", Some("id")),
        KeyError::AlreadyRevoked(_) => conflict(msg, "already_revoked", Some("id")),
        KeyError::NotFound(_) => ApiError::not_found(msg),
        KeyError::Store(s) => ApiError::store("key store: ", &s),
        KeyError::Corrupt { .. } | KeyError::Random(_) => {
            ApiError::internal(format!("key store: {msg}"))
        }
    }
}

/// `GET /v1/admin/audit`: the records the query keeps, newest `limit` (read from the files
/// on a blocking thread, as `edgeseek audit` reads them).
pub async fn audit(c: Call) -> Result<Response<Body>, ApiError> {
    let log = c
        .app
        .audit
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("this server keeps no audit log"))?;
    let mut filter = crate::audit::Filter {
        limit: Some(1000),
        ..Default::default()
    };
    for (k, v) in c.query_pairs()? {
        let k = k.as_str();
        let number = |what: &str| {
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid_param(k, format!("{k} must be {what}")))
        };
        match k {
            "since" => filter.since_ms = Some(number("Unix seconds")?.saturating_mul(1000)),
            "key" => filter.key_id = Some(v),
            "group" => filter.group = Some(v),
            "kind" => filter.kind = Some(v),
            "limit" => {
                filter.limit = Some(number("a number from 1 to 10000")?.clamp(1, 10_000) as usize)
            }
            _ => {
                return Err(ApiError::invalid_param(
                    k,
                    format!("unknown parameter `{k}` (since, key, group, kind, limit)"),
                ))
            }
        }
    }
    let dir = log.dir().to_path_buf();
    let records = tokio::task::spawn_blocking(move || crate::audit::read(&dir, &filter))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(super::json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": records}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(tokens: u64) -> SchedulerStats {
        SchedulerStats {
            tokens_generated: tokens,
            active: 2,
            ..SchedulerStats::default()
        }
    }

    #[test]
    fn history_rates_from_counter_deltas_and_keeps_fifteen_minutes() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(100, t0, Some(&stats(0)));
        assert!(h.samples.is_empty(), "the first reading is a baseline");
        h.record(105, t0 + Duration::from_secs(5), Some(&stats(50)));
        h.record(110, t0 + Duration::from_secs(10), Some(&stats(50)));
        let s: Vec<Sample> = h.samples.iter().copied().collect();
        assert_eq!(s.len(), 2);
        assert!((s[0].tokens_per_s - 10.0).abs() < 1e-9, "{s:?}");
        assert_eq!((s[0].t, s[0].active), (105, 2));
        assert_eq!(s[1].tokens_per_s, 0.0);
        // A restarted engine (counter back to 0) gives 0, not a huge number.
        h.record(115, t0 + Duration::from_secs(15), Some(&stats(3)));
        assert_eq!(h.samples.back().map(|s| s.tokens_per_s), Some(0.0));
        for i in 0..400u64 {
            h.record(
                120 + i,
                t0 + Duration::from_secs(20 + i),
                Some(&stats(3 + i)),
            );
        }
        assert_eq!(h.samples.len(), HISTORY_SAMPLES);
        assert_eq!(h.samples.back().map(|s| s.t), Some(519));
        // No model loaded: zero, not an error.
        h.record(600, t0 + Duration::from_secs(500), None);
        assert_eq!(h.samples.back().map(|s| s.active), Some(0));
    }

    #[test]
    fn create_body_validation() {
        let ok = parse_create(br#"{"name":"ops","scopes":["chat","kb:read:hr"],"rpm":60}"#)
            .expect("valid");
        assert_eq!(ok.name, "ops");
        assert_eq!(ok.scopes, vec![Scope::Chat, Scope::KbRead("hr".into())]);
        assert_eq!((ok.opts.rpm, ok.opts.tpm), (Some(60), None));
        let err = |b: &[u8]| parse_create(b).expect_err("invalid");
        let e = err(br#"{"name":"a","scopes":["chat"],"admin":true}"#);
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("admin"), Some("unknown_parameter"))
        );
        assert_eq!(
            err(br#"{"name":"a","scopes":[]}"#).param.as_deref(),
            Some("scopes")
        );
        assert_eq!(
            err(br#"{"name":"a","scopes":["root"]}"#).param.as_deref(),
            Some("scopes")
        );
        assert_eq!(
            err(br#"{"scopes":["chat"]}"#).param.as_deref(),
            Some("name")
        );
        assert_eq!(
            err(br#"{"name":"a","scopes":["chat"],"tpm":0}"#)
                .param
                .as_deref(),
            Some("tpm")
        );
        assert_eq!(
            err(br#"{"name":"a","scopes":["chat"],"rpm":1.5}"#)
                .param
                .as_deref(),
            Some("rpm")
        );
        assert_eq!(err(b"[1]").status, StatusCode::BAD_REQUEST);
        assert_eq!(err(b"{").status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn key_errors_map_to_statuses() {
        assert_eq!(
            key_error(KeyError::NameTaken("a".into())).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            key_error(KeyError::AlreadyRevoked("a".into())).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            key_error(KeyError::NotFound("a".into())).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            key_error(KeyError::InvalidName("a b".into()))
                .param
                .as_deref(),
            Some("name")
        );
        assert_eq!(
            key_error(KeyError::Random("x".into())).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
