//! `edgeseek.toml`: schema, defaults and validation. Errors name the file and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{Provider, ProviderOptions, ProviderPolicy, SchedulerConfig};

pub const DEFAULT_CONFIG: &str = "/etc/edgeseek/edgeseek.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edgeseek";
pub const DEV_STATE_DIR: &str = ".edgeseek";

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Where the daemon keeps its state (redb, TLS identity, TensorRT engines).
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so.*` (file or directory). Searched first.
    pub library: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Execution providers in order of preference.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub provider_policy: ProviderPolicy,
    /// Threads for CPU kernels; 0 = one per core.
    #[serde(default)]
    pub intra_threads: usize,
    #[serde(default = "yes")]
    pub tensorrt_fp16: bool,
    /// TensorRT engine cache; default `<state_dir>/tensorrt-cache`.
    pub tensorrt_cache: Option<PathBuf>,
    #[serde(default)]
    pub device_id: i32,
    /// Most sequences decoding together (one batched forward per step).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most requests waiting for a slot; more are refused at once (HTTP 429).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// KV cache budget of the running batch, MiB.
    #[serde(default = "default_kv_budget_mb")]
    pub kv_budget_mb: u64,
    /// Prompt tokens prefilled between decode steps of running streams.
    #[serde(default = "default_prefill_chunk")]
    pub prefill_chunk: usize,
}

fn default_max_batch() -> usize {
    8
}
fn default_max_queue() -> usize {
    64
}
fn default_kv_budget_mb() -> u64 {
    1024
}
fn default_prefill_chunk() -> usize {
    256
}

fn default_providers() -> Vec<Provider> {
    vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
}

fn yes() -> bool {
    true
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            providers: default_providers(),
            provider_policy: ProviderPolicy::Fallback,
            intra_threads: 0,
            tensorrt_fp16: true,
            tensorrt_cache: None,
            device_id: 0,
            max_batch: default_max_batch(),
            max_queue: default_max_queue(),
            kv_budget_mb: default_kv_budget_mb(),
            prefill_chunk: default_prefill_chunk(),
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
        if self.engine.intra_threads > 1024 {
            return Err(bad("engine.intra_threads", "must be 0..=1024"));
        }
        if !(1..=256).contains(&self.engine.max_batch) {
            return Err(bad("engine.max_batch", "must be 1..=256"));
        }
        if !(1..=100_000).contains(&self.engine.max_queue) {
            return Err(bad("engine.max_queue", "must be 1..=100000"));
        }
        if !(1..=1 << 20).contains(&self.engine.kv_budget_mb) {
            return Err(bad("engine.kv_budget_mb", "must be 1..=1048576"));
        }
        if !(1..=65_536).contains(&self.engine.prefill_chunk) {
            return Err(bad("engine.prefill_chunk", "must be 1..=65536"));
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

    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            max_batch: self.engine.max_batch,
            max_queue: self.engine.max_queue,
            kv_budget_bytes: self.engine.kv_budget_mb << 20,
            prefill_chunk: self.engine.prefill_chunk,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let e = parse(&format!("[engine]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse("[engine]\nprovider = [\"cpu\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/edgeseek/edgeseek.toml") && e.contains("provider"),
            "{e}"
        );
    }

    #[test]
    fn unknown_provider_is_rejected() {
        let e = parse("[engine]\nproviders = [\"rocm\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rocm"), "{e}");
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
}
