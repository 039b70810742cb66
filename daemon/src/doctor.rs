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

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::engine::ort_env::{self, Provider, ProviderPolicy};
use crate::engine::ModelSpec;

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
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub state_dir: Option<PathBuf>,
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

    pub fn to_json(&self) -> Value {
        json!({
            "ok": !self.failed(),
            "checks": self.checks,
            "summary": {
                "ok": self.count(Level::Ok),
                "warn": self.count(Level::Warn),
                "fail": self.count(Level::Fail),
                "skip": self.count(Level::Skip),
            },
        })
    }
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
    let state_dir = config.state_dir(opts.state_dir.as_deref(), opts.dev);
    let service_uid = if opts.dev {
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
    let daemon = query_daemon(&ctx);
    checks.push(check_port(
        &ctx,
        daemon.as_ref().ok().and_then(Option::as_ref),
    ));
    checks.push(check_daemon(&ctx, &daemon));
    checks.push(check_unit(&ctx));
    Report { checks }
}

// --- configuration, user, state directory -------------------------------------------------------

fn check_config(opts: &Options) -> (Config, Check) {
    let file = match (&opts.config, opts.dev) {
        (Some(f), _) => Some(f.clone()),
        (None, false) if Path::new(DEFAULT_CONFIG).is_file() => Some(PathBuf::from(DEFAULT_CONFIG)),
        _ => None,
    };
    match Config::load(opts.config.as_deref(), opts.dev) {
        Ok(c) => {
            let detail = match (&file, opts.dev) {
                (Some(f), _) => format!("{} parses", f.display()),
                (None, true) => "--dev: built-in defaults (no --config)".to_string(),
                (None, false) => format!("no {DEFAULT_CONFIG}: built-in defaults"),
            };
            (c, Check::ok("config", detail))
        }
        Err(e) => (
            Config::default(),
            Check::fail(
                "config",
                format!("{e}; the checks below use the built-in defaults"),
                "correct the named key (every setting is documented in the shipped \
                 /etc/edgeseek/edgeseek.toml); a running daemon keeps its settings until then",
            ),
        ),
    }
}

fn check_user(ctx: &Ctx) -> Check {
    if ctx.opts.dev {
        return Check::skip(
            "user",
            "--dev: the daemon runs as the current user",
            "run without --dev to check the service user",
        );
    }
    let Some(uid) = ctx.service_uid else {
        return Check::fail(
            "user",
            format!(
                "no user `{SERVICE_USER}`: edgeseek.service (User={SERVICE_USER}) cannot start"
            ),
            "systemd-sysusers edgeseek.conf (the package's postinst runs it)",
        );
    };
    match nix::unistd::Group::from_name(crate::admin::ADMIN_GROUP) {
        Ok(Some(g)) => {
            let members: Vec<&str> = g.mem.iter().map(String::as_str).collect();
            if members.contains(&SERVICE_USER) {
                Check::ok(
                    "user",
                    format!(
                        "{SERVICE_USER} (uid {uid}); group {} has {}",
                        crate::admin::ADMIN_GROUP,
                        members.join(", ")
                    ),
                )
            } else {
                Check::warn(
                    "user",
                    format!(
                        "{SERVICE_USER} is not a member of {}: the admin socket stays owner-only",
                        crate::admin::ADMIN_GROUP
                    ),
                    format!("usermod -aG {} {SERVICE_USER}", crate::admin::ADMIN_GROUP),
                )
            }
        }
        _ => Check::warn(
            "user",
            format!(
                "{SERVICE_USER} (uid {uid}) exists but group {} does not: only root can use the admin socket",
                crate::admin::ADMIN_GROUP
            ),
            "systemd-sysusers edgeseek.conf",
        ),
    }
}

fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn check_state_dir(ctx: &Ctx) -> Check {
    const NAME: &str = "state.dir";
    let dir = &ctx.state_dir;
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if ctx.opts.dev {
                Check::ok(
                    NAME,
                    format!("{shown} does not exist yet; the first serve creates it"),
                )
            } else {
                Check::fail(
                    NAME,
                    format!("{shown} does not exist"),
                    "systemd-tmpfiles --create edgeseek.conf (or reinstall the package)",
                )
            };
        }
        Err(e) => {
            return Check::warn(NAME, format!("{shown}: {e}"), "run edgeseek doctor as root");
        }
    };
    if !meta.is_dir() {
        return Check::fail(NAME, format!("{shown} is not a directory"), "move it away");
    }
    let expected = ctx
        .service_uid
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    if meta.uid() != expected {
        return Check::fail(
            NAME,
            format!(
                "{shown} is owned by {}, not {}: the daemon cannot write its database and keys",
                who(meta.uid()),
                who(expected)
            ),
            format!("chown -R {} {shown}", who_name(expected)),
        );
    }
    // Entries created by root (`sudo edgeseek keys create` with a daemon user) must have been
    // handed over; private keys must stay private.
    let mut entries = Vec::new();
    let mut unreadable = None;
    for sub in [dir.clone(), dir.join("tls"), dir.join("models")] {
        match std::fs::read_dir(&sub) {
            Ok(rd) => entries.extend(rd.flatten().map(|e| e.path())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable = Some(format!("{}: {e}", sub.display())),
        }
    }
    let mut foreign = Vec::new();
    let mut open_keys = Vec::new();
    for p in entries {
        match std::fs::symlink_metadata(&p) {
            Ok(m) => {
                if m.uid() != expected {
                    foreign.push(format!("{} ({})", p.display(), who(m.uid())));
                }
                let is_key = p.extension().is_some_and(|e| e == "key");
                if is_key && m.mode() & 0o077 != 0 {
                    open_keys.push(format!("{} ({:04o})", p.display(), m.mode() & 0o7777));
                }
            }
            Err(e) => unreadable = Some(format!("{}: {e}", p.display())),
        }
    }
    let mode = meta.mode() & 0o7777;
    if !open_keys.is_empty() {
        return Check::fail(
            NAME,
            format!("private keys readable by others: {}", open_keys.join(", ")),
            "chmod 0600 on each",
        );
    }
    if !foreign.is_empty() {
        let more = if foreign.len() > 4 {
            format!(" and {} more", foreign.len() - 4)
        } else {
            String::new()
        };
        foreign.truncate(4);
        return Check::fail(
            NAME,
            format!(
                "not owned by {}: {}{more}",
                who(expected),
                foreign.join(", ")
            ),
            format!("chown -R {} {shown}", who_name(expected)),
        );
    }
    if let Some(u) = unreadable {
        return Check::warn(
            NAME,
            format!("cannot inspect {u}"),
            "run edgeseek doctor as root",
        );
    }
    if mode & 0o077 != 0 {
        return Check::warn(
            NAME,
            format!("{shown} is mode {mode:04o}: others can list the database and TLS files"),
            format!("chmod 0700 {shown}"),
        );
    }
    Check::ok(NAME, format!("{shown}: {}, mode {mode:04o}", who(expected)))
}

