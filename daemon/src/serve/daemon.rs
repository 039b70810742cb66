//! The running server's view of itself: the shared state, `status` and `models` for the
//! admin socket and HTTPS admin endpoints, and the config reload of SIGHUP / `reload`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::admin::AdminBackend;
use crate::api::{ApiConfig, App};
use crate::config::{Config, ServerConfig};
use crate::engine::Provider;
use crate::tls::TlsServer;
use crate::util::{lock, read, write};

/// What the admin socket reports about the running server.
pub(super) struct Daemon {
    pub(super) app: Arc<App>,
    pub(super) tls: Arc<TlsServer>,
    /// `--config` and `--dev`: a reload finds the file by the same rules as the start.
    pub(super) config_file: Option<PathBuf>,
    pub(super) dev: bool,
    /// The configuration the daemon started with (settings that need a restart stay as here).
    pub(super) started_with: Config,
    /// The configuration in effect: what the daemon started with, as reloads changed its live
    /// settings. A reload compares against this, so a second reload can turn back a first.
    pub(super) applied: std::sync::RwLock<Config>,
    /// `[server]` limits in effect; a reload replaces them, each new connection reads them.
    pub(super) server: std::sync::RwLock<ServerConfig>,
    pub(super) started: Instant,
    pub(super) provider: std::sync::Mutex<Option<Provider>>,
    pub(super) listen_text: std::sync::Mutex<String>,
    /// The model loading thread (see [`super::wait_for_loader`]).
    pub(super) loader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The embedding model loading thread.
    pub(super) embed_loader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Daemon {
    pub(super) fn server(&self) -> ServerConfig {
        read(&self.server).clone()
    }

    /// Re-read the config file: apply the settings that can change live (the `[server]`
    /// limits; see [`Config::changes_from`]), log each change, and name those that need a
    /// restart. A file that does not load is logged and the running configuration is kept.
    pub(super) fn reload_config(&self, why: &str) {
        let new = match Config::load(self.config_file.as_deref(), self.dev) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "{why}: the config file does not load; keeping the running configuration");
                self.audit_reload(why, None, Some(e.to_string()));
                return;
            }
        };
        let current = crate::util::read(&self.applied).clone();
        let changes = new.changes_from(&current);
        let restart: Vec<&str> = new
            .changes_from(&self.started_with)
            .iter()
            .filter(|c| !c.live)
            .map(|c| c.key)
            .collect();
        for c in changes.iter().filter(|c| c.live) {
            tracing::info!(key = c.key, "{why}: config: `{}` changed; applied", c.key);
        }
        // Against the directory in use, not the config the daemon started with: a second
        // reload may turn back what the first changed. Open sessions keep their scopes until
        // their next re-check, which maps the groups anew.
        if self.app.directory().map(|d| d.cfg.clone()) != new.auth.ldap {
            match super::directory(&new) {
                Ok(d) => self.app.set_directory(d),
                Err(e) => tracing::warn!(error = %e, "{why}: directory sign-in not changed"),
            }
        }
        if changes.iter().any(|c| c.live) {
            *write(&self.server) = new.server.clone();
            // MCP sessions are kept when `[mcp]` is unchanged (a new client would reconnect).
            if changes
                .iter()
                .any(|c| matches!(c.key, "web_search" | "fetch" | "mcp"))
            {
                match super::web_tools(&new) {
                    Ok(w) => self.app.set_web(w),
                    Err(e) => tracing::warn!(error = %e, "{why}: web tools not changed"),
                }
            }
            if let Some(a) = self.app.audit.get() {
                a.set_config(new.audit.clone());
            }
            self.app.set_config(ApiConfig {
                max_body_bytes: new.server.max_body_bytes,
                max_inflight_per_key: new.max_inflight_per_key(),
                agents: super::agent_limits(&new.agents),
                group_quotas: new.usage.groups.clone(),
            });
        }
        // The live settings are in effect now; the others wait for a restart (`restart`
        // is reckoned from the start, not from here).
        *write(&self.applied) = new.clone();
        self.audit_reload(
            why,
            Some(changes.iter().map(|c| c.key).collect::<Vec<_>>().join(",")),
            None,
        );
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "{why}: config: changed settings take effect only after a restart (`systemctl restart edgeseek`): {}",
                restart.join(", ")
            );
        }
        if changes.is_empty() && restart.is_empty() {
            tracing::info!("{why}: config unchanged");
        }
    }

    /// The audit record of a configuration reload: the keys that changed, or why the file
    /// did not load.
    fn audit_reload(&self, why: &str, changed: Option<String>, error: Option<String>) {
        self.audit(crate::audit::Event {
            kind: "admin".into(),
            source: Some(why.to_string()),
            action: Some("config.reload".into()),
            target: changed.filter(|c| !c.is_empty()),
            status: Some(if error.is_some() { 400 } else { 200 }),
            error,
            ..Default::default()
        });
    }

    pub(super) fn snapshot(&self) -> crate::service::Snapshot {
        use crate::service::{ModelPhase, Snapshot};
        let stats = self.app.served().map(|s| s.scheduler.stats());
        let default = self.app.models.default_name();
        let state = match self.app.models.phase(&default) {
            Some(crate::api::registry::Phase::Ready(_)) => ModelPhase::Ready,
            Some(crate::api::registry::Phase::Failed(msg)) => ModelPhase::Failed(msg),
            Some(
                crate::api::registry::Phase::Unloaded | crate::api::registry::Phase::Unloading(_),
            ) => ModelPhase::Failed(format!("the default model `{default}` is not loaded")),
            Some(crate::api::registry::Phase::Loading) | None => ModelPhase::Loading,
        };
        let provider = *lock(&self.provider);
        Snapshot {
            model: default,
            state,
            provider: provider.map(Provider::as_str),
            heartbeat: stats.map(|s| s.heartbeat),
            requests: stats.map_or(0, |s| s.completed + s.errors + s.cancellations),
            tokens: stats.map_or(0, |s| s.tokens_generated),
            active: stats.map_or(0, |s| s.active),
            queued: stats.map_or(0, |s| s.queued),
        }
    }
}

