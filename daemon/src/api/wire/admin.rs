//! Administration: `/v1/admin/…` over HTTPS and the replies of the admin socket
//! (`edgeseek status`, `models`, `keys`), which share these shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::keys::KeyRecord;

/// The daemon's TLS identity.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsStatus {
    /// `local-ca` (made on first boot) or `provided`.
    pub source: &'static str,
    pub fingerprint_sha256: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    /// The local CA certificate to trust, if the daemon made one.
    pub ca: Option<String>,
    pub cert: String,
}

/// The embedding model: `ready` with its numbers, or why not.
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct EmbeddingsStatus {
    pub ready: bool,
    pub model: Option<String>,
    pub model_id: Option<String>,
    pub provider: Option<&'static str>,
    /// Texts embedded since start.
    pub inputs: Option<u64>,
    /// Not ready: still loading (true) or failed (false), see `cause`.
    pub loading: Option<bool>,
    pub cause: Option<String>,
}

/// What `edgeseek status` prints.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminStatus {
    #[serde(flatten)]
    pub app: AppStatus,
    pub model_dir: String,
    /// Why the model failed to load (null while loading or once ready).
    pub model_error: Option<String>,
    /// cpu, cuda or tensorrt; null while loading
    pub provider: Option<&'static str>,
    /// Average since start
    pub tokens_per_s: Option<f64>,
    pub uptime_s: f64,
    pub listen: String,
    pub embeddings: EmbeddingsStatus,
    pub tls: TlsStatus,
}

/// What the API app itself knows of the chat model (all the status there is when no daemon
/// runs around the app, as in tests). The counters are null while the model loads.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppStatus {
    /// The default model (the counters below are its own).
    pub model: String,
    pub ready: bool,
    /// Every chat model: state, provider, context, memory charged, running and queued.
    pub models: Vec<crate::api::registry::ModelInfo>,
    /// What the loaded chat models are charged together, bytes.
    pub memory_used_bytes: u64,
    /// `engine.memory_budget_mb` in bytes (0: no limit).
    pub memory_budget_bytes: u64,
    pub queue_depth: Option<usize>,
    pub active_sequences: Option<usize>,
    pub tokens_generated: Option<u64>,
    pub cancellations: Option<u64>,
    pub version: &'static str,
    /// The remote models (`[remote.NAME]`) and their upstreams' health.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteStatus>,
}

/// A remote model as admins see it (never its address' credentials or its key).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RemoteStatus {
    /// Its name (`[remote.NAME]`), what requests use as `model`.
    pub id: String,
    /// The model name the upstream serves.
    pub upstream_model: String,
    /// Whether the upstream answers its health checks (a down one gets no requests).
    pub up: bool,
    /// Unix seconds of the last change between up and down.
    pub since: u64,
    /// Unix seconds of the last health check.
    pub checked: Option<u64>,
    /// Why it is down.
    pub error: Option<String>,
    /// Requests in flight to it now.
    pub in_flight: usize,
    /// The local models that overflow to it.
    pub overflow_from: Vec<String>,
}

/// `GET /v1/admin/status`: the status object plus the latest sample of the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminStatusAnswer {
    #[serde(flatten)]
    #[schema(value_type = AdminStatus)]
    pub status: Value,
    /// Over the latest sample interval
    pub recent_tokens_per_s: Option<f64>,
    pub sample_interval_s: u64,
}

/// One point of the tokens/s history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Sample {
    /// Unix seconds at the end of the interval.
    pub t: u64,
    /// Tokens the engine generated per second over the interval (cancelled requests included).
    pub tokens_per_s: f64,
    pub active: usize,
    pub queued: usize,
}

/// `GET /v1/admin/metrics/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Always `list`.
    pub object: &'static str,
    pub interval_s: u64,
    pub capacity: usize,
    pub data: Vec<Sample>,
}

/// An API key as listed (never its secret or hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    pub last_used: Option<u64>,
    pub revoked: bool,
    pub revoked_at: Option<u64>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Usage group (department).
    pub group: Option<String>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
}

impl From<KeyRecord> for ApiKey {
    fn from(r: KeyRecord) -> Self {
        ApiKey {
            scopes: r.scopes.iter().map(ToString::to_string).collect(),
            id: r.id,
            name: r.name,
            rpm: r.rpm,
            tpm: r.tpm,
            created: r.created,
            last_used: r.last_used,
            revoked: r.revoked,
            revoked_at: r.revoked_at,
            group: r.group,
            tokens_per_day: r.tokens_per_day,
            tokens_per_month: r.tokens_per_month,
        }
    }
}

