//! The chat models of one daemon: each with its own ONNX Runtime session, scheduler and KV
//! budget, routed by the request's `model` (or the `default` alias).
//!
//! A model is *unloaded* (known: configured, or loaded once), *loading*, *ready*, *unloading*
//! (no new requests; the running ones finish) or *failed* (with the cause). Loads are charged
//! against one memory budget (`engine.memory_budget_mb`): a model costs its weight files plus
//! the KV and prefix-cache budgets its scheduler may fill; a load that does not fit is refused
//! naming the budget, and nothing is started. Unloading waits for the model's running requests
//! (up to [`DRAIN`]), then stops its scheduler; only then is its cost given back, so the budget
//! never counts a model twice nor forgets one that still holds memory.
//!
//! A pinned model cannot be unloaded until it is unpinned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::ApiError;
use super::Served;
use crate::engine::{Engine, ProviderOptions, Scheduler, SchedulerConfig};
use crate::util::{lock, read, unix_now, write};

/// The name clients may use for the default model.
pub const DEFAULT_ALIAS: &str = "default";

/// How long an unload waits for the model's running requests before it stops them (they end
/// with an error event or a 503, never a dropped connection).
pub const DRAIN: Duration = Duration::from_secs(60);

/// How models are loaded: the daemon's engine settings (not live: a change needs a restart).
#[derive(Clone, Debug)]
pub struct Loader {
    pub library: Option<PathBuf>,
    pub opts: ProviderOptions,
    pub sched: SchedulerConfig,
    /// Where bare model names live (`<state_dir>/models`).
    pub models_dir: PathBuf,
    /// Bytes all loaded models may cost together (0: no limit).
    pub budget_bytes: u64,
}

#[derive(Clone)]
pub enum Phase {
    Unloaded,
    Loading,
    Ready(Arc<Served>),
    /// Refusing new requests while the running ones finish.
    Unloading(Arc<Served>),
    Failed(String),
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Unloaded => "unloaded",
            Phase::Loading => "loading",
            Phase::Ready(_) => "ready",
            Phase::Unloading(_) => "unloading",
            Phase::Failed(_) => "failed",
        }
    }
}

struct Slot {
    dir: PathBuf,
    phase: Phase,
    pinned: bool,
    /// What the model is charged while loading, loaded or unloading (0 otherwise).
    charged: u64,
}

/// What admins and `/v1/models` see of one model.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub id: String,
    pub dir: String,
    /// `unloaded`, `loading`, `ready`, `unloading` or `failed`.
    pub state: &'static str,
    pub default: bool,
    pub pinned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// Bytes charged against the memory budget (weights + KV + prefix cache).
    pub memory_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<u64>,
    /// Why it failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    /// KV cache bytes its running requests hold now (0 when idle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_used_bytes: Option<u64>,
}

/// A refused load, unload or pin: the one-line cause, and the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model `{0}` (known: {1})")]
    NotFound(String, String),
    #[error("{0}")]
    BadModel(String),
    #[error("model `{0}` is pinned; unpin it first (edgeseek models unpin {0})")]
    Pinned(String),
    #[error("model `{0}` is {1}; try again when it is done")]
    Busy(String, &'static str),
    #[error(
        "loading `{name}` needs {need_mib} MiB (weights {weights_mib} MiB + KV and prefix cache \
         {cache_mib} MiB), but {used_mib} of the {budget_mib} MiB memory budget are in use \
         (engine.memory_budget_mb); unload a model first or raise the budget"
    )]
    OverBudget {
        name: String,
        need_mib: u64,
        weights_mib: u64,
        cache_mib: u64,
        used_mib: u64,
        budget_mib: u64,
    },
    #[error("model `{0}` failed to load: {1}")]
    LoadFailed(String, String),
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let msg = e.to_string();
        match e {
            RegistryError::NotFound(ref m, _) => {
                let mut e = ApiError::model_not_found(m);
                e.message = msg;
                e
            }
            RegistryError::BadModel(_) => ApiError::invalid_param("model", msg),
            RegistryError::Pinned(_) | RegistryError::Busy(..) => ApiError::conflict(msg),
            RegistryError::OverBudget { .. } => ApiError::conflict(msg).with_code("over_budget"),
            RegistryError::LoadFailed(..) => ApiError::unavailable(msg),
        }
    }
}

/// A change to the served models, as the admin API and the admin socket name it.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// A known name, a name under `<state_dir>/models`, or a directory.
    Load {
        model: String,
        pin: bool,
    },
    Unload(String),
    Pin(String, bool),
}

