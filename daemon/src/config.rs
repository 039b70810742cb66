//! `edgeseek.toml`: schema, defaults and validation. Errors name the file and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{EmbedderConfig, Provider, ProviderOptions, ProviderPolicy, SchedulerConfig};

pub const DEFAULT_CONFIG: &str = "/etc/edgeseek/edgeseek.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edgeseek";
pub const DEV_STATE_DIR: &str = ".edgeseek";

/// Where a command finds its configuration and state: the global `--config`, `--dev` and
/// `--state-dir` flags, shared by `serve` and `doctor`.
#[derive(Clone, Debug, Default)]
pub struct Paths {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub state_dir: Option<PathBuf>,
}

/// A setting that differs between two configs (see [`Config::changes_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `section.key` as written in the file.
    pub key: &'static str,
    /// Applied by a running daemon on reload (SIGHUP); otherwise it needs a restart.
    pub live: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {msg}")]
    Read { file: PathBuf, msg: String },
    #[error("{file}: `{key}`: {msg}")]
    Invalid {
        file: PathBuf,
        key: String,
        msg: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub embeddings: EmbeddingsConfig,
    /// `[kb]`: knowledge-base index, search and ingestion settings.
    #[serde(default)]
    pub kb: KbConfig,
    /// `[limits]`: fairness between API keys.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[agents]`: limits of agent runs.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// `[web_search]`: the office's SearXNG (web search is off until `searxng_url` is set).
    #[serde(default)]
    pub web_search: crate::web::WebSearchConfig,
    /// `[fetch]`: the rules of every page the daemon fetches (`fetch_url`, web search pages).
    #[serde(default)]
    pub fetch: crate::web::FetchConfig,
    /// `[[mcp.servers]]`: MCP servers on the LAN whose tools agents may be given.
    #[serde(default)]
    pub mcp: crate::mcp::McpConfig,
    /// `[audit]`: retention of the audit log and whether it keeps request content.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// `[usage.groups.NAME]`: token quotas per usage group (department).
    #[serde(default)]
    pub usage: crate::usage::UsageConfig,
    /// `[auth.ldap]`: console sign-in through the company directory (off when absent).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// `[remote.NAME]`: models served by the company's OpenAI-compatible inference servers
    /// (vLLM, SGLang, NIM, another edgeseek), forwarded to and listed like local ones.
    #[serde(default)]
    pub remote: std::collections::BTreeMap<String, crate::remote::RemoteConfig>,
    /// `[[overflow]]`: local models whose excess requests go to a remote model.
    #[serde(default)]
    pub overflow: Vec<OverflowRule>,
    /// `[residency]`: data that must never leave the appliance.
    #[serde(default)]
    pub residency: ResidencyConfig,
    /// Where the daemon keeps its state (redb, TLS identity, TensorRT engines).
    pub state_dir: Option<PathBuf>,
}

/// `[[overflow]]`: when the local model `model` cannot take a request soon, the remote model
/// `to` answers it instead (within `[residency]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverflowRule {
    /// The local model's served name.
    pub model: String,
    /// A `[remote.NAME]` entry.
    pub to: String,
    /// Also overflow when the estimated wait in the local queue exceeds this many seconds
    /// (queued requests ahead, per batch slot, times the model's recent request time). 0: only
    /// when the local queue is full (what would otherwise be a 429).
    #[serde(default)]
    pub max_wait_s: f64,
}

/// `[residency]`: what must stay on this appliance. A request of a key in one of
/// `local_groups`, or one that uses a collection of `local_collections`, never reaches a remote
/// model: it does not overflow (it waits or gets the local 429), and a remote model refuses
/// it with 403 `local_only`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Usage groups (`keys create --group`) whose requests stay local.
    pub local_groups: Vec<String>,
    /// Knowledge collections whose content stays local.
    pub local_collections: Vec<String>,
}

/// `[limits]`: how much of the server one API key may hold. Rate limits (`rpm`, `tpm`) are
/// per key, set when the key is made; this is the cap on concurrent work that keeps one key
/// (a runaway script, a client retrying in a loop) from filling the queue for everyone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Share of the engine's capacity (`engine.max_batch + engine.max_queue` sequences) that
    /// one key may have in flight at once; a chat request with `n` choices holds `n`. Past it
    /// the key gets 429 with `Retry-After`. A request larger than the share still runs when the
    /// key has nothing else in flight. 1 = no per-key cap.
    pub key_queue_share: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            key_queue_share: 0.25,
        }
    }
}

/// `[agents]`: limits every agent run keeps (agents themselves are made with
/// `edgeseek agents create` or the admin API, and live in the database).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// Seconds one tool call may take before the model is told it timed out. Default 30.
    pub tool_timeout_s: u64,
    /// Longest tool result given to the model, in characters (sources share it). Default
    /// 4000: several results still fit the context of a small model.
    pub result_chars: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            tool_timeout_s: 30,
            result_chars: 4000,
        }
    }
}

/// `[kb]`: the index and search keys (`kb::base::IndexConfig`, which also rejects unknown
/// keys) and the ingestion limits below.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct KbConfig {
    #[serde(flatten)]
    pub index: crate::kb::base::IndexConfig,
    /// Documents ingested (parsed, chunked, embedded) at once; more uploads wait. Default 2:
    /// each can hold a parse worker of up to 2 GiB and keeps CPU cores busy embedding.
    pub max_concurrent_ingests: usize,
    /// Seconds an upload waits for an ingest slot before it gets a 503. Default 30.
    pub ingest_wait_s: u64,
    /// Seconds chunking one document may take. Default 300: ordinary text of the largest
    /// size chunks well within it; a pathological one is refused.
    pub chunk_timeout_s: u64,
}

