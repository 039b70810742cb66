//! Loading `libonnxruntime` and choosing the execution provider.
//!
//! The library is never linked at build time (`load-dynamic`): an appliance ships the CPU or
//! the GPU build of ONNX Runtime next to the daemon, and development machines extract it from
//! the pinned PyPI wheel (`scripts/setup`). We look for it in a fixed, documented order and
//! refuse anything older than the ONNX Runtime API this build of `ort` was compiled against.
//!
//! Execution providers are registered one at a time with `error_on_failure()`, so a provider
//! that cannot start is an error we see instead of a silent fall back to CPU inside ONNX
//! Runtime. The policy then decides: `strict` fails with the provider's own cause, `fallback`
//! logs it and tries the next provider in the configured order.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use serde::{Deserialize, Serialize};

/// Directory searched when neither the config nor `ORT_DYLIB_PATH` name a library.
pub const SYSTEM_LIB_DIR: &str = "/usr/lib/edgeseek";
/// Development location filled by `scripts/setup` (relative to the working directory).
pub const DEV_LIB_DIR: &str = ".runtime";

#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    #[error(
        "ONNX Runtime library not usable (need libonnxruntime >= 1.{need}; run scripts/setup or set runtime.library / ORT_DYLIB_PATH); tried: {tried}"
    )]
    LibraryNotFound { need: u32, tried: String },
    #[error("creating the ONNX Runtime environment failed: {0}")]
    Environment(String),
    #[error("execution provider {provider} is unavailable: {cause}")]
    ProviderUnavailable { provider: Provider, cause: String },
    #[error("no execution provider could load {model}: {causes}")]
    NoProvider { model: String, causes: String },
    #[error("loading {model} on {provider} failed: {cause}")]
    Load {
        model: String,
        provider: Provider,
        cause: String,
    },
}

/// An execution provider edgeseek knows how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a preferred provider cannot be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderPolicy {
    /// Use the first provider that works, logging why the others did not.
    #[default]
    Fallback,
    /// Use the first configured provider or fail with its cause.
    Strict,
}

/// Execution-provider settings (config `[engine]`).
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    pub providers: Vec<Provider>,
    pub policy: ProviderPolicy,
    /// Intra-op threads for CPU kernels; 0 lets ONNX Runtime decide (one per core).
    pub intra_threads: usize,
    /// TensorRT engine cache directory (engines take minutes to build; keep them).
    pub tensorrt_cache: Option<PathBuf>,
    pub tensorrt_fp16: bool,
    pub device_id: i32,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            policy: ProviderPolicy::Fallback,
            intra_threads: 0,
            tensorrt_cache: None,
            tensorrt_fp16: true,
            device_id: 0,
        }
    }
}

/// The loaded library and the process-wide ONNX Runtime environment.
pub struct Runtime {
    pub library: PathBuf,
    pub version: String,
    env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first load: the chat model and the embedding model load on two threads,
/// and only one may create the process-wide environment.
static INIT: Mutex<()> = Mutex::new(());

/// Candidate library locations, in the documented order.
pub fn library_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from(SYSTEM_LIB_DIR));
    out.push(PathBuf::from(DEV_LIB_DIR));
    out
}

