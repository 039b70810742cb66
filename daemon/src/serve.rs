//! `edgeseek serve`: wiring. Config → state dir → TLS identity → key store → HTTPS listener
//! and admin socket, with the model loading on a background thread (inference routes and
//! `/readyz` answer 503 until it is ready). SIGTERM / ctrl-c drain gracefully; SIGHUP (and the
//! admin socket's `reload`) re-reads the config file (applying the `[server]` limits live and
//! logging what needs a restart), the certificate and the API keys without dropping
//! connections.
//!
//! The listener's connections (caps with eviction of idle connections, handshake, first
//! request, idle, keep-alive and body timers, header limits) are [`crate::conn`]'s; per-route
//! body limits are in `api`. The generated server certificate is renewed by a timer when it
//! enters its renewal window. There is no plaintext listener.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminBackend;
use crate::api::{ApiConfig, App, EmbedState, KbState, ModelState, Served};
use crate::config::{Config, ConfigError, ServerConfig};
use crate::engine::{embed, Embedder, Engine, Provider, Scheduler};
use crate::kb::base::{IndexConfig, KnowledgeBase};
use crate::kb::chunk::ChunkOptions;
use crate::kb::ingest::Ingestor;
use crate::kb::parse::ParseOptions;
use crate::kb::Embed;
use crate::keys::{KeyError, KeyStore};
use crate::store::{Store, StoreError};
use crate::tls::{TlsError, TlsServer};

/// Default listen address of an appliance, and of `--dev`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";
pub const DEV_LISTEN: &str = "127.0.0.1:8443";
/// Name of the file in the state dir that holds the bound address (`--listen …:0`).
pub const ADDR_FILE: &str = "serve.addr";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("API keys: {0}")]
    Keys(#[from] KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

impl ServeError {
    /// Exit code: 2 for configuration and environment, 1 for failures while serving.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Runtime(_) => 1,
            _ => 2,
        }
    }
}

/// `edgeseek serve` flags (`--config`, `--dev`, `--state-dir` are global).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub models: Vec<PathBuf>,
}

/// The first `--model`, else config `engine.model`, else the first directory (by name) under
/// `<state_dir>/models` that is not an embedding model.
fn pick_model(
    models: &[PathBuf],
    configured: Option<PathBuf>,
    state_dir: &Path,
) -> Result<PathBuf, ServeError> {
    if let Some(m) = models.first() {
        if !m.is_dir() {
            return Err(ServeError::Usage(format!(
                "--model {}: not a directory",
                m.display()
            )));
        }
        return Ok(m.clone());
    }
    if let Some(m) = configured {
        if !m.is_dir() {
            return Err(ServeError::Usage(format!(
                "engine.model: {} is not a directory",
                m.display()
            )));
        }
        return Ok(m);
    }
    let dir = state_dir.join("models");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !embed::is_embedding_model_dir(p))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        ServeError::Usage(format!(
            "no model: pass --model DIR or put a model directory under {}",
            dir.display()
        ))
    })
}

/// The served name of a model directory: its final path component.
fn model_name(dir: &Path) -> Result<String, ServeError> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            ServeError::Usage(format!(
                "{}: cannot derive a model name from this path",
                dir.display()
            ))
        })
}

pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    let config = Config::load(opts.config.as_deref(), opts.dev)?;
    let state_dir = config.state_dir(opts.state_dir.as_deref(), opts.dev);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| ServeError::Usage(format!("state dir {}: {e}", state_dir.display())))?;
    let listen = opts
        .listen
        .clone()
        .or_else(|| config.server.listen.clone())
        .unwrap_or_else(|| if opts.dev { DEV_LISTEN } else { DEFAULT_LISTEN }.to_string());
    let addr: SocketAddr = listen.parse().map_err(|_| {
        ServeError::Usage(format!(
            "--listen `{listen}`: expected ADDRESS:PORT, e.g. 127.0.0.1:8443"
        ))
    })?;
    // Socket activation (systemd/edgeseek.socket) replaces `--listen`.
    let activated = crate::service::activated_listener().map_err(ServeError::Usage)?;
    if activated.is_some() && opts.listen.is_some() {
        tracing::info!("socket-activated: --listen is ignored");
    }
    let model_dir = pick_model(&opts.models, config.model_dir(&state_dir), &state_dir)?;
    let name = model_name(&model_dir)?;
    if opts.models.len() > 1 {
        tracing::warn!(
            model = %name,
            ignored = opts.models.len() - 1,
            "one model is served per daemon for now; the other --model directories are not loaded"
        );
    }

    let tls = Arc::new(TlsServer::new(&config.tls, &state_dir)?);
    let id = tls.identity();
    tracing::info!(
        fingerprint = %id.fingerprint,
        not_after = %id.not_after_utc(),
        ca = ?id.ca_path,
        "TLS identity"
    );
    let keys = KeyStore::open(Store::open_in(&state_dir)?)?;
    let app = Arc::new(App::new(
        name.clone(),
        model_dir.clone(),
        keys,
        ApiConfig {
            max_body_bytes: config.server.max_body_bytes,
        },
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgeseek-io")
        .build()
        .map_err(|e| ServeError::Runtime(format!("tokio runtime: {e}")))?;
    let daemon = Arc::new(Daemon {
        app,
        tls,
        config_file: opts.config.clone(),
        dev: opts.dev,
        server: std::sync::RwLock::new(config.server.clone()),
        started_with: config.clone(),
        started: Instant::now(),
        provider: std::sync::Mutex::new(None),
        listen_text: std::sync::Mutex::new(String::new()),
        loader: std::sync::Mutex::new(None),
        embed_loader: std::sync::Mutex::new(None),
    });
    // The HTTPS admin endpoints report the same status object as the admin socket.
    let backend: std::sync::Weak<dyn AdminBackend> = Arc::downgrade(&daemon) as _;
    daemon.app.admin.set_backend(backend);
    let result = runtime.block_on(serve(
        &daemon, &config, opts.dev, &state_dir, addr, activated,
    ));
    let chat_loaded = wait_for_loader(&daemon.loader, Duration::from_secs(2));
    let embed_loaded = wait_for_loader(&daemon.embed_loader, Duration::from_secs(2));
    let still_loading = !(chat_loaded && embed_loaded);
    // Stop the engine after the listener is gone: running requests have had their grace
    // period; what is left ends with an error event.
    if let Some(served) = daemon.app.served() {
        served.scheduler.clone().shutdown();
    }
    if let Some(e) = daemon.app.embedder() {
        e.shutdown();
    }
    let _ = std::fs::remove_file(state_dir.join(ADDR_FILE));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if still_loading {
        // Stopped while ONNX Runtime is still loading the model on another thread: a normal
        // exit runs C++ static destructors under it and aborts (SIGABRT), so leave at once.
        tracing::warn!("exiting while the model is still loading");
        let code = result
            .as_ref()
            .map_or_else(|e| i32::from(e.exit_code()), |()| 0);
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: `_exit` ends the process without running atexit handlers or destructors.
        unsafe { nix::libc::_exit(code) };
    }
    result
}

/// Waits up to `limit` for a model loading thread to finish; `false` if it is still running.
fn wait_for_loader(
    loader: &std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    limit: Duration,
) -> bool {
    let Some(handle) = daemon_loader(loader).take() else {
        return true;
    };
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = handle.join();
    true
}

/// What the admin socket reports about the running server.
struct Daemon {
    app: Arc<App>,
    tls: Arc<TlsServer>,
    /// `--config` and `--dev`: a reload finds the file by the same rules as the start.
    config_file: Option<PathBuf>,
    dev: bool,
    /// The configuration the daemon started with (settings that need a restart stay as here).
    started_with: Config,
    /// `[server]` limits in effect; a reload replaces them, each new connection reads them.
    server: std::sync::RwLock<ServerConfig>,
    started: Instant,
    provider: std::sync::Mutex<Option<Provider>>,
    listen_text: std::sync::Mutex<String>,
    /// The model loading thread (see [`wait_for_loader`]).
    loader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The embedding model loading thread.
    embed_loader: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Daemon {
    fn server(&self) -> ServerConfig {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the config file: apply the settings that can change live (the `[server]`
    /// limits; see [`Config::changes_from`]), log each change, and name those that need a
    /// restart. A file that does not load is logged and the running configuration is kept.
    fn reload_config(&self, why: &str) {
        let new = match Config::load(self.config_file.as_deref(), self.dev) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "{why}: the config file does not load; keeping the running configuration");
                return;
            }
        };
        let current = {
            let mut c = self.started_with.clone();
            c.server = self.server();
            c
        };
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
        if changes.iter().any(|c| c.live) {
            *self.server.write().unwrap_or_else(|p| p.into_inner()) = new.server.clone();
            self.app.set_config(ApiConfig {
                max_body_bytes: new.server.max_body_bytes,
            });
        }
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

    fn snapshot(&self) -> crate::service::Snapshot {
        use crate::service::{ModelPhase, Snapshot};
        let stats = self.app.served().map(|s| s.scheduler.stats());
        let state = match (&stats, self.app.failure()) {
            (Some(_), _) => ModelPhase::Ready,
            (None, Some(msg)) => ModelPhase::Failed(msg),
            (None, None) => ModelPhase::Loading,
        };
        let provider = *self.provider.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            model: self.app.model_name.clone(),
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
    fn embeddings_status(&self) -> Value {
        match (self.app.embedder(), self.app.embedder_problem()) {
            (Some(e), _) => json!({
                "model": e.name(),
                "model_id": e.model_id(),
                "ready": true,
                "provider": e.provider().as_str(),
                "inputs": e.stats().inputs,
            }),
            (None, Some((loading, cause))) => json!({
                "ready": false,
                "loading": loading,
                "cause": cause,
            }),
            (None, None) => json!({"ready": false}),
        }
    }
}

impl AdminBackend for Daemon {
    fn kb(&self, cmd: &str, req: &Value) -> Result<Value, String> {
        let kb = self.app.kb().map_err(|e| e.message)?;
        let base = kb.base();
        let text = |k: &str| -> Result<String, String> {
            req.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("`{cmd}` needs `{k}` (a string)"))
        };
        let coll_json = |c: &crate::kb::base::CollectionInfo| {
            json!({"name": c.name, "created_at": c.created, "documents": c.documents,
                   "chunks": c.chunks})
        };
        match cmd {
            "kb.collections" => Ok(json!({
                "data": base.list_collections().iter().map(coll_json).collect::<Vec<_>>()
            })),
            "kb.create" => base
                .create_collection(&text("name")?)
                .map(|c| coll_json(&c))
                .map_err(|e| e.to_string()),
            "kb.delete" => {
                let name = text("name")?;
                base.delete_collection(&name).map_err(|e| e.to_string())?;
                Ok(json!({"name": name, "deleted": true}))
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
                Ok(
                    json!({"id": doc.id, "collection": doc.collection, "filename": doc.filename,
                          "chunks": doc.chunks, "pages": doc.pages, "replaced": replaced}),
                )
            }
            other => Err(format!("unknown knowledge-base command `{other}`")),
        }
    }

    fn status(&self) -> Value {
        let id = self.tls.identity();
        let served = self.app.served();
        let stats = served.as_ref().map(|s| s.scheduler.stats());
        let uptime = self.started.elapsed().as_secs_f64();
        let provider = *self.provider.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "model": self.app.model_name,
            "model_dir": self.app.model_dir,
            "ready": served.is_some(),
            // Why the model failed to load (null while loading or once ready).
            "model_error": self.app.failure(),
            "provider": provider.map(Provider::as_str),
            "queue_depth": stats.map(|s| s.queued),
            "active_sequences": stats.map(|s| s.active),
            "tokens_generated": stats.map(|s| s.tokens_generated),
            "tokens_per_s": stats.map(|s| s.tokens_generated as f64 / uptime.max(1e-9)),
            "cancellations": stats.map(|s| s.cancellations),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": uptime.round(),
            "listen": *self.listen_text.lock().unwrap_or_else(|p| p.into_inner()),
            "embeddings": self.embeddings_status(),
            "tls": {
                "source": id.kind.as_str(),
                "fingerprint_sha256": id.fingerprint,
                "not_after": id.not_after_utc(),
                "ca": id.ca_path,
                "cert": id.cert_path,
            },
        })
    }

    fn models(&self) -> Value {
        let provider = *self.provider.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = vec![match self.app.served() {
            Some(s) => json!({
                "id": self.app.model_name,
                "kind": "chat",
                "dir": self.app.model_dir,
                "provider": provider.map(Provider::as_str),
                "context": s.scheduler.spec().context_length,
                "ready": true,
            }),
            None => json!({
                "id": self.app.model_name,
                "kind": "chat",
                "dir": self.app.model_dir,
                "ready": false,
            }),
        }];
        if let Some(e) = self.app.embedder() {
            list.push(json!({
                "id": e.name(),
                "kind": "embedding",
                "dir": e.spec().dir,
                "provider": e.provider().as_str(),
                "context": e.max_tokens(),
                "ready": true,
            }));
        }
        Value::Array(list)
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

/// Load the model and start the scheduler on a plain thread (seconds of ONNX Runtime work
/// that must not run on the reactor), then flip the API to ready.
fn load_in_background(daemon: Arc<Daemon>, config: &Config, state_dir: &Path) {
    let owner = daemon.clone();
    let library = config.runtime.library.clone();
    let opts = config.provider_options(state_dir);
    let sched_cfg = config.scheduler_config();
    let spawned = std::thread::Builder::new()
        .name("edgeseek-load".into())
        .spawn(move || {
            let app = &daemon.app;
            let t = Instant::now();
            let loaded = Engine::load(&app.model_dir, library.as_deref(), &opts)
                .map_err(|e| e.to_string())
                .and_then(|engine| Scheduler::start(engine, sched_cfg).map_err(|e| e.to_string()));
            match loaded {
                Ok(scheduler) => {
                    let provider = scheduler.provider();
                    *daemon.provider.lock().unwrap_or_else(|p| p.into_inner()) = Some(provider);
                    tracing::info!(
                        model = %app.model_name,
                        provider = provider.as_str(),
                        secs = t.elapsed().as_secs_f64(),
                        "model ready"
                    );
                    app.set_state(ModelState::Ready(Arc::new(Served {
                        scheduler,
                        loaded_at: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    })));
                }
                Err(msg) => {
                    tracing::error!(model = %app.model_name, error = %msg, "model failed to load");
                    app.set_state(ModelState::Failed(msg));
                }
            }
        });
    match spawned {
        Ok(handle) => *daemon_loader(&owner.loader) = Some(handle),
        Err(e) => tracing::error!(error = %e, "cannot start the model loading thread"),
    }
}

/// Find and load the embedding model on its own thread (the chat model does not wait for
/// it, nor it for the chat model). No model, or a failed load, leaves `/v1/embeddings` at
/// 503 with the cause; chat is unaffected.
/// Open the knowledge base over the daemon's database with the loaded embedding model:
/// reads every collection into memory (BM25, vectors; HNSW graphs build in the background).
fn open_kb(app: &App, embedder: &Embedder, cfg: IndexConfig) -> KbState {
    let t = Instant::now();
    let embed: Arc<dyn Embed> = Arc::new(embedder.clone());
    // Chunks leave room for the model's [CLS]/[SEP] within its limit.
    let chunk = ChunkOptions {
        max_tokens: ChunkOptions::default()
            .max_tokens
            .min(embed.max_tokens().saturating_sub(2)),
        ..ChunkOptions::default()
    };
    match KnowledgeBase::open(app.keys().store().clone(), embed, cfg) {
        Ok(kb) => {
            let n = kb.list_collections().len();
            tracing::info!(
                collections = n,
                secs = t.elapsed().as_secs_f64(),
                "knowledge base ready"
            );
            KbState::Ready(Arc::new(Ingestor::new(kb, ParseOptions::default(), chunk)))
        }
        Err(e) => {
            tracing::error!(error = %e, "knowledge base failed to open");
            KbState::Off(format!("it failed to open: {e}"))
        }
    }
}

fn load_embedder_in_background(daemon: &Arc<Daemon>, config: &Config, state_dir: &Path) {
    let ec = &config.embeddings;
    let app = &daemon.app;
    if !ec.enabled {
        app.set_embedder(EmbedState::Off(
            "embeddings are disabled in the configuration (embeddings.enabled = false)".into(),
        ));
        app.set_kb(KbState::Off(
            "it needs the embedding model (embeddings.enabled = false)".into(),
        ));
        return;
    }
    let dir = match embed::locate(ec.model.as_deref(), state_dir) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "no embedding model; /v1/embeddings answers 503");
            app.set_kb(KbState::Off(format!("it needs the embedding model: {e}")));
            app.set_embedder(if ec.model.is_some() {
                EmbedState::Failed(e.to_string())
            } else {
                EmbedState::Off(e.to_string())
            });
            return;
        }
    };
    app.set_embedder(EmbedState::Loading);
    let owner = daemon.clone();
    let library = config.runtime.library.clone();
    let opts = config.provider_options(state_dir);
    let cfg = config.embedder_config();
    let kb_cfg = config.kb.clone();
    let spawned = std::thread::Builder::new()
        .name("edgeseek-embed-load".into())
        .spawn(move || {
            let t = Instant::now();
            let state = match Embedder::start(&dir, library.as_deref(), &opts, &cfg) {
                Ok(embedder) => {
                    tracing::info!(
                        model = %embedder.model_id(),
                        provider = embedder.provider().as_str(),
                        secs = t.elapsed().as_secs_f64(),
                        "embedding model ready"
                    );
                    EmbedState::Ready {
                        embedder,
                        loaded_at: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "embedding model failed to load");
                    EmbedState::Failed(e.to_string())
                }
            };
            let kb = match &state {
                EmbedState::Ready { embedder, .. } => open_kb(&owner.app, embedder, kb_cfg),
                EmbedState::Failed(e) | EmbedState::Off(e) => {
                    KbState::Off(format!("the embedding model failed to load: {e}"))
                }
                EmbedState::Loading => KbState::Loading,
            };
            owner.app.set_embedder(state);
            owner.app.set_kb(kb);
        });
    match spawned {
        Ok(handle) => *daemon_loader(&daemon.embed_loader) = Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the embedding model loading thread");
            app.set_embedder(EmbedState::Failed(format!(
                "cannot start the loading thread: {e}"
            )));
        }
    }
}