impl ModelOp {
    /// The audit action of the op (`models.load` …).
    pub fn action(&self) -> &'static str {
        match self {
            ModelOp::Load { .. } => "models.load",
            ModelOp::Unload(_) => "models.unload",
            ModelOp::Pin(_, true) => "models.pin",
            ModelOp::Pin(_, false) => "models.unpin",
        }
    }
}

/// `GET /v1/admin/models` and the socket's `models.list`: the chat models and the budget.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelInfo>,
    /// What the loaded models are charged together, bytes.
    pub memory_used_bytes: u64,
    /// `engine.memory_budget_mb` in bytes (0: no limit).
    pub memory_budget_bytes: u64,
}

pub struct Registry {
    slots: RwLock<BTreeMap<String, Slot>>,
    /// The names in the order they became known (configuration order first): loading at
    /// start, listings and the default follow it.
    order: RwLock<Vec<String>>,
    default: RwLock<String>,
    loader: Loader,
    /// Loads and unloads one at a time: the budget check and the charge are one step.
    one_change: Mutex<()>,
}

const MIB: u64 = 1 << 20;

impl Registry {
    /// A registry of `models` (served name, directory), none loaded; the first is the default
    /// unless `default` names another.
    pub fn new(models: Vec<(String, PathBuf)>, default: Option<String>, loader: Loader) -> Self {
        let first = models.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let order = models.iter().map(|(n, _)| n.clone()).collect();
        let slots = models
            .into_iter()
            .map(|(name, dir)| {
                (
                    name,
                    Slot {
                        dir,
                        phase: Phase::Unloaded,
                        pinned: false,
                        charged: 0,
                    },
                )
            })
            .collect();
        Registry {
            slots: RwLock::new(slots),
            order: RwLock::new(order),
            default: RwLock::new(default.unwrap_or(first)),
            loader,
            one_change: Mutex::new(()),
        }
    }

    /// The default model's served name.
    pub fn default_name(&self) -> String {
        read(&self.default).clone()
    }

    /// Every known model's name, in order.
    pub fn names(&self) -> Vec<String> {
        read(&self.order).clone()
    }