impl Daemon {
    /// The embedding model's state for `status`.
    fn embeddings_status(&self) -> crate::api::wire::admin::EmbeddingsStatus {
        match (self.app.embedder(), self.app.embedder_problem()) {
            (Some(e), _) => crate::api::wire::admin::EmbeddingsStatus {
                ready: true,
                model: Some(e.name().to_string()),
                model_id: Some(e.model_id().to_string()),
                provider: Some(e.provider().as_str()),
                inputs: Some(e.stats().inputs),
                ..Default::default()
            },
            (None, Some((loading, cause))) => crate::api::wire::admin::EmbeddingsStatus {
                loading: Some(loading),
                cause: Some(cause),
                ..Default::default()
            },
            (None, None) => Default::default(),
        }
    }
}

impl AdminBackend for Daemon {
    fn usage(&self, req: &Value) -> Result<Value, String> {
        let usage = self.app.usage.get().ok_or("this daemon counts no usage")?;
        let today = crate::usage::day_of(crate::util::unix_now());
        let q = crate::api::usage_http::UsageQuery::from_request(req, today)?;
        let keys = self.app.keys().list().map_err(|e| e.to_string())?;
        crate::api::usage_http::report(usage, &keys, &self.app.config().group_quotas, &q, today)
            .map_err(|e| e.to_string())
    }

    fn audit(&self, event: crate::audit::Event) {
        if let Some(log) = self.app.audit.get() {
            if let Err(e) = log.append(event) {
                tracing::error!(error = %e, "audit record not written");
            }
        }
    }

    fn model_op(&self, op: crate::api::registry::ModelOp) -> Result<Value, String> {
        let info = self.app.models.apply(&op).map_err(|e| e.to_string())?;
        if info.default {
            *lock(&self.provider) = info
                .provider
                .and_then(|_| self.app.served().map(|s| s.scheduler.provider()));
        }
        Ok(crate::api::wire::value(&info))
    }

    fn agents(&self, op: crate::api::agents_http::AgentOp) -> Result<Value, String> {
        crate::api::agents_http::run(&self.app.agents, op, Some(&self.app.model_names()))
            .map_err(|e| e.message)
    }