fn daemon_loader(
    m: &std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
) -> std::sync::MutexGuard<'_, Option<std::thread::JoinHandle<()>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(
    daemon: &Arc<Daemon>,
    config: &Config,
    dev: bool,
    state_dir: &Path,
    addr: SocketAddr,
    activated: Option<std::net::TcpListener>,
) -> Result<(), ServeError> {
    let listener = match activated {
        Some(l) => TcpListener::from_std(l).map_err(|source| ServeError::Bind { addr, source })?,
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?,
    };
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    *daemon.listen_text.lock().unwrap_or_else(|p| p.into_inner()) = format!("https://{local}");

    // Shutdown signal shared by the accept loop and the admin socket.
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_path = crate::admin::socket_path(dev, state_dir);
    let admin = tokio::spawn({
        let keys = daemon.app.keys().clone();
        let backend: Arc<dyn AdminBackend> = daemon.clone();
        let mut stop = stop_rx.clone();
        async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::admin::serve_admin(&admin_path, keys, backend, shutdown).await {
                tracing::error!(error = %e, "admin socket stopped");
            }
        }
    });

    // Installed before the address is announced, so a supervisor that signals as soon as it
    // sees it gets the graceful path.
    let signals = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
    ) {
        (Ok(term), Ok(hup)) => Signals { term, hup },
        (Err(e), _) | (_, Err(e)) => {
            return Err(ServeError::Runtime(format!(
                "cannot install signal handlers: {e}"
            )));
        }
    };

    load_in_background(daemon.clone(), config, state_dir);
    // tokens/s history for the console's chart; the console's compressed assets.
    tokio::spawn(crate::api::admin_http::run_sampler(
        daemon.app.clone(),
        stop_rx.clone(),
    ));
    tokio::task::spawn_blocking(crate::api::console::prepare);
    load_embedder_in_background(daemon, config, state_dir);

    // One line a supervisor or test can parse, then the address file (`--listen …:0`).
    {
        let id = daemon.tls.identity();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on https://{local}");
        let _ = writeln!(out, "tls fingerprint sha256 {}", id.fingerprint);
        if let Some(ca) = &id.ca_path {
            let _ = writeln!(out, "tls ca {}", ca.display());
        }
        let _ = out.flush();
    }
    let _ = std::fs::write(state_dir.join(ADDR_FILE), format!("{local}\n"));
    tracing::info!(addr = %local, model = %daemon.app.model_name, "serving HTTPS");

    // sd_notify: READY once the model has settled, STATUS lines, watchdog pings.
    let supervisor = tokio::spawn({
        let d = daemon.clone();
        crate::service::supervise(move || d.snapshot(), stop_rx.clone())
    });

    accept_loop(daemon, listener, signals).await;
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    let _ = admin.await;
    Ok(())
}