    fn known(&self) -> String {
        let names = self.names();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The served name a request's `model` means (`default` → the default model).
    pub fn canonical(&self, requested: &str) -> String {
        if requested == DEFAULT_ALIAS {
            self.default_name()
        } else {
            requested.to_string()
        }
    }

    /// The model a request names, ready to serve; or the error to answer: 404 for a name this
    /// daemon does not serve now (unknown, unloaded or being unloaded), 503 while it loads or
    /// when its load failed (with the cause: only keyed handlers ask).
    pub fn resolve(&self, requested: &str) -> Result<Arc<Served>, ApiError> {
        let name = self.canonical(requested);
        let slots = read(&self.slots);
        let Some(slot) = slots.get(&name) else {
            return Err(ApiError::model_not_found(requested));
        };
        match &slot.phase {
            Phase::Ready(s) => Ok(s.clone()),
            Phase::Loading => {
                let mut e = ApiError::loading();
                e.message = format!("the model `{name}` is still loading; retry shortly");
                Err(e)
            }
            // Callers are authenticated (an anonymous `/readyz` gets no cause).
            Phase::Failed(why) => Err(ApiError::unavailable(format!(
                "the model `{name}` failed to load: {why}"
            ))),
            Phase::Unloaded | Phase::Unloading(_) => {
                let mut e = ApiError::model_not_found(requested);
                e.message = format!(
                    "The model `{name}` is not loaded (an administrator can load it: edgeseek \
                     models load {name})"
                );
                Err(e)
            }
        }
    }

    /// The phase of one model.
    pub fn phase(&self, name: &str) -> Option<Phase> {
        read(&self.slots)
            .get(&self.canonical(name))
            .map(|s| s.phase.clone())
    }

    /// The default model, if it serves.
    pub fn default_served(&self) -> Option<Arc<Served>> {
        match self.phase(&self.default_name()) {
            Some(Phase::Ready(s)) => Some(s),
            _ => None,
        }
    }

    /// Every model serving now (ready or finishing its last requests).
    pub fn running(&self) -> Vec<Arc<Served>> {
        read(&self.slots)
            .values()
            .filter_map(|s| match &s.phase {
                Phase::Ready(m) | Phase::Unloading(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Bytes charged against the budget now.
    pub fn used_bytes(&self) -> u64 {
        read(&self.slots).values().map(|s| s.charged).sum()
    }

    pub fn budget_bytes(&self) -> u64 {
        self.loader.budget_bytes
    }

    pub fn list(&self) -> Vec<ModelInfo> {
        let default = self.default_name();
        let order = self.names();
        let slots = read(&self.slots);
        order
            .iter()
            .filter_map(|name| slots.get(name).map(|s| (name, s)))
            .map(|(name, s)| {
                let served = match &s.phase {
                    Phase::Ready(m) | Phase::Unloading(m) => Some(m),
                    _ => None,
                };
                let stats = served.map(|m| m.scheduler.stats());
                ModelInfo {
                    id: name.clone(),
                    dir: s.dir.to_string_lossy().into_owned(),
                    state: s.phase.as_str(),
                    default: *name == default,
                    pinned: s.pinned,
                    provider: served.map(|m| m.scheduler.provider().as_str()),
                    context_length: served.map(|m| m.scheduler.spec().context_length),
                    memory_bytes: s.charged,
                    loaded_at: served.map(|m| m.loaded_at),
                    error: match &s.phase {
                        Phase::Failed(e) => Some(e.clone()),
                        _ => None,
                    },
                    active: stats.map(|st| st.active),
                    queued: stats.map(|st| st.queued),
                    kv_used_bytes: stats.map(|st| st.kv_used_bytes),
                }
            })
            .collect()
    }

    /// The directory and served name a load request means: a known name, a name under
    /// `<state_dir>/models`, or a directory path.
    fn locate(&self, what: &str) -> Result<(String, PathBuf), RegistryError> {
        let name = self.canonical(what);
        if let Some(s) = read(&self.slots).get(&name) {
            return Ok((name, s.dir.clone()));
        }
        let dir = if what.contains('/') {
            PathBuf::from(what)
        } else {
            self.loader.models_dir.join(what)
        };
        if !dir.is_dir() {
            return Err(RegistryError::NotFound(what.to_string(), self.known()));
        }
        let name = served_name(&dir).map_err(RegistryError::BadModel)?;
        if let Some(s) = read(&self.slots).get(&name) {
            if s.dir != dir {
                return Err(RegistryError::BadModel(format!(
                    "a model named `{name}` is already known from {}; models are told apart by \
                     their directory names",
                    s.dir.display()
                )));
            }
        }
        Ok((name, dir))
    }

    /// Run one change. Blocking (a load is seconds of ONNX Runtime work; an unload waits for
    /// running requests): call off the reactor.
    pub fn apply(&self, op: &ModelOp) -> Result<ModelInfo, RegistryError> {
        match op {
            ModelOp::Load { model, pin } => self.load(model, *pin),
            ModelOp::Unload(m) => self.unload(m),
            ModelOp::Pin(m, p) => self.pin(m, *p),
        }
    }

    pub fn model_list(&self) -> ModelList {
        ModelList {
            object: "list",
            data: self.list(),
            memory_used_bytes: self.used_bytes(),
            memory_budget_bytes: self.budget_bytes(),
        }
    }

    /// Load a model (known name, name under the models directory, or path) and wait until it
    /// serves. Blocking: seconds of ONNX Runtime work; call off the reactor. Already ready:
    /// nothing to do.
    pub fn load(&self, what: &str, pin: bool) -> Result<ModelInfo, RegistryError> {
        let (name, dir) = {
            let _one = lock(&self.one_change);
            let (name, dir) = self.locate(what)?;
            let mut slots = write(&self.slots);
            if !slots.contains_key(&name) {
                write(&self.order).push(name.clone());
            }
            let slot = slots.entry(name.clone()).or_insert(Slot {
                dir: dir.clone(),
                phase: Phase::Unloaded,
                pinned: false,
                charged: 0,
            });
            match slot.phase {
                Phase::Ready(_) => {
                    slot.pinned |= pin;
                    drop(slots);
                    return Ok(self.info(&name));
                }
                Phase::Loading => return Err(RegistryError::Busy(name, "loading")),
                Phase::Unloading(_) => return Err(RegistryError::Busy(name, "unloading")),
                Phase::Unloaded | Phase::Failed(_) => {}
            }
            let weights = dir_bytes(&dir);
            let cache = self.loader.sched.kv_budget_bytes + self.loader.sched.prefix_cache_bytes;
            let need = weights + cache;
            let used: u64 = slots.values().map(|s| s.charged).sum();
            let budget = self.loader.budget_bytes;
            if budget > 0 && used + need > budget {
                return Err(RegistryError::OverBudget {
                    name,
                    need_mib: need.div_ceil(MIB),
                    weights_mib: weights.div_ceil(MIB),
                    cache_mib: cache.div_ceil(MIB),
                    used_mib: used.div_ceil(MIB),
                    budget_mib: budget / MIB,
                });
            }
            let slot = slots.get_mut(&name).expect("inserted above");
            slot.phase = Phase::Loading;
            slot.charged = need;
            slot.pinned |= pin;
            (name, dir)
        };
        let t = Instant::now();
        let l = &self.loader;
        let loaded = Engine::load(&dir, l.library.as_deref(), &l.opts)
            .map_err(|e| e.to_string())
            .and_then(|engine| {
                Scheduler::start(engine, l.sched.clone()).map_err(|e| e.to_string())
            });
        let mut slots = write(&self.slots);
        let slot = slots.get_mut(&name).expect("a loading slot stays");
        match loaded {
            Ok(scheduler) => {
                tracing::info!(
                    model = %name,
                    provider = scheduler.provider().as_str(),
                    secs = t.elapsed().as_secs_f64(),
                    "model ready"
                );
                slot.phase = Phase::Ready(Arc::new(Served {
                    name: name.clone(),
                    scheduler,
                    loaded_at: unix_now(),
                }));
                drop(slots);
                Ok(self.info(&name))
            }
            Err(msg) => {
                tracing::error!(model = %name, error = %msg, "model failed to load");
                slot.phase = Phase::Failed(msg.clone());
                slot.charged = 0;
                Err(RegistryError::LoadFailed(name, msg))
            }
        }
    }

    /// Stop serving a model: new requests get 404 at once, running ones finish (up to
    /// [`DRAIN`]), then its scheduler stops and its memory is given back. Blocking.
    pub fn unload(&self, what: &str) -> Result<ModelInfo, RegistryError> {
        let name = self.canonical(what);
        let served = {
            let _one = lock(&self.one_change);
            let mut slots = write(&self.slots);
            if !slots.contains_key(&name) {
                return Err(RegistryError::NotFound(what.to_string(), self.known()));
            }
            let slot = slots.get_mut(&name).expect("checked above");
            if slot.pinned {
                return Err(RegistryError::Pinned(name));
            }
            match std::mem::replace(&mut slot.phase, Phase::Unloaded) {
                Phase::Ready(s) => {
                    slot.phase = Phase::Unloading(s.clone());
                    s
                }
                Phase::Loading => {
                    slot.phase = Phase::Loading;
                    return Err(RegistryError::Busy(name, "loading"));
                }
                Phase::Unloading(s) => {
                    slot.phase = Phase::Unloading(s);
                    return Err(RegistryError::Busy(name, "unloading"));
                }
                // Nothing runs: it stays known, unloaded.
                Phase::Unloaded | Phase::Failed(_) => {
                    slot.charged = 0;
                    drop(slots);
                    return Ok(self.info(&name));
                }
            }
        };
        let t = Instant::now();
        loop {
            let st = served.scheduler.stats();
            if st.active + st.queued == 0 || t.elapsed() >= DRAIN {
                if st.active + st.queued > 0 {
                    tracing::warn!(model = %name, active = st.active, queued = st.queued, "unload: stopping requests still running after the grace period");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        served.scheduler.clone().shutdown();
        let mut slots = write(&self.slots);
        if let Some(slot) = slots.get_mut(&name) {
            slot.phase = Phase::Unloaded;
            slot.charged = 0;
        }
        drop(slots);
        tracing::info!(model = %name, secs = t.elapsed().as_secs_f64(), "model unloaded");
        Ok(self.info(&name))
    }

    /// Pin or unpin a known model.
    pub fn pin(&self, what: &str, pinned: bool) -> Result<ModelInfo, RegistryError> {
        let name = self.canonical(what);
        {
            let mut slots = write(&self.slots);
            if !slots.contains_key(&name) {
                return Err(RegistryError::NotFound(what.to_string(), self.known()));
            }
            let slot = slots.get_mut(&name).expect("checked above");
            slot.pinned = pinned;
        }
        Ok(self.info(&name))
    }

    fn info(&self, name: &str) -> ModelInfo {
        self.list()
            .into_iter()
            .find(|m| m.id == name)
            .expect("a known model")
    }

    /// Whether a load or unload is under way (the daemon must not exit normally while ONNX
    /// Runtime loads: its static destructors would abort the process).
    pub fn changing(&self) -> bool {
        read(&self.slots)
            .values()
            .any(|s| matches!(s.phase, Phase::Loading | Phase::Unloading(_)))
    }

    /// Stop every scheduler (daemon exit): what still runs ends with an error event.
    pub fn shutdown(&self) {
        for s in self.running() {
            s.scheduler.clone().shutdown();
        }
    }

    /// Mark a model as failed without loading it (a start that could not even try).
    pub fn fail(&self, name: &str, why: String) {
        if let Some(s) = write(&self.slots).get_mut(name) {
            s.phase = Phase::Failed(why);
            s.charged = 0;
        }
    }
}

/// The served name of a model directory: its final path component.
pub fn served_name(dir: &Path) -> Result<String, String> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{}: cannot derive a model name from this path",
                dir.display()
            )
        })
}

/// Bytes of a model's files (its weights, mostly), counting one level of subdirectories.
fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        rd.filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 1)
}

#[cfg(test)]
mod tests;