impl Default for KbConfig {
    fn default() -> Self {
        let l = crate::kb::ingest::IngestLimits::default();
        KbConfig {
            index: crate::kb::base::IndexConfig::default(),
            max_concurrent_ingests: l.max_concurrent,
            ingest_wait_s: l.wait.as_secs(),
            chunk_timeout_s: l.chunk_timeout.as_secs(),
        }
    }
}

impl KbConfig {
    /// Problems as (key, message).
    fn check(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.index.validate() {
            let msg = e.to_string();
            return Err(("kb", msg.trim_start_matches("kb config: ").to_string()));
        }
        if !(1..=64).contains(&self.max_concurrent_ingests) {
            return Err(("kb.max_concurrent_ingests", "must be 1..=64".into()));
        }
        if self.ingest_wait_s > 3600 {
            return Err(("kb.ingest_wait_s", "must be 0..=3600".into()));
        }
        if !(1..=86400).contains(&self.chunk_timeout_s) {
            return Err(("kb.chunk_timeout_s", "must be 1..=86400".into()));
        }
        Ok(())
    }

    pub fn ingest_limits(&self) -> crate::kb::ingest::IngestLimits {
        crate::kb::ingest::IngestLimits {
            max_concurrent: self.max_concurrent_ingests,
            wait: std::time::Duration::from_secs(self.ingest_wait_s),
            chunk_timeout: std::time::Duration::from_secs(self.chunk_timeout_s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so.*` (file or directory). Searched first.
    pub library: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The model to serve: a directory, or the name of one under `<state_dir>/models`. Unset:
    /// the first directory (by name) under `<state_dir>/models`. `serve --model` overrides it.
    pub model: Option<PathBuf>,
    /// More models to load at start, each with its own session, scheduler and KV budget:
    /// directories or names under `<state_dir>/models`. `engine.model` (or the first of
    /// these) is the default model unless `default_model` names another.
    pub models: Vec<PathBuf>,
    /// The served name (directory name) of the model `"model": "default"` means.
    pub default_model: Option<String>,
    /// Memory all loaded chat models may take together, MiB: each costs its weight files
    /// plus `kv_budget_mb` and `prefix_cache_mb`. A load that does not fit is refused.
    /// 0: three quarters of the machine's memory (on a GPU appliance, set it to what the
    /// GPU holds).
    pub memory_budget_mb: u64,
    /// Execution providers in order of preference.
    pub providers: Vec<Provider>,
    pub provider_policy: ProviderPolicy,
    /// Threads for CPU kernels; 0 = one per core.
    pub intra_threads: usize,
    pub tensorrt_fp16: bool,
    /// TensorRT engine cache; default `<state_dir>/tensorrt-cache`.
    pub tensorrt_cache: Option<PathBuf>,
    pub device_id: i32,
    /// Most sequences decoding together (one batched forward per step).
    pub max_batch: usize,
    /// Most requests waiting for a slot; more are refused at once (HTTP 429).
    pub max_queue: usize,
    /// KV cache budget of the running batch, MiB.
    pub kv_budget_mb: u64,
    /// Prompt tokens prefilled between decode steps of running streams.
    pub prefill_chunk: usize,
    /// Memory for reusing the KV cache of repeated prompt prefixes, MiB (0 = off).
    pub prefix_cache_mb: u64,
}

/// `[server]`: the HTTPS listener and its hardening limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on [default: 0.0.0.0:443; `--dev`: 127.0.0.1:8443].
    pub listen: Option<String>,
    /// Open connections at most. At the cap, a new connection evicts the connection that has
    /// been idle (no request in flight) the longest; it is refused only when every open
    /// connection is busy.
    pub max_connections: usize,
    /// Open connections per client address (an IPv4-mapped IPv6 address counts as its IPv4
    /// address). At the cap, the address's longest-idle connection is evicted; a new one is
    /// refused only when all of that address's connections are busy. 128 leaves room for an
    /// office behind one NAT address (browsers keep up to 6 connections per site, SDK pools
    /// more) while one address can hold at most a quarter of the default `max_connections`.
    pub max_connections_per_ip: usize,
    /// A client must send its request headers within this many seconds.
    pub header_read_timeout_s: u64,
    /// A client must finish the TLS handshake within this many seconds.
    pub handshake_timeout_s: u64,
    /// After the TLS handshake, the first request must arrive within this many seconds, or
    /// the connection is closed (a client that connects and sends nothing holds no slot).
    pub first_request_timeout_s: u64,
    /// A connection with no request in flight and no new request for this many seconds is
    /// closed gracefully (HTTP/2: GOAWAY). Bytes that carry no request (HTTP/2 PINGs, a
    /// trickle of header bytes) do not count as activity. HTTP/1.1 connections are also
    /// bound by `header_read_timeout_s` between requests.
    pub idle_timeout_s: u64,
    /// HTTP/2: send a PING after this many seconds without frames from the client; 0 = off.
    pub h2_keepalive_interval_s: u64,
    /// HTTP/2: close the connection when a PING is not answered within this many seconds.
    pub h2_keepalive_timeout_s: u64,
    /// While a request body is being received, every window of this many seconds must bring
    /// at least `body_min_bytes_per_s` × `body_timeout_s` bytes, or the connection is closed
    /// (a client trickling or stalling its body cannot hold a request open).
    pub body_timeout_s: u64,
    /// The slowest average body rate accepted over each `body_timeout_s` window, bytes per
    /// second. The default (1 KiB/s) is about a thousandth of a slow LAN link: an upload of
    /// 64 MiB is never cut, a body sent a few bytes at a time is. 0: only a window without a
    /// single body byte cuts.
    pub body_min_bytes_per_s: u64,
    /// Most request headers per request.
    pub max_headers: usize,
    /// Body limit of the JSON inference routes (chat, completions), bytes.
    pub max_body_bytes: usize,
    /// Seconds running requests get to finish after SIGTERM before connections are closed.
    pub shutdown_grace_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            max_connections: 512,
            max_connections_per_ip: 128,
            first_request_timeout_s: 10,
            idle_timeout_s: 60,
            h2_keepalive_interval_s: 30,
            h2_keepalive_timeout_s: 10,
            body_timeout_s: 20,
            body_min_bytes_per_s: 1024,
            header_read_timeout_s: 10,
            handshake_timeout_s: 10,
            max_headers: 64,
            max_body_bytes: 1 << 20,
            shutdown_grace_s: 30,
        }
    }
}

/// `[tls]`: a configured certificate (else a local CA and certificate are generated under
/// `<state_dir>/tls`), and optional client certificates (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed. Re-read on
    /// reload (SIGHUP); changing the path needs a restart.
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists (one per CA of `client_ca` that issues client
    /// certificates): a revoked client certificate is refused. Needs `client_ca`; re-read on
    /// reload, so revoking is: update the file, `systemctl reload edgeseek`.
    pub client_crl: Option<PathBuf>,
}

/// `[embeddings]`: the embedding model behind `/v1/embeddings` and the knowledge base.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Load an embedding model at all.
    pub enabled: bool,
    /// Model directory [default: the first of `<state_dir>/models/all-minilm-l6-v2`,
    /// `/usr/lib/edgeseek/models/all-minilm-l6-v2`, `./.runtime/models/all-minilm-l6-v2`].
    pub model: Option<PathBuf>,
    /// Inputs per ONNX Runtime call.
    pub batch_size: usize,
    /// Intra-op threads of the embedding session; 0 = one per core.
    pub threads: usize,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        EmbeddingsConfig {
            enabled: true,
            model: None,
            batch_size: EmbedderConfig::default().batch_size,
            threads: 0,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        // The provider defaults live with the engine that applies them.
        let providers = ProviderOptions::default();
        EngineConfig {
            model: None,
            models: Vec::new(),
            default_model: None,
            memory_budget_mb: 0,
            providers: providers.providers,
            provider_policy: providers.policy,
            intra_threads: providers.intra_threads,
            tensorrt_fp16: providers.tensorrt_fp16,
            tensorrt_cache: providers.tensorrt_cache,
            device_id: providers.device_id,
            max_batch: 8,
            max_queue: 64,
            kv_budget_mb: 1024,
            prefill_chunk: 256,
            prefix_cache_mb: 256,
        }
    }
}

impl Config {
    /// Parse a config file.
    pub fn from_file(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
            file: file.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::parse(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Read {
            file: file.to_path_buf(),
            // toml's message spans several lines (with a source excerpt); keep one line.
            msg: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Load `explicit`, else the system config if it exists, else defaults.
    pub fn load(explicit: Option<&Path>, dev: bool) -> Result<Config, ConfigError> {
        match explicit {
            Some(f) => Self::from_file(f),
            None if !dev && Path::new(DEFAULT_CONFIG).is_file() => {
                Self::from_file(Path::new(DEFAULT_CONFIG))
            }
            None => Ok(Config::default()),
        }
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: &str| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            msg: msg.to_string(),
        };
        if self
            .engine
            .model
            .as_ref()
            .is_some_and(|m| m.as_os_str().is_empty())
        {
            return Err(bad("engine.model", "must name a model directory"));
        }
        if self.engine.models.iter().any(|m| m.as_os_str().is_empty()) {
            return Err(bad(
                "engine.models",
                "each entry must name a model directory",
            ));
        }
        if self
            .engine
            .default_model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.contains('/'))
        {
            return Err(bad(
                "engine.default_model",
                "must be the served name (directory name) of one of the models",
            ));
        }
        if self.engine.providers.is_empty() {
            return Err(bad("engine.providers", "must name at least one provider"));
        }
        let mut seen = Vec::new();
        for p in &self.engine.providers {
            if seen.contains(p) {
                return Err(bad("engine.providers", &format!("`{p}` listed twice")));
            }
            seen.push(*p);
        }
        for checked in [self.web_search.validate(), self.fetch.validate()] {
            checked.map_err(|e| bad(&e.key, &e.msg))?;
        }
        self.mcp.validate().map_err(|e| bad(&e.key, &e.msg))?;
        self.usage.validate().map_err(|e| {
            let (key, msg) = e.split_once(": ").unwrap_or(("usage", &e));
            bad(key, msg)
        })?;
        self.auth.validate().map_err(|(k, m)| bad(&k, &m))?;
        crate::remote::validate(&self.remote).map_err(|e| bad(&e.key, &e.msg))?;
        for (i, o) in self.overflow.iter().enumerate() {
            let key = |f: &str| format!("overflow[{i}].{f}");
            if !self.remote.contains_key(&o.to) {
                return Err(bad(
                    &key("to"),
                    &format!("no [remote.{}] entry is configured", o.to),
                ));
            }
            if o.model.is_empty() || self.remote.contains_key(&o.model) {
                return Err(bad(&key("model"), "must name a local model"));
            }
            if self.overflow[..i].iter().any(|p| p.model == o.model) {
                return Err(bad(&key("model"), "a model overflows to one remote only"));
            }
            if !(o.max_wait_s.is_finite() && (0.0..=3600.0).contains(&o.max_wait_s)) {
                return Err(bad(&key("max_wait_s"), "must be from 0 to 3600 seconds"));
            }
        }
        if let Some(g) = self
            .residency
            .local_groups
            .iter()
            .find(|g| !crate::usage::valid_group(g))
        {
            return Err(bad(
                "residency.local_groups",
                &format!("`{g}` is not a group name (1-64 lowercase letters, digits, '-' or '_')"),
            ));
        }
        if self
            .residency
            .local_collections
            .iter()
            .any(String::is_empty)
        {
            return Err(bad(
                "residency.local_collections",
                "names must not be empty",
            ));
        }
        if self.audit.max_mb == 0 || self.audit.max_age_days == 0 {
            return Err(bad("audit", "max_mb and max_age_days must be at least 1"));
        }
        if !(1..=3600).contains(&self.agents.tool_timeout_s) {
            return Err(bad(
                "agents.tool_timeout_s",
                "must be from 1 to 3600 seconds",
            ));
        }
        if !(100..=1_000_000).contains(&self.agents.result_chars) {
            return Err(bad(
                "agents.result_chars",
                "must be from 100 to 1000000 characters",
            ));
        }
        let share = self.limits.key_queue_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(
                "limits.key_queue_share",
                "must be more than 0 and at most 1",
            ));
        }
        if let Some(l) = &self.server.listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(
                    "server.listen",
                    "must be ADDRESS:PORT, e.g. 0.0.0.0:443 or [::]:443",
                ));
            }
        }
        // (key, value, least, most): each must lie in least..=most.
        let (e, v, m) = (&self.engine, &self.server, &self.embeddings);
        let ranges: [(&str, u64, u64, u64); 20] = [
            ("engine.intra_threads", e.intra_threads as u64, 0, 1024),
            ("engine.max_batch", e.max_batch as u64, 1, 256),
            ("engine.max_queue", e.max_queue as u64, 1, 100_000),
            ("engine.kv_budget_mb", e.kv_budget_mb, 1, 1 << 20),
            ("engine.prefill_chunk", e.prefill_chunk as u64, 1, 65_536),
            (
                "server.max_connections",
                v.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "server.max_connections_per_ip",
                v.max_connections_per_ip as u64,
                1,
                1_000_000,
            ),
            (
                "server.first_request_timeout_s",
                v.first_request_timeout_s,
                1,
                3600,
            ),
            ("server.idle_timeout_s", v.idle_timeout_s, 1, 3600),
            (
                "server.h2_keepalive_interval_s",
                v.h2_keepalive_interval_s,
                0,
                3600,
            ),
            (
                "server.h2_keepalive_timeout_s",
                v.h2_keepalive_timeout_s,
                1,
                3600,
            ),
            ("server.body_timeout_s", v.body_timeout_s, 1, 3600),
            (
                "server.body_min_bytes_per_s",
                v.body_min_bytes_per_s,
                0,
                1 << 30,
            ),
            (
                "server.header_read_timeout_s",
                v.header_read_timeout_s,
                1,
                3600,
            ),
            ("server.handshake_timeout_s", v.handshake_timeout_s, 1, 3600),
            ("server.max_headers", v.max_headers as u64, 8, 1024),
            (
                "server.max_body_bytes",
                v.max_body_bytes as u64,
                1024,
                1 << 30,
            ),
            ("server.shutdown_grace_s", v.shutdown_grace_s, 0, 3600),
            ("embeddings.batch_size", m.batch_size as u64, 1, 1024),
            ("embeddings.threads", m.threads as u64, 0, 1024),
        ];
        for (key, value, least, most) in ranges {
            if !(least..=most).contains(&value) {
                return Err(bad(key, &format!("must be {least}..={most}")));
            }
        }
        if let Err((key, msg)) = self.kb.check() {
            return Err(bad(key, &msg));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(bad(
                "tls.cert",
                "`tls.cert` and `tls.key` must be set together",
            ));
        }
        if self.tls.client_crl.is_some() && self.tls.client_ca.is_none() {
            return Err(bad(
                "tls.client_crl",
                "needs `tls.client_ca` (revocation lists apply to client certificates)",
            ));
        }
        Ok(())
    }

    /// The state directory: `--state-dir`, else config, else `./.edgeseek` in dev mode,
    /// else `/var/lib/edgeseek`.
    pub fn state_dir(&self, cli: Option<&Path>, dev: bool) -> PathBuf {
        if let Some(d) = cli {
            return d.to_path_buf();
        }
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        PathBuf::from(if dev {
            DEV_STATE_DIR
        } else {
            DEFAULT_STATE_DIR
        })
    }

    /// The settings that differ between `old` (in effect) and `self` (just read), in file
    /// order, each with whether a running daemon applies it on reload ([`Change::live`]) or
    /// only after a restart.
    pub fn changes_from(&self, old: &Config) -> Vec<Change> {
        let mut out = Vec::new();
        // Every setting named here is compared, then copied from `old` into `rest`: whatever
        // still differs afterwards is a setting added to the schema but not to this list, and
        // still counts (as needing a restart).
        let mut rest = self.clone();
        macro_rules! compare {
            ($section:literal $new:ident $old:ident $rest:expr, live: $live:expr, $($f:ident)+) => {$(
                if $new.$f != $old.$f {
                    out.push(Change { key: concat!($section, stringify!($f)), live: $live });
                }
                $rest.$f.clone_from(&$old.$f);
            )+};
        }
        let (c, o) = (self, old);
        compare!("" c o rest, live: false, state_dir);
        let (e, o) = (&self.engine, &old.engine);
        compare!("engine." e o rest.engine, live: false, model models default_model memory_budget_mb);
        let (r, o_runtime) = (&self.runtime, &old.runtime);
        compare!("runtime." r o_runtime rest.runtime, live: false, library);
        compare!("engine." e o rest.engine, live: false,
            providers provider_policy intra_threads tensorrt_fp16 tensorrt_cache device_id
            max_batch max_queue kv_budget_mb prefill_chunk prefix_cache_mb);
        let (s, o) = (&self.server, &old.server);
        compare!("server." s o rest.server, live: false, listen);
        compare!("server." s o rest.server, live: true,
            max_connections max_connections_per_ip first_request_timeout_s idle_timeout_s
            h2_keepalive_interval_s h2_keepalive_timeout_s body_timeout_s body_min_bytes_per_s
            header_read_timeout_s handshake_timeout_s max_headers max_body_bytes shutdown_grace_s);
        let (m, o) = (&self.embeddings, &old.embeddings);
        compare!("embeddings." m o rest.embeddings, live: false, enabled model batch_size threads);
        let (t, o) = (&self.tls, &old.tls);
        compare!("tls." t o rest.tls, live: false, cert key client_ca client_crl);
        compare!("" c old rest, live: false, kb);
        let (l, o) = (&self.limits, &old.limits);
        compare!("limits." l o rest.limits, live: true, key_queue_share);
        compare!("" c old rest, live: true, agents web_search fetch mcp audit usage auth);
        compare!("" c old rest, live: false, remote overflow residency);
        if rest != *old {
            out.push(Change {
                key: "(other settings)",
                live: false,
            });
        }
        out
    }

    /// `engine.model` as a directory: a bare name (no `/`) is `<state_dir>/models/<name>`.
    pub fn model_dir(&self, state_dir: &Path) -> Option<PathBuf> {
        Some(model_path(self.engine.model.as_ref()?, state_dir))
    }

    /// `engine.models` as directories, in order.
    pub fn more_model_dirs(&self, state_dir: &Path) -> Vec<PathBuf> {
        self.engine
            .models
            .iter()
            .map(|m| model_path(m, state_dir))
            .collect()
    }

    /// `engine.memory_budget_mb` in bytes (0: three quarters of the machine's memory, or no
    /// limit where that cannot be read).
    pub fn memory_budget_bytes(&self) -> u64 {
        if self.engine.memory_budget_mb > 0 {
            return self.engine.memory_budget_mb.saturating_mul(1 << 20);
        }
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024 / 4 * 3)
    }

    /// Sequences one key may have in flight: `limits.key_queue_share` of the engine's capacity
    /// (running batch plus queue), at least 1; a share of 1 is no per-key cap (one key may fill
    /// the queue, and then gets the engine's `queue_full`).
    pub fn max_inflight_per_key(&self) -> usize {
        if self.limits.key_queue_share >= 1.0 {
            return usize::MAX;
        }
        let capacity = (self.engine.max_batch + self.engine.max_queue) as f64;
        ((capacity * self.limits.key_queue_share).floor() as usize).max(1)
    }

    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            max_batch: self.engine.max_batch,
            max_queue: self.engine.max_queue,
            kv_budget_bytes: self.engine.kv_budget_mb << 20,
            prefill_chunk: self.engine.prefill_chunk,
            prefix_cache_bytes: self.engine.prefix_cache_mb << 20,
        }
    }

    /// Settings of the embedding service (`[embeddings]`).
    pub fn embedder_config(&self) -> EmbedderConfig {
        EmbedderConfig {
            batch_size: self.embeddings.batch_size,
            threads: self.embeddings.threads,
            ..EmbedderConfig::default()
        }
    }

    pub fn provider_options(&self, state_dir: &Path) -> ProviderOptions {
        ProviderOptions {
            providers: self.engine.providers.clone(),
            policy: self.engine.provider_policy,
            intra_threads: self.engine.intra_threads,
            tensorrt_cache: Some(
                self.engine
                    .tensorrt_cache
                    .clone()
                    .unwrap_or_else(|| state_dir.join("tensorrt-cache")),
            ),
            tensorrt_fp16: self.engine.tensorrt_fp16,
            device_id: self.engine.device_id,
        }
    }
}

/// A model setting as a directory: a bare name (no `/`) is `<state_dir>/models/<name>`.
fn model_path(m: &Path, state_dir: &Path) -> PathBuf {
    if m.components().count() == 1 && m.is_relative() {
        state_dir.join("models").join(m)
    } else {
        m.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::expect_err;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/edgeseek/edgeseek.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.engine.providers,
            vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
        );
        assert_eq!(c.engine.provider_policy, ProviderPolicy::Fallback);
    }

    #[test]
    fn full_engine_section() {
        let c = parse(
            "[runtime]\nlibrary = \"/opt/ort/libonnxruntime.so.1.31.1\"\n[engine]\nproviders = [\"cuda\", \"cpu\"]\nprovider_policy = \"strict\"\nintra_threads = 2\n",
        )
        .unwrap();
        assert_eq!(c.engine.providers, vec![Provider::Cuda, Provider::Cpu]);
        assert_eq!(c.engine.provider_policy, ProviderPolicy::Strict);
        assert_eq!(
            c.runtime.library.unwrap(),
            PathBuf::from("/opt/ort/libonnxruntime.so.1.31.1")
        );
    }

    #[test]
    fn scheduler_defaults_and_overrides() {
        let d = parse("").unwrap().scheduler_config();
        assert_eq!(
            (d.max_batch, d.max_queue, d.kv_budget_bytes, d.prefill_chunk),
            (8, 64, 1024 << 20, 256)
        );
        let c =
            parse("[engine]\nmax_batch = 4\nmax_queue = 3\nkv_budget_mb = 2\nprefill_chunk = 32\n")
                .unwrap()
                .scheduler_config();
        assert_eq!(
            (c.max_batch, c.max_queue, c.kv_budget_bytes, c.prefill_chunk),
            (4, 3, 2 << 20, 32)
        );
        for (key, text) in [
            ("engine.max_batch", "max_batch = 0"),
            ("engine.max_queue", "max_queue = 0"),
            ("engine.kv_budget_mb", "kv_budget_mb = 0"),
            ("engine.prefill_chunk", "prefill_chunk = 0"),
        ] {
            expect_err(parse(&format!("[engine]\n{text}\n")), &[key]);
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        expect_err(
            parse("[engine]\nprovider = [\"cpu\"]\n"),
            &["/etc/edgeseek/edgeseek.toml", "provider"],
        );
    }

    #[test]
    fn unknown_provider_is_rejected() {
        expect_err(parse("[engine]\nproviders = [\"rocm\"]\n"), &["rocm"]);
    }

    #[test]
    fn duplicate_and_empty_providers() {
        assert!(parse("[engine]\nproviders = []\n")
            .unwrap_err()
            .to_string()
            .contains("engine.providers"));
        assert!(parse("[engine]\nproviders = [\"cpu\", \"cpu\"]\n")
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn server_and_tls_sections() {
        let d = parse("").unwrap();
        assert_eq!(d.server.max_body_bytes, 1 << 20);
        assert!(d.server.listen.is_none() && d.tls.cert.is_none());
        let c = parse(
            "[server]\nlisten = \"127.0.0.1:9443\"\nmax_connections = 4\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen.as_deref(), Some("127.0.0.1:9443"));
        assert_eq!(c.server.max_connections, 4);
        assert_eq!(c.tls.client_ca, Some(PathBuf::from("/ca.pem")));
        for (key, text) in [
            ("server.listen", "[server]\nlisten = \"localhost\""),
            ("server.max_connections", "[server]\nmax_connections = 0"),
            ("server.max_body_bytes", "[server]\nmax_body_bytes = 1"),
            ("tls.cert", "[tls]\ncert = \"/c.pem\""),
        ] {
            expect_err(parse(text), &[key]);
        }
        expect_err(parse("[tls]\ncertificate = \"/c\"\n"), &["certificate"]);
    }

    #[test]
    fn agents_web_and_mcp_sections_name_their_bad_keys_and_apply_live() {
        let d = parse("").unwrap();
        assert_eq!(
            (d.agents.tool_timeout_s, d.web_search.searxng_url.as_deref()),
            (30, None)
        );
        for (text, key) in [
            ("[agents]\ntool_timeout_s = 0", "agents.tool_timeout_s"),
            ("[agents]\nresult_chars = 5", "agents.result_chars"),
            ("[fetch]\nallow = [\"10.0.0.0/33\"]", "fetch.allow"),
            (
                "[web_search]\nsearxng_url = \"ftp://x\"",
                "web_search.searxng_url",
            ),
            (
                "[[mcp.servers]]\nname = \"a b\"\nurl = \"http://10.0.0.7/mcp\"",
                "mcp.servers[0].name",
            ),
        ] {
            expect_err(parse(text), &[key]);
        }
        let c = parse(
            "[web_search]\nsearxng_url = \"http://127.0.0.1:8888\"\n[[mcp.servers]]\nname = \"erp\"\nurl = \"http://10.0.0.7/mcp\"\n",
        )
        .unwrap();
        let diffs = c.changes_from(&d);
        assert!(diffs.iter().all(|c| c.live), "{diffs:?}");
        assert_eq!(diffs.len(), 2);
    }

    #[test]
    fn limits_section() {
        let d = parse("").unwrap();
        // Defaults: (8 + 64) * 0.25.
        assert_eq!(d.max_inflight_per_key(), 18);
        let c = parse("[limits]\nkey_queue_share = 0.001\n").unwrap();
        assert_eq!(c.max_inflight_per_key(), 1);
        let c = parse("[limits]\nkey_queue_share = 1\n").unwrap();
        assert_eq!(c.max_inflight_per_key(), usize::MAX);
        for text in [
            "[limits]\nkey_queue_share = 0",
            "[limits]\nkey_queue_share = 1.5",
            "[limits]\nkey_queue_share = nan",
        ] {
            expect_err(parse(text), &["limits.key_queue_share"]);
        }
        expect_err(parse("[limits]\nper_key = 1"), &["per_key"]);
        let changed = parse("[limits]\nkey_queue_share = 0.5").unwrap();
        let diffs = changed.changes_from(&d);
        assert!(
            diffs
                .iter()
                .any(|c| c.key == "limits.key_queue_share" && c.live),
            "{diffs:?}"
        );
        assert!(
            !diffs.iter().any(|c| c.key == "(other settings)"),
            "{diffs:?}"
        );
    }

    #[test]
    fn connection_limits() {
        let d = parse("").unwrap().server;
        assert_eq!(
            (
                d.max_connections_per_ip,
                d.first_request_timeout_s,
                d.idle_timeout_s,
                d.h2_keepalive_interval_s,
                d.h2_keepalive_timeout_s,
                d.body_timeout_s,
                d.body_min_bytes_per_s
            ),
            (128, 10, 60, 30, 10, 20, 1024)
        );
        let c = parse(
            "[server]\nmax_connections_per_ip = 2\nfirst_request_timeout_s = 1\nidle_timeout_s = 1\nh2_keepalive_interval_s = 0\nbody_timeout_s = 1\nbody_min_bytes_per_s = 0\n",
        )
        .unwrap()
        .server;
        assert_eq!(c.max_connections_per_ip, 2);
        assert_eq!(c.h2_keepalive_interval_s, 0);
        for (key, text) in [
            (
                "server.max_connections_per_ip",
                "max_connections_per_ip = 0",
            ),
            (
                "server.first_request_timeout_s",
                "first_request_timeout_s = 0",
            ),
            ("server.idle_timeout_s", "idle_timeout_s = 3601"),
            (
                "server.h2_keepalive_interval_s",
                "h2_keepalive_interval_s = 4000",
            ),
            (
                "server.h2_keepalive_timeout_s",
                "h2_keepalive_timeout_s = 0",
            ),
            ("server.body_timeout_s", "body_timeout_s = 0"),
            (
                "server.body_min_bytes_per_s",
                "body_min_bytes_per_s = 2000000000",
            ),
        ] {
            expect_err(parse(&format!("[server]\n{text}\n")), &[key]);
        }
        // All of them apply live.
        let changed = parse("[server]\nidle_timeout_s = 5\nbody_timeout_s = 5\n").unwrap();
        assert!(changed
            .changes_from(&parse("").unwrap())
            .iter()
            .all(|c| c.live));
        expect_err(
            parse("[tls]\nclient_crl = \"/crl.pem\"\n"),
            &["tls.client_crl"],
        );
        let m = parse("[tls]\nclient_ca = \"/ca.pem\"\nclient_crl = \"/crl.pem\"\n").unwrap();
        assert_eq!(m.tls.client_crl, Some(PathBuf::from("/crl.pem")));
    }

    #[test]
    fn embeddings_section() {
        let d = parse("").unwrap();
        assert!(d.embeddings.enabled && d.embeddings.model.is_none());
        assert_eq!(d.embedder_config(), EmbedderConfig::default());
        let c = parse(
            "[embeddings]\nenabled = false\nmodel = \"/srv/m\"\nbatch_size = 8\nthreads = 2\n",
        )
        .unwrap();
        assert!(!c.embeddings.enabled);
        assert_eq!(c.embeddings.model, Some(PathBuf::from("/srv/m")));
        let e = c.embedder_config();
        assert_eq!((e.batch_size, e.threads), (8, 2));
        for (key, text) in [
            ("embeddings.batch_size", "batch_size = 0"),
            ("embeddings.threads", "threads = 5000"),
        ] {
            expect_err(parse(&format!("[embeddings]\n{text}\n")), &[key]);
        }
        expect_err(parse("[embeddings]\nbatch = 4\n"), &["batch"]);
    }

    #[test]
    fn auth_ldap_section_is_validated_and_applies_live() {
        let base = "[auth.ldap]\nurl = \"ldaps://dc1.corp\"\nbind_dn = \"cn=svc\"\n\
                    bind_password_file = \"/etc/edgeseek/ldap.secret\"\nuser_base = \"dc=corp\"\n";
        let groups = "[auth.ldap.groups.\"cn=g,dc=corp\"]\nscopes = [\"chat\"]\n";
        let c = parse(&format!("{base}{groups}")).unwrap();
        let l = c.auth.ldap.as_ref().unwrap();
        assert_eq!((l.session_hours, l.recheck_seconds), (8, 300));
        assert!(parse("").unwrap().auth.ldap.is_none());
        expect_err(parse(base), &["auth.ldap.groups"]);
        expect_err(
            parse(&format!(
                "{}{groups}",
                base.replace("ldaps://dc1.corp", "ldap://dc1.corp")
            )),
            &["auth.ldap.url", "starttls"],
        );
        expect_err(
            parse(&format!(
                "{base}[auth.ldap.groups.\"cn=g\"]\nscopes = [\"kb:read:\"]\n"
            )),
            &["scope"],
        );
        expect_err(
            parse(&format!(
                "{base}[auth.ldap.groups.\"cn=g\"]\nscopes = [\"chat\"]\nusage_group = \"Fin Ance\"\n"
            )),
            &["usage_group"],
        );
        expect_err(
            parse(&format!("{base}bind_password = \"x\"\n{groups}")),
            &["bind_password"],
        );
        let changes = c.changes_from(&parse("").unwrap());
        assert_eq!(
            changes,
            vec![Change {
                key: "auth",
                live: true
            }]
        );
    }

    #[test]
    fn changes_name_the_keys_and_which_apply_live() {
        let old = parse("[server]\nmax_connections = 10\n").unwrap();
        assert!(old.changes_from(&old).is_empty());
        let new = parse(
            "state_dir = \"/srv/x\"\n[engine]\nmax_batch = 2\n[server]\nmax_connections = 20\nmax_body_bytes = 4096\n[tls]\nclient_ca = \"/ca.pem\"\n",
        )
        .unwrap();
        let got: Vec<(&str, bool)> = new
            .changes_from(&old)
            .iter()
            .map(|c| (c.key, c.live))
            .collect();
        assert_eq!(
            got,
            vec![
                ("state_dir", false),
                ("engine.max_batch", false),
                ("server.max_connections", true),
                ("server.max_body_bytes", true),
                ("tls.client_ca", false),
            ]
        );
        // Every live key is a [server] limit; the listen address is not live.
        let listen = parse("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(
            listen.changes_from(&old),
            vec![
                Change {
                    key: "server.listen",
                    live: false
                },
                Change {
                    key: "server.max_connections",
                    live: true
                }
            ]
        );
    }

    #[test]
    fn the_shipped_default_config_parses_and_documents_the_defaults() {
        // packaging/edgeseek.toml becomes /etc/edgeseek/edgeseek.toml: as shipped (everything
        // commented out) it must give the defaults, and with every `#key = value` line
        // uncommented it must still parse and give the defaults again (the documented values
        // are the real ones; examples only for paths that have no fixed default).
        let text = include_str!("../../packaging/edgeseek.toml");
        let file = Path::new("packaging/edgeseek.toml");
        let shipped = Config::parse(text, file).unwrap();
        assert_eq!(shipped, Config::default());
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let set = Config::parse(&uncommented, file).unwrap();
        let keys: Vec<&str> = set.changes_from(&shipped).iter().map(|c| c.key).collect();
        // Only settings whose default is "unset" differ, and each shows the value edgeseek uses.
        assert_eq!(
            keys,
            vec![
                "state_dir",
                "engine.model",
                "engine.models",
                "engine.default_model",
                "runtime.library",
                "engine.tensorrt_cache",
                "server.listen",
                "tls.cert",
                "tls.key",
                "tls.client_ca",
                "tls.client_crl",
                "web_search"
            ]
        );
        assert_eq!(
            set.state_dir(None, false),
            shipped.state_dir(None, false),
            "state_dir"
        );
        assert_eq!(
            set.engine.tensorrt_cache,
            shipped
                .provider_options(Path::new(DEFAULT_STATE_DIR))
                .tensorrt_cache
        );
        assert_eq!(
            set.server.listen.as_deref(),
            Some(crate::serve::DEFAULT_LISTEN)
        );
        assert_eq!(
            set.runtime.library,
            Some(
                Path::new(crate::engine::ort_env::SYSTEM_LIB_DIR).join("libonnxruntime.so.1.31.1")
            )
        );
    }

    #[test]
    fn model_by_name_or_path() {
        let st = Path::new("/var/lib/edgeseek");
        assert_eq!(parse("").unwrap().model_dir(st), None);
        let by_name = parse("[engine]\nmodel = \"qwen-7b\"\n").unwrap();
        assert_eq!(
            by_name.model_dir(st),
            Some(PathBuf::from("/var/lib/edgeseek/models/qwen-7b"))
        );
        let by_path = parse("[engine]\nmodel = \"/srv/m/qwen\"\n").unwrap();
        assert_eq!(by_path.model_dir(st), Some(PathBuf::from("/srv/m/qwen")));
        let relative = parse("[engine]\nmodel = \"m/qwen\"\n").unwrap();
        assert_eq!(relative.model_dir(st), Some(PathBuf::from("m/qwen")));
        assert!(parse("[engine]\nmodel = \"\"\n")
            .unwrap_err()
            .to_string()
            .contains("engine.model"));
    }

    #[test]
    fn state_dir_precedence() {
        let c = parse("state_dir = \"/srv/es\"\n").unwrap();
        assert_eq!(
            c.state_dir(Some(Path::new("/tmp/x")), true),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(c.state_dir(None, true), PathBuf::from("/srv/es"));
        let d = parse("").unwrap();
        assert_eq!(d.state_dir(None, true), PathBuf::from(DEV_STATE_DIR));
        assert_eq!(d.state_dir(None, false), PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn remote_models_overflow_and_residency() {
        let remote = "[remote.hq]\nurl = \"https://hq.example:8000/v1\"\n";
        let c = parse(&format!(
            "{remote}model = \"deepseek-ai/DeepSeek-R1\"\n[[overflow]]\nmodel = \"qwen\"\n\
             to = \"hq\"\nmax_wait_s = 5\n[residency]\nlocal_groups = [\"legal\"]\n\
             local_collections = [\"hr\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.remote["hq"].model.as_deref(),
            Some("deepseek-ai/DeepSeek-R1")
        );
        assert_eq!(c.overflow[0].to, "hq");
        assert_eq!(c.residency.local_groups, ["legal"]);
        for (text, key) in [
            (
                "[[overflow]]\nmodel = \"qwen\"\nto = \"nowhere\"\n",
                "overflow[0].to",
            ),
            (
                &format!("{remote}[[overflow]]\nmodel = \"hq\"\nto = \"hq\"\n"),
                "overflow[0].model",
            ),
            (
                &format!("{remote}[[overflow]]\nmodel = \"q\"\nto = \"hq\"\nmax_wait_s = -1\n"),
                "overflow[0].max_wait_s",
            ),
            (
                &format!(
                    "{remote}[[overflow]]\nmodel = \"q\"\nto = \"hq\"\n\
                     [[overflow]]\nmodel = \"q\"\nto = \"hq\"\n"
                ),
                "overflow[1].model",
            ),
            (
                "[residency]\nlocal_groups = [\"Not A Group\"]\n",
                "residency.local_groups",
            ),
            (
                "[residency]\nlocal_collections = [\"\"]\n",
                "residency.local_collections",
            ),
        ] {
            expect_err(parse(text), &[key]);
        }
        // Restart-only: a reload says so.
        let old = parse("").unwrap();
        let changes = c.changes_from(&old);
        for key in ["remote", "overflow", "residency"] {
            assert!(
                changes.iter().any(|ch| ch.key == key && !ch.live),
                "{key}: {changes:?}"
            );
        }
    }
}