/// SIGTERM and SIGHUP streams.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// How often the generated server certificate is checked for its renewal window (it is
/// renewed [`crate::tls::RENEW_BEFORE_DAYS`] days before expiry, so hourly is plenty).
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// Serve connections ([`crate::conn`]) until SIGTERM / ctrl-c; SIGHUP reloads.
async fn accept_loop(daemon: &Arc<Daemon>, listener: TcpListener, signals: Signals) {
    let Signals { mut term, mut hup } = signals;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = daemon.app.clone();
    let ctx = crate::conn::Listener {
        tls: daemon.tls.clone(),
        limits: {
            let d = daemon.clone();
            Box::new(move || d.server())
        },
        handler: move |req, peer| crate::api::handle(app.clone(), req, peer),
    };
    let control = async move {
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_CHECK, RENEW_CHECK);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("interrupt: shutting down");
                    crate::service::stopping();
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    crate::service::stopping();
                    break;
                }
                _ = hup.recv() => {
                    crate::service::reloading();
                    daemon.reload_config("SIGHUP");
                    match daemon.tls.reload() {
                        Ok(id) => tracing::info!(fingerprint = %id.fingerprint, not_after = %id.not_after_utc(), "SIGHUP: TLS certificate (and client CA / CRL) reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate"),
                    }
                    if let Err(e) = daemon.app.keys().reload() {
                        tracing::error!(error = %e, "SIGHUP: API key reload failed");
                    }
                    crate::service::reloaded(&format!("reloaded; serving {}", daemon.app.model_name));
                }
                _ = renew.tick() => {
                    // Off the reactor: key generation and file writes.
                    let tls = daemon.tls.clone();
                    match tokio::task::spawn_blocking(move || tls.renew_if_due()).await {
                        Ok(Ok(Some(id))) => tracing::info!(fingerprint = %id.fingerprint, not_after = %id.not_after_utc(), "TLS certificate renewed"),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "TLS certificate renewal failed; keeping the current certificate"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate renewal task failed"),
                    }
                }
            }
        }
        let _ = stop_tx.send(());
    };
    let serve = crate::conn::serve(listener, ctx, async move {
        let _ = stop_rx.await;
    });
    tokio::join!(serve, control);
}