fn who_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{0}:{0}", u.name),
        _ => uid.to_string(),
    }
}

/// Free bytes → level: FAIL below [`DISK_FAIL_BYTES`], WARN below [`DISK_WARN_BYTES`].
pub fn disk_level(free: u64) -> Level {
    if free < DISK_FAIL_BYTES {
        Level::Fail
    } else if free < DISK_WARN_BYTES {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn check_disk(ctx: &Ctx) -> Check {
    const NAME: &str = "state.disk";
    // The state directory may not exist yet (dev); its file system is the nearest ancestor's.
    let mut at = ctx.state_dir.clone();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    match nix::sys::statvfs::statvfs(&at) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let detail = format!("{} free on {}", gib(free), at.display());
            match disk_level(free) {
                Level::Fail => Check::fail(
                    NAME,
                    format!("{detail} (< 1 GiB): the database and TensorRT cache cannot grow"),
                    "free space (old models, journal: journalctl --vacuum-size=200M)",
                ),
                Level::Warn => Check::warn(
                    NAME,
                    format!("{detail} (< 5 GiB)"),
                    "free space before adding models or documents",
                ),
                _ => Check::ok(NAME, detail),
            }
        }
        Err(e) => Check::warn(
            NAME,
            format!("statvfs {}: {e}", at.display()),
            "check the mount",
        ),
    }
}

fn year_of(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::util::civil_from_days(secs.div_euclid(86_400)).0
}