/// A directory holds `libonnxruntime.so.X.Y.Z` (the wheel has no unversioned name) or
/// `libonnxruntime.so`; pick the newest versioned file.
fn resolve_in_dir(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let version: Vec<u32> = if name == "libonnxruntime.so" {
            Vec::new()
        } else if let Some(v) = name.strip_prefix("libonnxruntime.so.") {
            match v
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
            {
                Ok(v) => v,
                Err(_) => continue,
            }
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(bv, _)| version > *bv) {
            best = Some((version, e.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// Load ONNX Runtime once per process. Later calls return the same runtime.
pub fn runtime(configured: Option<&Path>) -> Result<&'static Runtime, OrtError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _init = crate::util::lock(&INIT);
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let need = ort::MINOR_VERSION;
    let mut tried = Vec::new();
    for cand in library_candidates(configured) {
        let file = if cand.is_dir() {
            match resolve_in_dir(&cand) {
                Some(f) => f,
                None => {
                    tried.push(format!("{} (no libonnxruntime.so* inside)", cand.display()));
                    continue;
                }
            }
        } else if cand.is_file() {
            cand.clone()
        } else {
            tried.push(format!("{} (not found)", cand.display()));
            continue;
        };
        let file = std::fs::canonicalize(&file).unwrap_or(file);
        match ort::init_from(&file) {
            Ok(builder) => {
                let env = builder
                    .with_name("edgeseek")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| OrtError::Environment(e.to_string()))?;
                let version = library_version(&file);
                let rt = Runtime {
                    library: file,
                    version,
                    env,
                };
                tracing::info!(library = %rt.library.display(), version = %rt.version, "loaded ONNX Runtime");
                return Ok(RUNTIME.get_or_init(|| rt));
            }
            Err(e) => tried.push(format!("{} ({})", file.display(), short_load_error(&e))),
        }
    }
    Err(OrtError::LibraryNotFound {
        need,
        tried: tried.join("; "),
    })
}

fn short_load_error(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::BadVersion { version_str, .. } => {
            format!("version {version_str} is too old")
        }
        other => other.to_string(),
    }
}

/// The version from the file name is what the admin installed; ONNX Runtime reports the same.
fn library_version(file: &Path) -> String {
    file.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(str::to_string)
        .unwrap_or_else(|| format!("1.{}+", ort::MINOR_VERSION))
}

impl Runtime {
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// Create a session for `model`, registering providers according to `opts`.
    /// Returns the session and the provider that actually runs it.
    pub fn load_session(
        &self,
        model: &Path,
        opts: &ProviderOptions,
    ) -> Result<(Session, Provider), OrtError> {
        let model_name = model.display().to_string();
        let mut causes = Vec::new();
        let providers: Vec<Provider> = if opts.providers.is_empty() {
            vec![Provider::Cpu]
        } else {
            opts.providers.clone()
        };
        for (i, &provider) in providers.iter().enumerate() {
            match self.try_provider(model, provider, opts) {
                Ok(session) => {
                    if i > 0 {
                        tracing::warn!(provider = %provider, skipped = %causes.join("; "), "using a fallback execution provider");
                    }
                    tracing::info!(provider = %provider, model = %model_name, "model session ready");
                    return Ok((session, provider));
                }
                Err(TryError::Provider(cause)) => {
                    if opts.policy == ProviderPolicy::Strict {
                        return Err(OrtError::ProviderUnavailable { provider, cause });
                    }
                    tracing::warn!(provider = %provider, %cause, "execution provider unavailable");
                    causes.push(format!("{provider}: {cause}"));
                }
                Err(TryError::Load(cause)) => {
                    // A CPU load failure is about the model, not the provider: report it as is.
                    if provider == Provider::Cpu || opts.policy == ProviderPolicy::Strict {
                        return Err(OrtError::Load {
                            model: model_name,
                            provider,
                            cause,
                        });
                    }
                    tracing::warn!(provider = %provider, %cause, "model failed to load on provider");
                    causes.push(format!("{provider}: {cause}"));
                }
            }
        }
        Err(OrtError::NoProvider {
            model: model_name,
            causes: causes.join("; "),
        })
    }

    /// Whether `provider` can run a session on this machine, by creating one for a
    /// one-node graph with exactly the registration `load_session` uses (`edgeseek doctor`).
    /// `Err` is the cause as `load_session` would report it, e.g. "CUDA execution provider is
    /// not enabled in this build …" with the CPU build, or a missing `libcublasLt.so.13`.
    /// Nothing is written: the TensorRT engine cache is not used.
    pub fn probe_provider(&self, provider: Provider, opts: &ProviderOptions) -> Result<(), String> {
        let opts = ProviderOptions {
            tensorrt_cache: None,
            ..opts.clone()
        };
        let mut b = self
            .session_builder(provider, &opts)
            .map_err(TryError::into_cause)?;
        b.commit_from_memory(&probe_model())
            .map(drop)
            .map_err(|e| classify_commit(provider, e.to_string()).into_cause())
    }

    fn try_provider(
        &self,
        model: &Path,
        provider: Provider,
        opts: &ProviderOptions,
    ) -> Result<Session, TryError> {
        let mut b = self.session_builder(provider, opts)?;
        b.commit_from_file(model)
            .map_err(|e| classify_commit(provider, e.to_string()))
    }

    /// A session builder with `provider` registered (error on failure), as every load uses.
    fn session_builder(
        &self,
        provider: Provider,
        opts: &ProviderOptions,
    ) -> Result<SessionBuilder, TryError> {
        // `ort` builder errors carry the builder back and are not Send/Sync: keep only text.
        let load = |e: ort::Error<SessionBuilder>| TryError::Load(e.to_string());
        let mut b = Session::builder(&self.env)
            .map_err(|e| TryError::Load(e.to_string()))?
            // Nothing may be registered behind our back: we want to know what runs.
            .with_auto_device(AutoDevicePolicy::PreferCPU)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(load)?;
        if opts.intra_threads > 0 {
            b = b.with_intra_threads(opts.intra_threads).map_err(load)?;
        }
        let dispatch = match provider {
            Provider::Cpu => None,
            Provider::Cuda => Some(
                ep::CUDA::default()
                    .with_device_id(opts.device_id)
                    .build()
                    .error_on_failure(),
            ),
            Provider::Tensorrt => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(opts.device_id)
                    .with_fp16(opts.tensorrt_fp16);
                if let Some(dir) = &opts.tensorrt_cache {
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(dir.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(dir.display());
                }
                Some(trt.build().error_on_failure())
            }
        };
        if let Some(d) = dispatch {
            b = b
                .with_execution_providers([d])
                .map_err(|e| TryError::Provider(provider_cause(provider, &e.to_string())))?;
        }
        Ok(b)
    }
}

enum TryError {
    Provider(String),
    Load(String),
}

impl TryError {
    fn into_cause(self) -> String {
        match self {
            TryError::Provider(c) | TryError::Load(c) => c,
        }
    }
}

/// A failed session creation is the provider's fault when the message is about it.
fn classify_commit(provider: Provider, text: String) -> TryError {
    if provider != Provider::Cpu && looks_like_provider_failure(&text) {
        TryError::Provider(provider_cause(provider, &text))
    } else {
        TryError::Load(text)
    }
}

/// A minimal ONNX model (opset 13): `y = Identity(x)`, `x` and `y` float `[1]`, hand-encoded
/// protobuf (ModelProto: ir_version 1, graph 7, opset_import 8). Enough for a provider to
/// initialise its device when a session is created.
fn probe_model() -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn int(field: u64, v: u64) -> Vec<u8> {
        let mut o = Vec::new();
        varint(field << 3, &mut o);
        varint(v, &mut o);
        o
    }
    fn bytes(field: u64, b: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        varint((field << 3) | 2, &mut o);
        varint(b.len() as u64, &mut o);
        o.extend_from_slice(b);
        o
    }
    // ValueInfoProto { name, type: TypeProto { tensor_type: { elem_type FLOAT, shape [1] } } }
    let value_info = |name: &str| {
        let dim = bytes(1, &int(1, 1));
        let shape = bytes(2, &dim);
        let tensor = [int(1, 1), shape].concat();
        let ty = bytes(1, &tensor);
        [bytes(1, name.as_bytes()), bytes(2, &ty)].concat()
    };
    let node = [bytes(1, b"x"), bytes(2, b"y"), bytes(4, b"Identity")].concat();
    let graph = [
        bytes(1, &node),
        bytes(2, b"probe"),
        bytes(11, &value_info("x")),
        bytes(12, &value_info("y")),
    ]
    .concat();
    let opset = [bytes(1, b""), int(2, 13)].concat();
    [int(1, 8), bytes(7, &graph), bytes(8, &opset)].concat()
}

