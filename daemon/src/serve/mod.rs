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
//!
//! Parts: this file resolves the model and starts everything; `daemon` holds what the
//! running server knows about itself (status, reload, the admin socket's backend); `load`
//! loads the chat and embedding models on their own threads; `listen` binds, announces and
//! runs the accept loop with its signals and certificate renewal timer.

mod daemon;
mod listen;
mod load;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::AdminBackend;
use crate::api::{ApiConfig, App};
use crate::config::{Config, ConfigError, Paths};
use crate::engine::embed;
use crate::keys::{KeyError, KeyStore};
use crate::store::{Store, StoreError};
use crate::tls::{TlsError, TlsServer};
use crate::util::lock;

use daemon::Daemon;

pub use crate::service::{DEFAULT_LISTEN, DEV_LISTEN};
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
    #[error("agents: {0}")]
    Agents(#[from] crate::agents::AgentError),
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
    pub paths: Paths,
    pub listen: Option<String>,
    pub models: Vec<PathBuf>,
}

/// The chat models to serve: every `--model`; else config `engine.model` then
/// `engine.models`; else the first directory (by name) under `<state_dir>/models` that is not
/// an embedding model. Each must be a directory; names must differ (they route requests).
fn pick_models(
    models: &[PathBuf],
    configured: Vec<PathBuf>,
    state_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, ServeError> {
    let (dirs, what) = if !models.is_empty() {
        (models.to_vec(), "--model")
    } else if !configured.is_empty() {
        (configured, "engine.model(s)")
    } else {
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
        let first = found.into_iter().next().ok_or_else(|| {
            ServeError::Usage(format!(
                "no model: pass --model DIR or put a model directory under {}",
                dir.display()
            ))
        })?;
        (vec![first], "models")
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(ServeError::Usage(format!(
                "{what}: {} is not a directory",
                d.display()
            )));
        }
        let name = crate::api::registry::served_name(&d).map_err(ServeError::Usage)?;
        if let Some((_, other)) = out.iter().find(|(n, _)| *n == name) {
            return Err(ServeError::Usage(format!(
                "{what}: {} and {} would both be served as `{name}`; models are told apart by \
                 their directory names",
                other.display(),
                d.display()
            )));
        }
        out.push((name, d));
    }
    Ok(out)
}

pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    let config = Config::load(opts.paths.config.as_deref(), opts.paths.dev)?;
    let state_dir = config.state_dir(opts.paths.state_dir.as_deref(), opts.paths.dev);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| ServeError::Usage(format!("state dir {}: {e}", state_dir.display())))?;
    let listen = opts
        .listen
        .clone()
        .or_else(|| config.server.listen.clone())
        .unwrap_or_else(|| {
            if opts.paths.dev {
                DEV_LISTEN
            } else {
                DEFAULT_LISTEN
            }
            .to_string()
        });
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
    let configured: Vec<PathBuf> = config
        .model_dir(&state_dir)
        .into_iter()
        .chain(config.more_model_dirs(&state_dir))
        .collect();
    let models = pick_models(&opts.models, configured, &state_dir)?;
    if let Some(d) = &config.engine.default_model {
        if !models.iter().any(|(n, _)| n == d) {
            return Err(ServeError::Usage(format!(
                "engine.default_model: `{d}` is none of the models to serve ({})",
                models
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let registry = crate::api::registry::Registry::new(
        models,
        config.engine.default_model.clone(),
        crate::api::registry::Loader {
            library: config.runtime.library.clone(),
            opts: config.provider_options(&state_dir),
            sched: config.scheduler_config(),
            models_dir: state_dir.join("models"),
            budget_bytes: config.memory_budget_bytes(),
        },
    );

    let tls = Arc::new(TlsServer::new(&config.tls, &state_dir)?);
    let id = tls.identity();
    tracing::info!(
        fingerprint = %id.fingerprint,
        not_after = %id.not_after_utc(),
        ca = ?id.ca_path,
        "TLS identity"
    );
    let store = Store::open_in(&state_dir, crate::schema::MIGRATIONS)?;
    let agents = crate::agents::AgentStore::open(store.clone())?;
    let usage = Arc::new(crate::usage::UsageStore::open(
        store.clone(),
        crate::util::unix_now(),
    )?);
    let keys = KeyStore::open(store)?;
    let app = Arc::new(App::new(
        registry,
        keys,
        agents,
        ApiConfig {
            max_body_bytes: config.server.max_body_bytes,
            max_inflight_per_key: config.max_inflight_per_key(),
            agents: agent_limits(&config.agents),
            group_quotas: config.usage.groups.clone(),
        },
    ));

    let audit = Arc::new(
        crate::audit::AuditLog::open(&state_dir.join("audit"), config.audit.clone())
            .map_err(|e| ServeError::Usage(e.to_string()))?,
    );
    let _ = app.audit.set(audit.clone());
    let _ = app.usage.set(usage.clone());
    sync_every_second(Arc::downgrade(&audit), Arc::downgrade(&usage));
    drop(audit);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgeseek-io")
        .build()
        .map_err(|e| ServeError::Runtime(format!("tokio runtime: {e}")))?;
    let daemon = Arc::new(Daemon {
        app,
        tls,
        config_file: opts.paths.config.clone(),
        dev: opts.paths.dev,
        server: std::sync::RwLock::new(config.server.clone()),
        started_with: config.clone(),
        applied: std::sync::RwLock::new(config.clone()),
        started: Instant::now(),
        provider: std::sync::Mutex::new(None),
        listen_text: std::sync::Mutex::new(String::new()),
        loader: std::sync::Mutex::new(None),
        embed_loader: std::sync::Mutex::new(None),
    });
    daemon.app.set_directory(
        directory(&config).map_err(|e| ServeError::Usage(format!("directory sign-in: {e}")))?,
    );
    daemon
        .app
        .set_web(web_tools(&config).map_err(|e| ServeError::Usage(format!("web tools: {e}")))?);
    let local: Vec<String> = daemon.app.models.names();
    let remotes = remotes(&config, &local)?;
    // Health checks of the remote models' upstreams, until the daemon stops.
    let (stop_checks, checks) = tokio::sync::watch::channel(false);
    for (_, up) in remotes.all() {
        runtime.spawn(up.clone().watch(checks.clone()));
    }
    daemon.app.set_remotes(remotes);
    // The HTTPS admin endpoints report the same status object as the admin socket.
    let backend: std::sync::Weak<dyn AdminBackend> = Arc::downgrade(&daemon) as _;
    daemon.app.admin.set_backend(backend);
    let result = runtime.block_on(listen::serve(
        &daemon,
        &config,
        opts.paths.dev,
        &state_dir,
        addr,
        activated,
    ));
    let _ = stop_checks.send(true);
    let chat_loaded = wait_for_loader(&daemon.loader, Duration::from_secs(2));
    let embed_loaded = wait_for_loader(&daemon.embed_loader, Duration::from_secs(2));
    let still_loading = !(chat_loaded && embed_loaded) || daemon.app.models.changing();
    // Stop the engine after the listener is gone: running requests have had their grace
    // period; what is left ends with an error event.
    daemon.app.models.shutdown();
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

/// The remote models of `[remote]` and the overflow rules, checked against the local models
/// (`local`): a name is one or the other, and a rule overflows a local model. Key and CA
/// files are read here, so a bad one stops the start with its cause.
fn remotes(config: &Config, local: &[String]) -> Result<crate::api::upstream::Remotes, ServeError> {
    let mut ups = std::collections::BTreeMap::new();
    for (name, rc) in &config.remote {
        if local.contains(name) {
            return Err(ServeError::Usage(format!(
                "remote.{name}: a local model is already served under this name"
            )));
        }
        let up = crate::remote::Upstream::new(name, rc.clone())
            .map_err(|e| ServeError::Usage(e.to_string()))?;
        ups.insert(name.clone(), Arc::new(up));
    }
    for (i, o) in config.overflow.iter().enumerate() {
        if !local.contains(&o.model) {
            return Err(ServeError::Usage(format!(
                "overflow[{i}].model: `{}` is none of the local models ({})",
                o.model,
                local.join(", ")
            )));
        }
    }
    Ok(crate::api::upstream::Remotes::new(
        ups,
        &config.overflow,
        config.residency.clone(),
    ))
}

/// Waits up to `limit` for a model loading thread to finish; `false` if it is still running.
fn wait_for_loader(
    loader: &std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    limit: Duration,
) -> bool {
    let Some(handle) = lock(loader).take() else {
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

/// The API's agent limits from `[agents]`.
pub(crate) fn agent_limits(c: &crate::config::AgentsConfig) -> crate::api::agent::run::AgentLimits {
    crate::api::agent::run::AgentLimits {
        tool_timeout: Duration::from_secs(c.tool_timeout_s),
        result_chars: c.result_chars,
    }
}

/// The outbound tools `[fetch]`, `[web_search]` and `[mcp]` describe (contacting nothing yet).
/// Once a second, while they are open: sync the audit log to disk (records are written to
/// the file at once; this bounds what a power cut can take) and store the usage counted
/// since (so a kill -9 loses at most that second). A thread of its own: both block.
fn sync_every_second(
    log: std::sync::Weak<crate::audit::AuditLog>,
    usage: std::sync::Weak<crate::usage::UsageStore>,
) {
    let spawned = std::thread::Builder::new()
        .name("edgeseek-sync".into())
        .spawn(move || loop {
            let (l, u) = (log.upgrade(), usage.upgrade());
            if l.is_none() && u.is_none() {
                return;
            }
            if let Some(Err(e)) = l.map(|l| l.sync()) {
                tracing::error!(error = %e, "audit log sync failed");
            }
            if let Some(Err(e)) = u.map(|u| u.flush()) {
                tracing::error!(error = %e, "usage counters not stored; kept for the next try");
            }
            std::thread::sleep(Duration::from_secs(1));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "sync thread did not start; audit and usage sync at shutdown");
    }
}

pub(crate) fn web_tools(c: &Config) -> Result<crate::api::WebTools, crate::web::WebError> {
    let fetcher = crate::web::Fetcher::new(&c.fetch)?;
    let search = match &c.web_search.searxng_url {
        Some(_) => Some(crate::web::WebSearch::new(&c.web_search, fetcher.clone())?),
        None => None,
    };
    Ok(crate::api::WebTools {
        fetcher: Some(fetcher),
        search,
        mcp: crate::mcp::Mcp::new(c.mcp.clone()),
    })
}

/// The directory client of `[auth.ldap]` (reads the service password and CA file), if set.
pub(super) fn directory(
    config: &Config,
) -> Result<Option<Arc<crate::auth::Directory>>, crate::auth::LdapError> {
    config
        .auth
        .ldap
        .as_ref()
        .map(|l| crate::auth::Directory::new(l).map(Arc::new))
        .transpose()
}