/// The clock against a time it cannot be earlier than (when this binary was built or
/// installed): an earlier year is a FAIL (certificates are "not yet valid", logs lie), a clock
/// more than a day behind within the year a WARN.
pub fn clock_level(now: SystemTime, reference: SystemTime) -> Level {
    if year_of(now) < year_of(reference) {
        Level::Fail
    } else if reference
        .duration_since(now)
        .is_ok_and(|behind| behind.as_secs() > 86_400)
    {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::tls::utc_string(secs)
}

fn check_clock(ctx: &Ctx, now: SystemTime) -> Check {
    const NAME: &str = "clock";
    let mut detail = format!("{} UTC", utc(now).trim_end_matches('Z').replace('T', " "));
    let sync = if ctx.host.systemd {
        command_output(
            "timedatectl",
            &["show", "--property=NTPSynchronized", "--value"],
        )
    } else {
        None
    };
    let Some(built) = ctx.host.built else {
        return Check::ok(NAME, detail);
    };
    let level = clock_level(now, built);
    let fix = "set the time (timedatectl set-time, or enable NTP: timedatectl set-ntp true)";
    match level {
        Level::Fail => {
            return Check::fail(
                NAME,
                format!(
                    "{detail}: earlier than the year this edgeseek was built or installed ({}); TLS certificates will look not yet valid",
                    utc(built)
                ),
                fix,
            )
        }
        Level::Warn => {
            return Check::warn(
                NAME,
                format!("{detail}: behind the time this edgeseek was built or installed ({})", utc(built)),
                fix,
            )
        }
        _ => {}
    }
    match sync.as_deref().map(str::trim) {
        Some("no") => Check::warn(
            NAME,
            format!("{detail}; not synchronised (NTPSynchronized=no)"),
            "timedatectl set-ntp true (systemd-timesyncd or chrony)",
        ),
        Some("yes") => {
            detail.push_str("; NTP synchronised");
            Check::ok(NAME, detail)
        }
        _ => Check::ok(NAME, detail),
    }
}

// --- TLS -------------------------------------------------------------------------------------

fn check_tls(ctx: &Ctx) -> Check {
    use crate::tls::{IdentityKind, TlsError, RENEW_BEFORE_DAYS};
    const NAME: &str = "tls";
    let shown = match crate::tls::manage::show(&ctx.config.tls, &ctx.state_dir) {
        Ok(s) => s,
        Err(TlsError::Missing { dir }) => {
            return Check::warn(
                NAME,
                format!("no TLS identity in {} yet", dir.display()),
                "edgeseek tls init (first boot runs it; so does the first start)",
            )
        }
        Err(TlsError::Io { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Check::warn(
                NAME,
                format!("cannot read {}: {source}", path.display()),
                "run edgeseek doctor as root",
            )
        }
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "edgeseek tls import CERT KEY, or fix tls.cert / tls.key",
            )
        }
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let info = &shown.info;
    let what = format!(
        "{} certificate sha256 {}…, valid until {}",
        shown.kind.as_str(),
        &shown.fingerprint[..shown.fingerprint.len().min(23)],
        crate::tls::utc_string(info.not_after)
    );
    if info.not_before > now {
        return Check::fail(
            NAME,
            format!(
                "{what}: not valid before {} — the clock is behind or the certificate is from the future; clients refuse it",
                crate::tls::utc_string(info.not_before)
            ),
            "fix the clock (see `clock`), then `edgeseek tls rotate` if it was issued with a wrong clock",
        );
    }
    let renew = match shown.kind {
        IdentityKind::Generated => "edgeseek tls rotate (or restart: renewed automatically)",
        _ => "edgeseek tls import a new certificate (edgeseek never renews an imported or configured one)",
    };
    if info.not_after < now {
        return Check::fail(NAME, format!("{what}: EXPIRED"), renew);
    }
    if let Err(e) = crate::tls::manage::check_key(&shown) {
        return Check::fail(NAME, e.to_string(), renew);
    }
    let days = shown.days_left(now);
    if days < RENEW_BEFORE_DAYS {
        return Check::warn(NAME, format!("{what}: {days} days left"), renew);
    }
    Check::ok(NAME, format!("{what} ({days} days)"))
}

// --- ONNX Runtime and execution providers -------------------------------------------------------

/// The shared library the dynamic loader could not find, from a message like
/// `… with error: libcublasLt.so.13: cannot open shared object file: …`.
pub fn missing_library(cause: &str) -> Option<&str> {
    let end = cause.find(": cannot open shared object file")?;
    let start = cause[..end].rfind(' ').map_or(0, |i| i + 1);
    Some(&cause[start..end]).filter(|s| s.contains(".so"))
}

/// What to do about an unavailable provider, from its cause.
fn provider_fix(p: Provider, cause: &str) -> String {
    let l = cause.to_ascii_lowercase();
    let cuda_libs = "the CUDA 13 runtime libraries and cuDNN 9 (NVIDIA's CUDA repository: \
                     cuda-libraries-13-0, libcudnn9-cuda-13) where the loader finds them (ldconfig)";
    if l.contains("not enabled in this build") {
        "install the GPU build of ONNX Runtime: scripts/install --gpu yes (onnxruntime-gpu 1.31.1 into /usr/lib/edgeseek/gpu)".into()
    } else if let Some(lib) = missing_library(cause) {
        if lib.starts_with("libnvinfer") || lib.starts_with("libnvonnxparser") {
            format!("{lib} is missing: install TensorRT 10 for CUDA 13, or drop \"tensorrt\" from engine.providers")
        } else {
            format!("{lib} is missing: install {cuda_libs}")
        }
    } else if l.contains(".so") {
        match p {
            Provider::Tensorrt => "install TensorRT 10 for CUDA 13 (libnvinfer) next to the CUDA libraries, or drop \"tensorrt\" from engine.providers".into(),
            _ => format!("install {cuda_libs}"),
        }
    } else if l.contains("no cuda-capable device") || l.contains("cuda failure") {
        "check the driver and device nodes (nvidia-smi; see gpu.devices / gpu.driver)".into()
    } else {
        format!("see the cause; or remove \"{p}\" from engine.providers")
    }
}

fn check_runtime(ctx: &Ctx) -> Vec<Check> {
    let dev_fix = "run scripts/setup (puts libonnxruntime.so.1.31.1 in ./.runtime)";
    let rt = match ort_env::runtime(ctx.config.runtime.library.as_deref()) {
        Ok(rt) => rt,
        Err(e) => {
            return vec![
                Check::fail(
                    "onnxruntime",
                    e.to_string(),
                    if ctx.opts.dev {
                        dev_fix
                    } else {
                        "reinstall the package (it ships /usr/lib/edgeseek/libonnxruntime.so.1.31.1) or set runtime.library"
                    },
                ),
                Check::skip(
                    "providers",
                    "not checked: no ONNX Runtime library",
                    "fix `onnxruntime` first",
                ),
            ]
        }
    };
    let compiled = ort_env::compiled_providers();
    let build = if compiled.iter().any(|p| p == "cuda") {
        "GPU build"
    } else {
        "CPU build"
    };
    let mut out = vec![Check::ok(
        "onnxruntime",
        format!(
            "{} at {} ({build}; providers compiled in: {})",
            rt.version,
            rt.library.display(),
            compiled.join(", ")
        ),
    )];
    let engine = &ctx.config.engine;
    let opts = ctx.config.provider_options(&ctx.state_dir);
    let mut usable = Vec::new();
    for p in [Provider::Tensorrt, Provider::Cuda, Provider::Cpu] {
        let name = format!("provider.{p}");
        let configured = engine.providers.contains(&p);
        match rt.probe_provider(p, &opts) {
            Ok(()) => {
                usable.push(p);
                let note = if configured {
                    ""
                } else {
                    " (not in engine.providers)"
                };
                let dev = if p == Provider::Cpu {
                    String::new()
                } else {
                    format!(" on device {}", engine.device_id)
                };
                out.push(Check::ok(name, format!("available{dev}{note}")));
            }
            Err(cause) if !configured => out.push(Check::skip(
                name,
                format!("not in engine.providers; would be unavailable: {cause}"),
                provider_fix(p, &cause),
            )),
            Err(cause) if p == Provider::Cpu => out.push(Check::fail(
                name,
                format!("ONNX Runtime cannot create a CPU session: {cause}"),
                "reinstall the package (the library may be damaged)",
            )),
            Err(cause) => out.push(Check::warn(
                name,
                format!("unavailable: {cause}"),
                provider_fix(p, &cause),
            )),
        }
    }
    // What `serve` would pick with engine.providers and engine.provider_policy.
    let first = engine.providers.first().copied().unwrap_or(Provider::Cpu);
    let chosen = engine
        .providers
        .iter()
        .find(|p| usable.contains(p))
        .copied();
    let order: Vec<&str> = engine.providers.iter().map(|p| p.as_str()).collect();
    out.push(match (engine.provider_policy, chosen) {
        (ProviderPolicy::Strict, _) if !usable.contains(&first) => Check::fail(
            "provider.selected",
            format!("provider_policy = \"strict\" and {first} (first of [{}]) is unavailable: the model will not load", order.join(", ")),
            "fix the provider (above) or set engine.provider_policy = \"fallback\"",
        ),
        (_, Some(p)) if p == first => Check::ok("provider.selected", format!("{p} (first of [{}])", order.join(", "))),
        (_, Some(p)) => Check::warn(
            "provider.selected",
            format!("{p}: falls back from [{}]", order.join(", ")),
            "see the provider lines above; or list only what this machine has in engine.providers",
        ),
        (_, None) => Check::fail(
            "provider.selected",
            format!("none of [{}] is available: the model will not load", order.join(", ")),
            "add \"cpu\" to engine.providers",
        ),
    });
    out
}

// --- GPU ---------------------------------------------------------------------------------------

/// The driver version from `/proc/driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 …`).
pub fn parse_nvidia_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.').count() >= 2
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn check_gpu(ctx: &Ctx) -> Vec<Check> {
    let wants = ctx
        .config
        .engine
        .providers
        .iter()
        .any(|p| *p != Provider::Cpu);
    let soft = |name: &str, detail: String, fix: &str| {
        if wants {
            Check::warn(name, detail, fix)
        } else {
            Check::skip(
                name,
                format!("{detail} (engine.providers is CPU only)"),
                fix,
            )
        }
    };
    let mut missing = Vec::new();
    let mut odd = Vec::new();
    for n in &ctx.host.nvidia_nodes {
        match std::fs::metadata(n) {
            Ok(m) if m.file_type().is_char_device() => {}
            Ok(_) => odd.push(n.display().to_string()),
            Err(_) => missing.push(n.display().to_string()),
        }
    }
    let nodes = if missing.is_empty() && odd.is_empty() {
        let all: Vec<String> = ctx
            .host
            .nvidia_nodes
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Check::ok("gpu.devices", all.join(", "))
    } else if !odd.is_empty() {
        soft(
            "gpu.devices",
            format!("not character devices: {}", odd.join(", ")),
            "remove them and reload the driver (modprobe -r nvidia-uvm nvidia; modprobe nvidia nvidia-uvm)",
        )
    } else if missing.len() == ctx.host.nvidia_nodes.len() {
        soft(
            "gpu.devices",
            format!("no NVIDIA device nodes ({} missing): CPU only", missing.join(", ")),
            "install the NVIDIA driver (apt-get install nvidia-driver) and reboot; edgeseek-nvidia.conf in modules-load.d loads nvidia and nvidia-uvm at boot",
        )
    } else {
        soft(
            "gpu.devices",
            format!("missing: {}", missing.join(", ")),
            "modprobe nvidia-uvm (and nvidia-modprobe -u -c=0 for the nodes; the unit cannot load modules itself)",
        )
    };
    let driver = match std::fs::read_to_string(&ctx.host.nvidia_version) {
        Ok(t) => match parse_nvidia_version(&t) {
            Some(v) => Check::ok("gpu.driver", format!("NVIDIA driver {v}")),
            None => soft(
                "gpu.driver",
                format!("{}: no version line", ctx.host.nvidia_version.display()),
                "reinstall the NVIDIA driver",
            ),
        },
        Err(_) => soft(
            "gpu.driver",
            format!(
                "no NVIDIA kernel driver loaded ({} missing)",
                ctx.host.nvidia_version.display()
            ),
            "install the NVIDIA driver (CUDA 13 needs 580 or newer) and reboot",
        ),
    };
    vec![nodes, driver]
}

// --- models -------------------------------------------------------------------------------------

/// One line of a `manifest.sha256`: the hex digest and the path relative to the model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub sha256: String,
    pub path: PathBuf,
}

