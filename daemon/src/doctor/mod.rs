//! `edgeseek doctor`: checks an installation and says, one line per check, what is in order
//! (`OK`), what works but deserves attention (`WARN`), what stops the appliance from serving
//! (`FAIL`) and what cannot be checked here (`SKIP`), with a fix on every line that is not OK.
//!
//! It reads and never writes: no TLS identity or database is created, the TensorRT cache is
//! not touched, the daemon is only asked for its `status`. It works with and without a running
//! daemon, as root (everything) or as another user (what that user may see; the rest is a
//! WARN that says so). Each check reuses the code the daemon itself runs: ONNX Runtime
//! discovery and provider registration (`engine::ort_env`), model directories
//! (`engine::model::ModelSpec::read`), the TLS identity (`tls::manage`), the admin socket.
//!
//! One submodule per family of checks: `state` (config, user, state directory, disk, clock),
//! `tls`, `runtime` (ONNX Runtime, providers, GPU), `models` (chat and embedding models) and
//! `service` (port, running daemon, systemd unit).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use self::models::{check_embeddings, check_models};
use self::remote::check_remotes;
use self::runtime::{check_gpu, check_runtime};
use self::service::{check_daemon, check_port, check_unit, query_daemon};
use self::state::{check_clock, check_config, check_disk, check_state_dir, check_user};
use self::tls::check_tls;
use crate::config::{Config, Paths};
use crate::engine::ort_env;

mod models;
mod remote;
mod runtime;
mod service;
mod state;
mod tls;

pub use self::models::{parse_manifest, verify_manifest, ManifestEntry, ManifestState};
pub use self::runtime::{missing_library, parse_nvidia_version};
pub use self::service::{
    hardening_gaps, listening_inodes, parse_properties, port_of, process_gaps,
};
pub use self::state::{clock_level, disk_level};

/// The service user and the admins' group (sysusers.d/edgeseek.conf).
pub const SERVICE_USER: &str = "edgeseek";
/// Name of the embedding model directory (knowledge base).
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";
/// Per-model checksum file: `sha256sum` format, paths relative to the model directory.
pub const MANIFEST: &str = "manifest.sha256";
/// Free space in the state directory below these is a WARN / a FAIL.
pub const DISK_WARN_BYTES: u64 = 5 << 30;
pub const DISK_FAIL_BYTES: u64 = 1 << 30;
/// The NVIDIA device nodes CUDA opens.
pub const NVIDIA_NODES: [&str; 3] = ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"];
const NVIDIA_VERSION: &str = "/proc/driver/nvidia/version";

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Skip => "SKIP",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Level,
    pub detail: String,
    /// What to do about it (every line that is not OK has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, status: Level, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Level::Ok, detail)
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Level::Warn, detail).fix(fix)
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Level::Fail, detail).fix(fix)
    }
    fn skip(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Level::Skip, detail).fix(fix)
    }
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// `edgeseek doctor` flags (`--config`, `--dev`, `--state-dir` as for `serve`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub paths: Paths,
    /// Model directories to check instead of those under `<state_dir>/models`.
    pub models: Vec<PathBuf>,
    /// Hash every file listed in a model's `manifest.sha256` (off: only check they exist).
    pub verify_hashes: bool,
}

/// Everything `doctor` found, in the order it checked.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Level::Fail)
    }

    fn count(&self, l: Level) -> usize {
        self.checks.iter().filter(|c| c.status == l).count()
    }

    pub fn summary(&self) -> String {
        format!(
            "edgeseek doctor: {} ok, {} warn, {} fail, {} skipped",
            self.count(Level::Ok),
            self.count(Level::Warn),
            self.count(Level::Fail),
            self.count(Level::Skip)
        )
    }

    /// `LEVEL  name  detail. Fix: …`, one line per check, then the summary line.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let detail = c.detail.replace('\n', " ");
            out.push_str(&format!(
                "{:<4}  {:<width$}  {detail}",
                c.status.as_str(),
                c.name
            ));
            if let Some(f) = &c.fix {
                out.push_str(&format!(". Fix: {}", f.replace('\n', " ")));
            }
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    pub fn to_json(&self) -> ReportJson<'_> {
        ReportJson {
            checks: &self.checks,
            ok: !self.failed(),
            summary: Counts {
                fail: self.count(Level::Fail),
                ok: self.count(Level::Ok),
                skip: self.count(Level::Skip),
                warn: self.count(Level::Warn),
            },
        }
    }
}