/// ONNX Runtime's messages are long and sometimes name the provider oddly; lead with the fact
/// an admin needs and keep the original text for the details.
fn provider_cause(provider: Provider, text: &str) -> String {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let name = match provider {
        Provider::Cuda => "CUDA",
        Provider::Tensorrt => "TensorRT",
        Provider::Cpu => "CPU",
    };
    if lower.contains("not enabled")
        || lower.contains("not supported in this build")
        || lower.contains("not available in this build")
    {
        format!(
            "{name} execution provider is not enabled in this build of ONNX Runtime (the CPU build is installed; a GPU appliance needs onnxruntime-gpu)"
        )
    } else if lower.contains(".so") || lower.contains("cannot open shared object") {
        format!("{name} libraries could not be loaded (NVIDIA driver / CUDA 13 runtime missing?): {text}")
    } else {
        text.to_string()
    }
}

fn looks_like_provider_failure(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    l.contains("cuda") || l.contains("tensorrt") || l.contains("cudnn") || l.contains("cublas")
}

/// Which providers this ONNX Runtime build was compiled with (not whether they can start).
pub fn compiled_providers() -> Vec<String> {
    let mut out = Vec::new();
    for (name, avail) in [
        (
            "tensorrt",
            <ep::TensorRT as ep::ExecutionProvider>::is_available(),
        ),
        ("cuda", <ep::CUDA as ep::ExecutionProvider>::is_available()),
    ] {
        if matches!(avail, Ok(true)) {
            out.push(name.to_string());
        }
    }
    out.push("cpu".to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_versioned_library_in_dir() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "libonnxruntime.so.1.30.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime.so.1.4.0",
            "other.so",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let got = resolve_in_dir(d.path()).unwrap();
        assert_eq!(got.file_name().unwrap(), "libonnxruntime.so.1.31.1");
    }

    #[test]
    fn empty_dir_has_no_library() {
        let d = tempfile::tempdir().unwrap();
        assert!(resolve_in_dir(d.path()).is_none());
    }

    #[test]
    fn configured_path_comes_first() {
        let c = library_candidates(Some(Path::new("/opt/x/libonnxruntime.so.1.31.1")));
        assert_eq!(c[0], PathBuf::from("/opt/x/libonnxruntime.so.1.31.1"));
        assert_eq!(c[c.len() - 2], PathBuf::from(SYSTEM_LIB_DIR));
        assert_eq!(c[c.len() - 1], PathBuf::from(DEV_LIB_DIR));
    }

    #[test]
    fn cause_names_the_provider() {
        let c = provider_cause(
            Provider::Cuda,
            "CUDA execution provider is not enabled in this build.",
        );
        assert!(
            c.starts_with("CUDA execution provider is not enabled in this build"),
            "{c}"
        );
    }
}