/// Parse `sha256sum` output (`HASH  path` or `HASH *path`; `./` prefixes allowed). Paths must
/// stay inside the model directory.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (hash, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {n}: expected `SHA256  PATH`"))?;
        let path = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| format!("line {n}: expected two spaces or ` *` after the hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {n}: `{hash}` is not a sha256 digest"));
        }
        let p = Path::new(path);
        if path.is_empty()
            || p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "line {n}: `{path}` must be a relative path inside the model directory"
            ));
        }
        out.push(ManifestEntry {
            sha256: hash.to_ascii_lowercase(),
            path: p
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect(),
        });
    }
    if out.is_empty() {
        return Err("lists no files".into());
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Result of checking a directory against its manifest.
#[derive(Debug, PartialEq, Eq)]
pub enum ManifestState {
    /// No `manifest.sha256`.
    Absent,
    /// All listed files present (and, when hashing, matching): how many.
    Verified { files: usize, hashed: bool },
    /// Missing or different files, or an unreadable manifest.
    Bad(String),
}

pub fn verify_manifest(dir: &Path, hash: bool) -> ManifestState {
    let file = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ManifestState::Absent,
        Err(e) => return ManifestState::Bad(format!("{}: {e}", file.display())),
    };
    let entries = match parse_manifest(&text) {
        Ok(e) => e,
        Err(e) => return ManifestState::Bad(format!("{}: {e}", file.display())),
    };
    let mut bad = Vec::new();
    for e in &entries {
        let p = dir.join(&e.path);
        let problem = match (p.is_file(), hash) {
            (false, _) => Some("missing"),
            (true, false) => None,
            (true, true) => match sha256_file(&p) {
                Ok(h) if h == e.sha256 => None,
                Ok(_) => Some("sha256 differs"),
                Err(_) => Some("unreadable"),
            },
        };
        if let Some(what) = problem {
            bad.push(format!("{} ({what})", e.path.display()));
        }
    }
    if bad.is_empty() {
        ManifestState::Verified {
            files: entries.len(),
            hashed: hash,
        }
    } else {
        let n = bad.len();
        bad.truncate(4);
        ManifestState::Bad(format!(
            "{n} of {} files in {MANIFEST} do not match: {}",
            entries.len(),
            bad.join(", ")
        ))
    }
}

fn manifest_fix(dir: &Path) -> String {
    format!(
        "cd {} && find . -type f ! -name {MANIFEST} -printf '%P\\0' | sort -z | xargs -0 sha256sum > {MANIFEST}",
        dir.display()
    )
}

/// One model directory: its spec plus the manifest.
fn check_model(name: String, dir: &Path, hash: bool, note: &str) -> Check {
    let spec = match ModelSpec::read(dir) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "copy the complete model directory again (see README: Models)",
            )
        }
    };
    let what = format!(
        "{} ({} layout, {}, {} layers, context {}){note}",
        dir.display(),
        spec.layout.as_str(),
        spec.arch,
        spec.num_layers,
        spec.context_length
    );
    match verify_manifest(dir, hash) {
        ManifestState::Verified { files, hashed } => {
            let how = if hashed { "sha256 verified" } else { "present (not hashed)" };
            Check::ok(name, format!("{what}; {files} files {how}"))
        }
        ManifestState::Absent => Check::warn(
            name,
            format!("{what}; no {MANIFEST}: files not verified"),
            manifest_fix(dir),
        ),
        ManifestState::Bad(msg) => Check::fail(
            name,
            format!("{what}; {msg}"),
            "copy the model again from its source (scripts/install --models DIR verifies while copying)",
        ),
    }
}