    fn kb(&self, cmd: &str, req: &Value) -> Result<Value, String> {
        let kb = self.app.kb().map_err(|e| e.message)?;
        let base = kb.base();
        let text = |k: &str| -> Result<String, String> {
            req.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("`{cmd}` needs `{k}` (a string)"))
        };
        match cmd {
            "kb.collections" => Ok(crate::api::wire::value(
                &crate::api::wire::kb::CollectionList {
                    data: base.list_collections().iter().map(Into::into).collect(),
                },
            )),
            "kb.create" => base
                .create_collection(&text("name")?)
                .map(|c| crate::api::wire::value(&crate::api::wire::kb::KbCollection::from(&c)))
                .map_err(|e| e.to_string()),
            "kb.delete" => {
                let name = text("name")?;
                base.delete_collection(&name).map_err(|e| e.to_string())?;
                Ok(crate::api::wire::value(
                    &crate::api::wire::kb::CollectionDeleted {
                        name,
                        deleted: true,
                    },
                ))
            }
            "kb.ingest" => {
                use base64::Engine as _;
                let collection = text("collection")?;
                let filename = text("filename")?;
                let ct = text("content_type")?;
                let kind = crate::kb::DocKind::from_content_type(&ct)
                    .ok_or_else(|| format!("unsupported content type `{ct}`"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text("data")?)
                    .map_err(|e| format!("`data` is not base64: {e}"))?;
                if req.get("create").and_then(Value::as_bool) == Some(true)
                    && base.collection(&collection).is_err()
                {
                    match base.create_collection(&collection) {
                        // Another client created it in between: fine.
                        Ok(_) | Err(crate::kb::base::KbError::Conflict(_)) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                let (doc, replaced) = kb
                    .ingest(&collection, &filename, kind, &bytes)
                    .map_err(|e| e.to_string())?;
                Ok(crate::api::wire::value(&crate::api::wire::kb::KbUploaded {
                    doc: (&doc).into(),
                    replaced,
                }))
            }
            other => Err(format!("unknown knowledge-base command `{other}`")),
        }
    }

    fn status(&self) -> Value {
        let id = self.tls.identity();
        let app = crate::api::admin_http::app_status(&self.app);
        let uptime = self.started.elapsed().as_secs_f64();
        let provider = *lock(&self.provider);
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let default_model = app.models.iter().find(|m| m.default).cloned();
        crate::api::wire::value(&crate::api::wire::admin::AdminStatus {
            model_dir: default_model
                .as_ref()
                .map(|m| m.dir.clone())
                .unwrap_or_default(),
            // Why the default model failed to load (null while loading or once ready).
            model_error: default_model.and_then(|m| m.error),
            provider: provider.map(Provider::as_str),
            tokens_per_s: app.tokens_generated.map(|n| n as f64 / uptime.max(1e-9)),
            app,
            uptime_s: uptime.round(),
            listen: lock(&self.listen_text).clone(),
            embeddings: self.embeddings_status(),
            tls: crate::api::wire::admin::TlsStatus {
                source: id.kind.as_str(),
                fingerprint_sha256: id.fingerprint.clone(),
                not_after: id.not_after_utc(),
                ca: id.ca_path.as_deref().map(path),
                cert: path(&id.cert_path),
            },
        })
    }

    fn models(&self) -> Value {
        let dir = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut list: Vec<crate::api::wire::admin::AdminModel> = self
            .app
            .models
            .list()
            .into_iter()
            .map(|m| crate::api::wire::admin::AdminModel {
                ready: m.state == "ready",
                id: m.id,
                kind: "chat",
                dir: m.dir,
                provider: m.provider,
                context: m.context_length,
                state: Some(m.state),
                default: Some(m.default),
                pinned: Some(m.pinned),
                memory_mib: Some(m.memory_bytes.div_ceil(1 << 20)),
                error: m.error,
            })
            .collect();
        if let Some(e) = self.app.embedder() {
            list.push(crate::api::wire::admin::AdminModel {
                id: e.name().to_string(),
                kind: "embedding",
                dir: dir(&e.spec().dir),
                provider: Some(e.provider().as_str()),
                context: Some(e.max_tokens()),
                ready: true,
                state: Some("ready"),
                default: None,
                pinned: None,
                memory_mib: None,
                error: None,
            });
        }
        crate::api::wire::value(&list)
    }

    /// Called off the reactor by the admin plane's `reload` (e.g. after `edgeseek tls rotate`),
    /// after it reloaded the API keys: the config as on SIGHUP, then the certificate (new
    /// handshakes get the re-read certificate, established connections keep theirs).
    fn reload(&self) -> Result<(), String> {
        self.reload_config("admin reload");
        match self.tls.reload() {
            Ok(id) => {
                tracing::info!(fingerprint = %id.fingerprint, not_after = %id.not_after_utc(), source = id.kind.as_str(), "admin reload: TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "admin reload: TLS reload failed; keeping the current certificate");
                Err(e.to_string())
            }
        }
    }
}