/// `POST /v1/admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`; unique among active keys
    #[schema(required = true)]
    pub name: Option<String>,
    /// chat, embeddings, kb:read:C, kb:write:C (C may be *), admin
    #[schema(required = true, min_items = 1)]
    pub scopes: Option<Vec<String>>,
    /// Requests per minute; null for no limit.
    #[schema(minimum = 1)]
    pub rpm: Option<u64>,
    /// Tokens per minute; null for no limit.
    #[schema(minimum = 1)]
    pub tpm: Option<u64>,
    /// Usage group (department): 1-64 lowercase letters, digits, `-`, `_`
    pub group: Option<String>,
    /// Tokens (in + out) per UTC day; null for no quota.
    #[schema(minimum = 1)]
    pub tokens_per_day: Option<u64>,
    /// Tokens (in + out) per UTC month; null for no quota.
    #[schema(minimum = 1)]
    pub tokens_per_month: Option<u64>,
}

/// A new key with its secret (the only time the secret is shown).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    /// `es-` + 64 hex characters; shown only here
    pub secret: String,
    #[serde(flatten)]
    pub key: ApiKey,
}

/// One model of the admin socket's `models.list`.
#[derive(Debug, Serialize)]
pub struct AdminModel {
    pub id: String,
    /// `chat` or `embedding`.
    pub kind: &'static str,
    pub dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
    pub ready: bool,
    /// Chat models: `ready`, `loading`, `unloaded`, `unloading` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// Chat models: charged against the memory budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The admin socket's `reload`.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub reloaded: bool,
}

/// A request line of the admin socket, as `edgeseek` sends it (`v` is added by the sender).
#[derive(Debug, Serialize)]
#[serde(tag = "cmd")]
pub enum AdminRequest<'a> {
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "models.list")]
    ModelsList,
    #[serde(rename = "models.load")]
    ModelsLoad { name: &'a str, pin: bool },
    #[serde(rename = "models.unload")]
    ModelsUnload { name: &'a str },
    #[serde(rename = "models.pin")]
    ModelsPin { name: &'a str },
    #[serde(rename = "models.unpin")]
    ModelsUnpin { name: &'a str },
    #[serde(rename = "reload")]
    Reload,
    #[serde(rename = "keys.list")]
    KeysList,
    #[serde(rename = "keys.create")]
    KeysCreate {
        name: &'a str,
        scopes: Vec<String>,
        rpm: Option<u32>,
        tpm: Option<u32>,
        group: Option<&'a str>,
        tokens_per_day: Option<u64>,
        tokens_per_month: Option<u64>,
    },
    #[serde(rename = "keys.revoke")]
    KeysRevoke { key: &'a str },
    #[serde(rename = "kb.collections")]
    KbCollections,
    #[serde(rename = "usage")]
    Usage {
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    },
    #[serde(rename = "agents.list")]
    AgentsList,
    #[serde(rename = "agents.show")]
    AgentsShow { name: &'a str },
    #[serde(rename = "agents.create")]
    AgentsCreate { agent: serde_json::Value },
    #[serde(rename = "agents.update")]
    AgentsUpdate {
        name: &'a str,
        patch: serde_json::Value,
    },
    #[serde(rename = "agents.delete")]
    AgentsDelete { name: &'a str },
    #[serde(rename = "kb.create")]
    KbCreate { name: &'a str },
    #[serde(rename = "kb.delete")]
    KbDelete { name: &'a str },
    #[serde(rename = "kb.ingest")]
    KbIngest {
        collection: &'a str,
        /// Create the collection if it does not exist.
        create: bool,
        filename: &'a str,
        content_type: &'a str,
        /// The document, base64.
        data: String,
    },
}

/// One line of `edgeseek kb ingest --json`: the file and the daemon's answer or the error.
#[derive(Debug, Serialize)]
pub struct IngestLine<'a> {
    pub path: &'a std::path::Path,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `keys.create`, from the daemon or offline: the secret appears only here.
pub fn created_key_json(record: KeyRecord, secret: &str) -> serde_json::Value {
    super::value(&ApiKeyCreated {
        secret: secret.to_string(),
        key: ApiKey::from(record),
    })
}