fn check_models(ctx: &Ctx) -> Vec<Check> {
    let hash = ctx.opts.verify_hashes;
    if !ctx.opts.models.is_empty() {
        return ctx
            .opts
            .models
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let note = if i == 0 {
                    ""
                } else {
                    " (serve loads only the first --model)"
                };
                check_model(format!("model:{}", dir_name(d)), d, hash, note)
            })
            .collect();
    }
    let root = ctx.state_dir.join("models");
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && dir_name(p) != EMBED_MODEL)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return vec![Check::warn(
                "models",
                format!("cannot list {}: {e}", root.display()),
                "run edgeseek doctor as root",
            )]
        }
        Err(_) => Vec::new(),
    };
    dirs.sort();
    if let Some(chosen) = ctx.config.model_dir(&ctx.state_dir) {
        let name = format!("model:{}", dir_name(&chosen));
        let mut out = vec![if chosen.is_dir() {
            check_model(name, &chosen, hash, " (served: engine.model)")
        } else {
            Check::fail(
                name,
                format!("engine.model: {} is not a directory", chosen.display()),
                "copy the model there (scripts/install --models DIR) or correct engine.model",
            )
        }];
        let same = |d: &PathBuf| d.canonicalize().ok() == chosen.canonicalize().ok();
        out.extend(dirs.iter().filter(|d| !same(d)).map(|d| {
            check_model(
                format!("model:{}", dir_name(d)),
                d,
                hash,
                " (not served: engine.model names another)",
            )
        }));
        return out;
    }
    if dirs.is_empty() {
        let detail = format!("no model directory under {}", root.display());
        let fix = format!(
            "scripts/install --models DIR (or copy a model to {}/<name>/; see README: Models)",
            root.display()
        );
        return vec![if ctx.opts.dev {
            Check::warn(
                "models",
                format!("{detail} (--dev: pass --model DIR to check one)"),
                fix,
            )
        } else {
            Check::fail(
                "models",
                format!("{detail}: the daemon has nothing to serve"),
                fix,
            )
        }];
    }
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let note = if dirs.len() == 1 {
                ""
            } else if i == 0 {
                " (served: first by name)"
            } else {
                " (not served: one model per daemon)"
            };
            check_model(format!("model:{}", dir_name(d)), d, hash, note)
        })
        .collect()
}

fn dir_name(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Any `*.onnx` in `dir` or one level below (exports keep it in `onnx/`).
fn has_onnx(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            std::fs::read_dir(&p).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "onnx"))
            })
        } else {
            p.extension().is_some_and(|x| x == "onnx")
        }
    })
}

fn check_embeddings(ctx: &Ctx) -> Check {
    const NAME: &str = "embeddings";
    let mut candidates = vec![ctx.state_dir.join("models").join(EMBED_MODEL)];
    candidates.extend(ctx.host.embed_dirs.iter().cloned());
    let Some(dir) = candidates.iter().find(|d| d.is_dir()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Check::warn(
            NAME,
            format!(
                "{EMBED_MODEL} not found (tried {}): knowledge-base vector search is unavailable",
                tried.join(", ")
            ),
            "install a package built with the embedding model (scripts/setup fetches it into .runtime/models), or copy it to <state_dir>/models/all-minilm-l6-v2",
        );
    };
    let mut missing = Vec::new();
    if !dir.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json");
    }
    if !has_onnx(dir) {
        missing.push("*.onnx");
    }
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!("{}: missing {}", dir.display(), missing.join(", ")),
            "copy the embedding model directory again",
        );
    }
    match verify_manifest(dir, ctx.opts.verify_hashes) {
        ManifestState::Verified { files, .. } => {
            Check::ok(NAME, format!("{}; {files} files verified", dir.display()))
        }
        ManifestState::Absent => Check::warn(
            NAME,
            format!("{}; no {MANIFEST}: files not verified", dir.display()),
            manifest_fix(dir),
        ),
        ManifestState::Bad(msg) => Check::fail(
            NAME,
            format!("{}; {msg}", dir.display()),
            "copy the embedding model directory again",
        ),
    }
}

// --- port, daemon, unit ---------------------------------------------------------------------------