/// `edgeseek doctor --json`.
#[derive(Debug, Serialize)]
pub struct ReportJson<'a> {
    pub checks: &'a [Check],
    /// No check failed.
    pub ok: bool,
    pub summary: Counts,
}

/// Checks by outcome.
#[derive(Debug, Serialize)]
pub struct Counts {
    pub fail: usize,
    pub ok: usize,
    pub skip: usize,
    pub warn: usize,
}

/// Where doctor looks on the host; tests point these at temporary trees.
#[derive(Clone, Debug)]
struct Host {
    /// systemd is PID 1 (`/run/systemd/system` exists, as `sd_booted()` checks).
    systemd: bool,
    proc: PathBuf,
    nvidia_nodes: Vec<PathBuf>,
    nvidia_version: PathBuf,
    /// Where the packaged embedding model may be, after `<state_dir>/models`.
    embed_dirs: Vec<PathBuf>,
    /// Reference time the clock must not be behind: when this binary was built or installed.
    built: Option<SystemTime>,
}

impl Host {
    fn real() -> Host {
        Host {
            systemd: Path::new("/run/systemd/system").is_dir(),
            proc: PathBuf::from("/proc"),
            nvidia_nodes: NVIDIA_NODES.iter().map(PathBuf::from).collect(),
            nvidia_version: PathBuf::from(NVIDIA_VERSION),
            embed_dirs: vec![
                Path::new(ort_env::SYSTEM_LIB_DIR)
                    .join("models")
                    .join(EMBED_MODEL),
                Path::new(ort_env::DEV_LIB_DIR)
                    .join("models")
                    .join(EMBED_MODEL),
            ],
            built: std::env::current_exe()
                .and_then(std::fs::metadata)
                .and_then(|m| m.modified())
                .ok(),
        }
    }
}

/// What the checks share.
struct Ctx<'a> {
    opts: &'a Options,
    host: &'a Host,
    config: Config,
    state_dir: PathBuf,
    /// The service user (non-dev installs): owner the state directory must have.
    service_uid: Option<u32>,
}

/// Run every check.
pub fn run(opts: &Options) -> Report {
    run_on(opts, &Host::real())
}

fn run_on(opts: &Options, host: &Host) -> Report {
    let mut checks = Vec::new();
    let (config, c) = check_config(opts);
    checks.push(c);
    let state_dir = config.state_dir(opts.paths.state_dir.as_deref(), opts.paths.dev);
    let service_uid = if opts.paths.dev {
        None
    } else {
        nix::unistd::User::from_name(SERVICE_USER)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    let ctx = Ctx {
        opts,
        host,
        config,
        state_dir,
        service_uid,
    };
    checks.push(check_user(&ctx));
    checks.push(check_state_dir(&ctx));
    checks.push(check_disk(&ctx));
    checks.push(check_clock(&ctx, SystemTime::now()));
    checks.push(check_tls(&ctx));
    checks.extend(check_runtime(&ctx));
    checks.extend(check_gpu(&ctx));
    checks.extend(check_models(&ctx));
    checks.push(check_embeddings(&ctx));
    checks.extend(check_remotes(&ctx));
    let daemon = query_daemon(&ctx);
    checks.push(check_port(
        &ctx,
        daemon.as_ref().ok().and_then(Option::as_ref),
    ));
    checks.push(check_daemon(&ctx, &daemon));
    checks.push(check_unit(&ctx));
    Report { checks }
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Print the report (text or JSON); `Ok(true)` when nothing failed.
pub fn print(report: &Report, json: bool) -> Result<bool, DoctorError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        // Through a `Value`, whose keys are sorted (the check objects' too), as the output
        // has always been.
        let json = serde_json::to_value(report.to_json()).unwrap_or(Value::Null);
        writeln!(out, "{json}")?;
    } else {
        out.write_all(report.to_text().as_bytes())?;
    }
    out.flush()?;
    Ok(!report.failed())
}

#[cfg(test)]
mod tests;