/// Socket inodes listening (state `0A`) on `port` in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Processes holding one of `inodes` (`/proc/<pid>/fd/* -> socket:[inode]`): (pid, comm).
/// Only what this user may see: all processes for root.
fn socket_owners(proc: &Path, inodes: &[u64]) -> Vec<(u32, String)> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(proc) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(e.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

/// Port of `[::]:443 (Stream)`-style `Listen=` values and of `ADDR:PORT`.
pub fn port_of(listen: &str) -> Option<u16> {
    let addr = listen.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
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

fn check_port(ctx: &Ctx, daemon: Option<&Value>) -> Check {
    const NAME: &str = "port";
    // Under systemd the port is edgeseek.socket's; otherwise what `serve` would bind.
    let from_socket_unit = (!ctx.opts.dev && ctx.host.systemd)
        .then(|| {
            command_output(
                "systemctl",
                &["show", "--property=Listen", "--value", "edgeseek.socket"],
            )
        })
        .flatten()
        .and_then(|l| {
            let l = l.lines().next()?.trim().to_string();
            port_of(&l).map(|p| (p, format!("{l} from edgeseek.socket")))
        });
    let (port, source) = match from_socket_unit {
        Some(x) => x,
        None => {
            let listen = ctx.config.server.listen.clone().unwrap_or_else(|| {
                if ctx.opts.dev {
                    crate::serve::DEV_LISTEN
                } else {
                    crate::serve::DEFAULT_LISTEN
                }
                .to_string()
            });
            match port_of(&listen) {
                Some(p) => (p, listen),
                None => {
                    return Check::fail(
                        NAME,
                        format!("cannot read a port from `{listen}`"),
                        "set server.listen = \"ADDRESS:PORT\"",
                    )
                }
            }
        }
    };
    if port == 0 {
        return Check::skip(
            NAME,
            format!("{source}: a free port is picked at start"),
            "set server.listen to a fixed port to have it checked",
        );
    }
    let mut inodes = Vec::new();
    for t in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(ctx.host.proc.join(t)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Check::ok(NAME, format!("{port} is free ({source})"));
    }
    let daemon_port = daemon
        .and_then(|v| v["listen"].as_str())
        .and_then(|l| port_of(l.trim_start_matches("https://")));
    let owners = socket_owners(&ctx.host.proc, &inodes);
    let ours = |comm: &str, pid: u32| comm == "edgeseek" || pid == 1;
    let others: Vec<String> = owners
        .iter()
        .filter(|(pid, comm)| !ours(comm, *pid))
        .map(|(pid, comm)| format!("{comm} (pid {pid})"))
        .collect();
    if !others.is_empty() {
        return Check::fail(
            NAME,
            format!("{port} ({source}) is in use by {}", others.join(", ")),
            "stop that service, or move edgeseek to another port (drop-in for edgeseek.socket: ListenStream= then ListenStream=ADDR:PORT)",
        );
    }
    if !owners.is_empty() {
        let by: Vec<String> = owners
            .iter()
            .map(|(pid, comm)| {
                if *pid == 1 {
                    "systemd (edgeseek.socket, socket activation)".to_string()
                } else {
                    format!("{comm} (pid {pid})")
                }
            })
            .collect();
        return Check::ok(
            NAME,
            format!("{port} in use by edgeseek: {}", by.join(", ")),
        );
    }
    if daemon_port == Some(port) {
        return Check::ok(
            NAME,
            format!("{port} in use by the running edgeseek (its admin socket says so)"),
        );
    }
    Check::warn(
        NAME,
        format!("{port} ({source}) is in use by a process this user cannot see"),
        "run edgeseek doctor as root to see which",
    )
}

fn query_daemon(ctx: &Ctx) -> Result<Option<Value>, String> {
    let target = crate::admin::cli::target(ctx.opts.dev, &ctx.state_dir, &ctx.config.tls);
    crate::admin::cli::query_status(&target).map_err(|e| e.to_string())
}

fn check_daemon(ctx: &Ctx, daemon: &Result<Option<Value>, String>) -> Check {
    const NAME: &str = "daemon";
    let socket = crate::admin::socket_path(ctx.opts.dev, &ctx.state_dir);
    let v = match daemon {
        Err(e) => {
            return Check::warn(
                NAME,
                e.clone(),
                format!(
                    "run as root or as a member of {}",
                    crate::admin::ADMIN_GROUP
                ),
            )
        }
        Ok(None) => {
            let fix = if ctx.host.systemd && !ctx.opts.dev {
                "systemctl start edgeseek (edgeseek.socket also starts it on the first connection); journalctl -u edgeseek says why it stopped"
            } else {
                "edgeseek serve (or start the appliance's edgeseek.service)"
            };
            return Check::warn(
                NAME,
                format!("not running (no answer on {})", socket.display()),
                fix,
            );
        }
        Ok(Some(v)) => v,
    };
    let model = v["model"].as_str().unwrap_or("?");
    let listen = v["listen"].as_str().unwrap_or("?");
    let uptime = v["uptime_s"].as_f64().unwrap_or(0.0);
    if v["ready"].as_bool() == Some(true) {
        let provider = v["provider"].as_str().unwrap_or("?");
        return Check::ok(
            NAME,
            format!("running on {listen}: {model} ready on {provider}, up {uptime:.0} s"),
        );
    }
    match v["model_error"].as_str() {
        Some(err) => Check::fail(
            NAME,
            format!("running on {listen}, but {model} failed to load: {err}"),
            "fix the model (see the model lines), then systemctl restart edgeseek",
        ),
        None => Check::warn(
            NAME,
            format!("running on {listen}; {model} is still loading (up {uptime:.0} s)"),
            "wait; a first TensorRT start builds engines for minutes",
        ),
    }
}

/// `systemctl show` output as a map.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The sandbox settings of edgeseek.service that must be in effect, with the value systemd
/// reports for them.
const HARDENING: [(&str, &str); 9] = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("DevicePolicy", "closed"),
];

/// Settings of `props` that are weaker than the shipped unit's.
pub fn hardening_gaps(props: &BTreeMap<String, String>) -> Vec<String> {
    let mut gaps: Vec<String> = HARDENING
        .iter()
        .filter(|(k, want)| props.get(*k).map(String::as_str) != Some(*want))
        .map(|(k, want)| {
            format!(
                "{k}={} (shipped: {want})",
                props.get(*k).map_or("?", String::as_str)
            )
        })
        .collect();
    let caps = props
        .get("CapabilityBoundingSet")
        .map_or("?", String::as_str);
    if !caps.trim().is_empty() {
        gaps.push(format!("CapabilityBoundingSet={caps} (shipped: empty)"));
    }
    if props.get("User").map(String::as_str) != Some(SERVICE_USER) {
        gaps.push(format!(
            "User={} (shipped: {SERVICE_USER})",
            props.get("User").map_or("?", String::as_str)
        ));
    }
    for k in ["RestrictAddressFamilies", "SystemCallFilter"] {
        if props.get(k).is_none_or(|v| v.trim().is_empty()) {
            gaps.push(format!("{k} is empty (shipped: set)"));
        }
    }
    gaps
}

/// `NoNewPrivs`, `Seccomp` and `CapEff` of `/proc/<pid>/status`; gaps against the sandbox.
pub fn process_gaps(status: &str) -> Vec<String> {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let mut gaps = Vec::new();
    if field("NoNewPrivs:").as_deref() != Some("1") {
        gaps.push(format!(
            "NoNewPrivs: {}",
            field("NoNewPrivs:").unwrap_or_default()
        ));
    }
    // 2 = SECCOMP_MODE_FILTER (SystemCallFilter=).
    if field("Seccomp:").as_deref() != Some("2") {
        gaps.push(format!(
            "Seccomp: {}",
            field("Seccomp:").unwrap_or_default()
        ));
    }
    if field("CapEff:").is_none_or(|c| c.bytes().any(|b| b != b'0')) {
        gaps.push(format!("CapEff: {}", field("CapEff:").unwrap_or_default()));
    }
    gaps
}

fn check_unit(ctx: &Ctx) -> Check {
    const NAME: &str = "unit.hardening";
    if ctx.opts.dev {
        return Check::skip(
            NAME,
            "--dev: not running under edgeseek.service",
            "on the appliance: edgeseek doctor (without --dev)",
        );
    }
    if !ctx.host.systemd {
        return Check::skip(
            NAME,
            "systemd is not PID 1 here (container, chroot or image build): the sandbox of edgeseek.service cannot be checked",
            "on the booted appliance: edgeseek doctor, or systemd-analyze security edgeseek",
        );
    }
    let mut props = vec![
        "LoadState",
        "ActiveState",
        "MainPID",
        "User",
        "CapabilityBoundingSet",
        "RestrictAddressFamilies",
        "SystemCallFilter",
    ];
    props.extend(HARDENING.iter().map(|(k, _)| *k));
    let arg = format!("--property={}", props.join(","));
    let Some(text) = command_output("systemctl", &["show", &arg, "edgeseek.service"]) else {
        return Check::warn(
            NAME,
            "systemctl show edgeseek.service failed",
            "systemctl status edgeseek",
        );
    };
    let p = parse_properties(&text);
    if p.get("LoadState").map(String::as_str) != Some("loaded") {
        return Check::fail(
            NAME,
            format!(
                "edgeseek.service is {}",
                p.get("LoadState").map_or("unknown", String::as_str)
            ),
            "reinstall the package (it ships /usr/lib/systemd/system/edgeseek.service); systemctl daemon-reload",
        );
    }
    let mut gaps = hardening_gaps(&p);
    let pid: u32 = p.get("MainPID").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut running = String::from("not running: unit settings only");
    if pid > 0 {
        match std::fs::read_to_string(ctx.host.proc.join(pid.to_string()).join("status")) {
            Ok(s) => {
                let g = process_gaps(&s);
                if g.is_empty() {
                    running = format!("pid {pid}: NoNewPrivs 1, seccomp filter, no capabilities");
                }
                gaps.extend(g.into_iter().map(|g| format!("pid {pid} {g}")));
            }
            Err(e) => running = format!("pid {pid}: {e}"),
        }
    }
    if gaps.is_empty() {
        Check::ok(
            NAME,
            format!("edgeseek.service sandbox in effect ({running})"),
        )
    } else {
        Check::fail(
            NAME,
            format!("weaker than shipped: {}", gaps.join("; ")),
            "systemctl cat edgeseek shows the drop-in that overrides it; remove it, then systemctl daemon-reload && systemctl restart edgeseek",
        )
    }
}

/// Print the report (text or JSON); `Ok(true)` when nothing failed.
pub fn print(report: &Report, json: bool) -> Result<bool, DoctorError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        out.write_all(report.to_text().as_bytes())?;
    }
    out.flush()?;
    Ok(!report.failed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host(tmp: &Path) -> Host {
        Host {
            systemd: false,
            proc: tmp.join("proc"),
            nvidia_nodes: NVIDIA_NODES
                .iter()
                .map(|n| tmp.join(n.trim_start_matches('/')))
                .collect(),
            nvidia_version: tmp.join("nvidia-version"),
            embed_dirs: vec![tmp.join("usr-lib-models").join(EMBED_MODEL)],
            built: Some(SystemTime::now()),
        }
    }

    fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", r.to_text()))
    }

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_level((1 << 30) - 1), Level::Fail);
        assert_eq!(disk_level(1 << 30), Level::Warn);
        assert_eq!(disk_level((5 << 30) - 1), Level::Warn);
        assert_eq!(disk_level(5 << 30), Level::Ok);
    }

    #[test]
    fn clock_against_the_build_time() {
        let built = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000); // 2026-09
        assert_eq!(
            clock_level(built + Duration::from_secs(60), built),
            Level::Ok
        );
        assert_eq!(
            clock_level(built - Duration::from_secs(3600), built),
            Level::Ok
        );
        assert_eq!(
            clock_level(built - Duration::from_secs(30 * 86_400), built),
            Level::Warn
        );
        // An unset RTC starts in 1970 (or 2000): a different year is a FAIL.
        assert_eq!(clock_level(SystemTime::UNIX_EPOCH, built), Level::Fail);
    }

    #[test]
    fn the_missing_library_is_named_in_the_fix() {
        // The cause as `edgeseek doctor` printed it after `scripts/install --gpu yes
        // --ort-gpu-wheel onnxruntime_gpu-1.31.1-….whl` on a machine without CUDA 13.
        let cuda = "CUDA libraries could not be loaded (NVIDIA driver / CUDA 13 runtime missing?): /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library /usr/lib/edgeseek/gpu/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory";
        assert_eq!(missing_library(cuda), Some("libcublasLt.so.13"));
        let fix = provider_fix(Provider::Cuda, cuda);
        assert!(
            fix.starts_with("libcublasLt.so.13 is missing: install the CUDA 13 runtime"),
            "{fix}"
        );
        let trt = "Failed to load library libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object file: No such file or directory";
        assert!(provider_fix(Provider::Tensorrt, trt)
            .starts_with("libnvinfer.so.10 is missing: install TensorRT 10"));
        assert_eq!(
            missing_library("CUDA failure 100: no CUDA-capable device is detected"),
            None
        );
        assert!(provider_fix(
            Provider::Cuda,
            "CUDA failure 100: no CUDA-capable device is detected"
        )
        .contains("nvidia-smi"));
        assert!(provider_fix(
            Provider::Cuda,
            "CUDA execution provider is not enabled in this build of ONNX Runtime"
        )
        .contains("--gpu yes"));
    }

    #[test]
    fn nvidia_driver_version() {
        let text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(parse_nvidia_version(text).as_deref(), Some("580.65.06"));
        assert_eq!(parse_nvidia_version("GCC version: 12.2.0\n"), None);
    }

    #[test]
    fn manifest_format_is_sha256sum() {
        let h = "a".repeat(64);
        let m = parse_manifest(&format!(
            "{h}  model.onnx\n{h} *onnx/model.onnx\n{h}  ./tokenizer.json\n"
        ))
        .unwrap();
        let paths: Vec<&Path> = m.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                Path::new("model.onnx"),
                Path::new("onnx/model.onnx"),
                Path::new("tokenizer.json")
            ]
        );
        for bad in [
            format!("{h}  /etc/passwd"),
            format!("{h}  ../x"),
            format!("{h}  a/../../x"),
            "abc  model.onnx".to_string(),
            format!("{h} model.onnx"),
            String::new(),
        ] {
            assert!(parse_manifest(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_verification_finds_changed_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(verify_manifest(d.path(), true), ManifestState::Absent);
        std::fs::write(d.path().join("a.bin"), b"hello").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b.txt"), b"").unwrap();
        // sha256("hello") and sha256("") as `sha256sum` prints them.
        let manifest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  a.bin\n\
                        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  sub/b.txt\n";
        std::fs::write(d.path().join(MANIFEST), manifest).unwrap();
        assert_eq!(
            verify_manifest(d.path(), true),
            ManifestState::Verified {
                files: 2,
                hashed: true
            }
        );
        std::fs::write(d.path().join("a.bin"), b"hellO").unwrap();
        match verify_manifest(d.path(), true) {
            ManifestState::Bad(m) => assert!(m.contains("a.bin (sha256 differs)"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Without hashing a changed file passes; a missing one never does.
        assert_eq!(
            verify_manifest(d.path(), false),
            ManifestState::Verified {
                files: 2,
                hashed: false
            }
        );
        std::fs::remove_file(d.path().join("sub/b.txt")).unwrap();
        match verify_manifest(d.path(), false) {
            ManifestState::Bad(m) => assert!(m.contains("sub/b.txt (missing)"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listening_sockets_from_proc_net_tcp() {
        // /proc/net/tcp rows: 0.0.0.0:443 LISTEN (inode 111), 127.0.0.1:8443 LISTEN (222),
        // an established connection from port 443 (333).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:01BB 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(table, 443), vec![111]);
        assert_eq!(listening_inodes(table, 8443), vec![222]);
        assert!(listening_inodes(table, 80).is_empty());
        assert_eq!(port_of("[::]:443 (Stream)"), Some(443));
        assert_eq!(port_of("127.0.0.1:8443"), Some(8443));
        assert_eq!(port_of("https://[::1]:9443"), Some(9443));
    }

    #[test]
    fn weakened_units_and_processes_are_named() {
        let mut p: BTreeMap<String, String> = HARDENING
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.insert("CapabilityBoundingSet".into(), String::new());
        p.insert("User".into(), SERVICE_USER.into());
        p.insert(
            "RestrictAddressFamilies".into(),
            "AF_UNIX AF_NETLINK".into(),
        );
        p.insert("SystemCallFilter".into(), "access accept4 …".into());
        assert!(hardening_gaps(&p).is_empty(), "{:?}", hardening_gaps(&p));
        p.insert("NoNewPrivileges".into(), "no".into());
        p.insert(
            "CapabilityBoundingSet".into(),
            "cap_net_bind_service".into(),
        );
        let g = hardening_gaps(&p);
        assert_eq!(
            g,
            vec![
                "NoNewPrivileges=no (shipped: yes)".to_string(),
                "CapabilityBoundingSet=cap_net_bind_service (shipped: empty)".to_string()
            ]
        );
        let sandboxed = "Name:\tedgeseek\nNoNewPrivs:\t1\nSeccomp:\t2\nCapEff:\t0000000000000000\n";
        assert!(process_gaps(sandboxed).is_empty());
        let plain = "Name:\tedgeseek\nNoNewPrivs:\t0\nSeccomp:\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(process_gaps(plain).len(), 3);
    }

    #[test]
    fn a_dev_state_dir_with_a_bad_model_and_no_gpu() {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let state = t.path().join("state");
        let bad = state.join("models").join("broken");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("genai_config.json"), "{").unwrap();
        let opts = Options {
            dev: true,
            state_dir: Some(state.clone()),
            verify_hashes: true,
            ..Options::default()
        };
        let r = run_on(&opts, &h);
        let m = find(&r, "model:broken");
        assert_eq!(m.status, Level::Fail, "{}", r.to_text());
        assert!(m.detail.contains("genai_config.json"), "{}", m.detail);
        let nodes = find(&r, "gpu.devices");
        assert_eq!(nodes.status, Level::Warn);
        for n in &h.nvidia_nodes {
            assert!(
                nodes.detail.contains(&n.display().to_string()),
                "{}",
                nodes.detail
            );
        }
        assert_eq!(find(&r, "gpu.driver").status, Level::Warn);
        assert_eq!(find(&r, "tls").status, Level::Warn);
        assert_eq!(find(&r, "embeddings").status, Level::Warn);
        assert_eq!(find(&r, "unit.hardening").status, Level::Skip);
        assert_eq!(find(&r, "daemon").status, Level::Warn);
        assert!(r.failed());
        // Every line that is not OK says what to do.
        for c in &r.checks {
            assert_eq!(c.fix.is_some(), c.status != Level::Ok, "{c:?}");
        }
        let text = r.to_text();
        assert_eq!(text.lines().count(), r.checks.len() + 1);
        assert!(text
            .lines()
            .next_back()
            .unwrap()
            .starts_with("edgeseek doctor: "));
        let j = r.to_json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"].as_array().unwrap().len(), r.checks.len());
    }

    #[test]
    fn gpu_driver_and_embeddings_when_present() {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        std::fs::write(
            &h.nvidia_version,
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.82.07  Fri Aug 22 2025\n",
        )
        .unwrap();
        let embed = &h.embed_dirs[0];
        std::fs::create_dir_all(embed.join("onnx")).unwrap();
        std::fs::write(embed.join("tokenizer.json"), "{}").unwrap();
        std::fs::write(embed.join("onnx/model_quantized.onnx"), "x").unwrap();
        let opts = Options {
            dev: true,
            state_dir: Some(t.path().join("state")),
            ..Options::default()
        };
        let r = run_on(&opts, &h);
        let d = find(&r, "gpu.driver");
        assert_eq!(
            (d.status, d.detail.as_str()),
            (Level::Ok, "NVIDIA driver 580.82.07")
        );
        let e = find(&r, "embeddings");
        // Present, but without a manifest its files are not verified.
        assert_eq!(e.status, Level::Warn, "{e:?}");
        assert!(e.detail.contains("no manifest.sha256"), "{}", e.detail);
    }

    #[test]
    fn a_state_dir_file_of_another_owner_fails_as_root() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        std::fs::create_dir_all(state.join("tls")).unwrap();
        std::fs::write(state.join("tls/server.key"), "k").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(
            state.join("tls/server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let opts = Options {
            dev: true,
            state_dir: Some(state.clone()),
            ..Options::default()
        };
        let h = host(t.path());
        let r = run_on(&opts, &h);
        let c = find(&r, "state.dir");
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(
            c.detail.contains("private keys readable by others"),
            "{}",
            c.detail
        );
        std::fs::set_permissions(
            state.join("tls/server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(find(&run_on(&opts, &h), "state.dir").status, Level::Ok);
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(state.join("tls"), Some(4242), None).unwrap();
            let c = find(&run_on(&opts, &h), "state.dir").clone();
            assert_eq!(c.status, Level::Fail, "{c:?}");
            assert!(c.detail.contains("uid 4242"), "{}", c.detail);
        }
    }
}
