//! `edgeseek status | keys … | models list | tls …`: the admin client.
//!
//! Every command first talks to the running daemon over its admin socket. Key commands fall back
//! to opening the database directly when no daemon is listening (redb lets only one process hold
//! the file, so while a daemon runs the socket is the only way, and the daemon's key cache stays
//! authoritative). `status` and `models list` need a daemon. `tls` commands work on the
//! certificate files (`crate::tls::manage`) and then ask a running daemon to `reload`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::api::wire;
use crate::api::wire::admin::AdminRequest as Req;
use crate::config::TlsConfig;
use crate::keys::{parse_scopes, KeyRecord, KeyStore};
use crate::store::{Store, StoreError};
use crate::tls::manage::Shown;
use crate::tls::TlsError;

/// How long the client waits for the daemon's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub cmd: KeysCmd,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create an API key; the secret is printed once, as the last line of stdout
    Create(CreateArgs),
    /// List keys (name, scopes, created, last used, limits, state)
    List(JsonFlag),
    /// Revoke a key by id or name; takes effect at once
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the key (who or what uses it)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Comma-separated scopes: chat, embeddings, kb:read:COLLECTION, kb:write:COLLECTION, admin
    /// (COLLECTION may be `*`)
    #[arg(long = "scope", value_name = "LIST")]
    pub scope: String,
    /// Requests per minute (default: unlimited)
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Tokens per minute (default: unlimited)
    #[arg(long, value_name = "N")]
    pub tpm: Option<u32>,
    /// Usage group (department) the key's calls are counted in: lowercase letters, digits,
    /// `-`, `_` (group quotas: `[usage.groups.NAME]` in the config)
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Tokens (in + out) per UTC day (default: no quota)
    #[arg(long, value_name = "N")]
    pub tokens_per_day: Option<u64>,
    /// Tokens (in + out) per UTC month (default: no quota)
    #[arg(long, value_name = "N")]
    pub tokens_per_month: Option<u64>,
    /// Print one JSON object (including the secret)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// Key id or name
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub cmd: ModelsCmd,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// Models the daemon knows: state (ready, loading, unloaded, unloading, failed), default,
    /// pinned, provider, context length, memory charged against engine.memory_budget_mb
    List(JsonFlag),
    /// Load a chat model and wait until it serves; refused when it would exceed the memory
    /// budget (engine.memory_budget_mb)
    Load(ModelLoadArgs),
    /// Stop serving a chat model: new requests get 404 at once, running ones finish (up to
    /// 60 s), then its memory is given back
    Unload(ModelNameArgs),
    /// Keep a chat model loaded: unloading it is refused until it is unpinned
    Pin(ModelNameArgs),
    /// Allow a pinned chat model to be unloaded again
    Unpin(ModelNameArgs),
}

#[derive(Args, Debug)]
pub struct ModelLoadArgs {
    /// A known model's name, a directory name under <state_dir>/models, or a directory
    pub model: String,
    /// Pin it as well
    #[arg(long)]
    pub pin: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ModelNameArgs {
    /// The model's served name (its directory name), or `default`
    pub model: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TlsArgs {
    #[command(subcommand)]
    pub cmd: TlsCmd,
}

#[derive(Subcommand, Debug)]
pub enum TlsCmd {
    /// Create the local CA and server certificate now (what the first `serve` does), without
    /// serving; idempotent (first boot runs it)
    Init(JsonFlag),
    /// Show the server certificate: names, fingerprint, validity, CA, where it came from
    /// (reads the files; no daemon needed)
    Show(JsonFlag),
    /// Issue a new server certificate and key from the local CA (the CA is kept); a running
    /// daemon serves it to new connections at once
    Rotate(JsonFlag),
    /// Serve CERT (PEM chain, server certificate first) and KEY (PEM) instead of the local
    /// CA's certificate; never renewed by edgeseek
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// PEM certificate chain, server certificate first
    #[arg(value_name = "CERT")]
    pub cert: PathBuf,
    /// PEM private key of the certificate
    #[arg(value_name = "KEY")]
    pub key: PathBuf,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Where the daemon's socket, database and TLS identity are.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `[tls]` of the config: a configured certificate is read where it is.
    pub tls: TlsConfig,
    /// `[usage.groups]` of the config, for offline usage reports.
    pub group_quotas: std::collections::BTreeMap<String, crate::usage::Quota>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    #[error("daemon not running (no socket at {0})")]
    NotRunning(PathBuf),
    #[error(
        "cannot connect to {path}: permission denied (admin commands need root or membership \
         in group {group})",
        group = super::ADMIN_GROUP
    )]
    Denied { path: PathBuf },
    #[error("admin socket {path}: {msg}")]
    Socket { path: PathBuf, msg: String },
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
    #[error(
        "{db} is held by another process but the admin socket {socket} does not answer; is the \
         daemon running with another --state-dir / --dev setting?"
    )]
    Orphaned { db: PathBuf, socket: PathBuf },
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Store(StoreError),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "the new certificate (sha256 {fingerprint}) is in place, but the running daemon did not \
         switch to it: {msg}; send it SIGHUP or restart it"
    )]
    NotReloaded { fingerprint: String, msg: String },
}

impl AdminCliError {
    /// 2 for bad arguments (nothing was attempted); 1 for everything else, including being
    /// refused by the socket's permissions or by the daemon.
    pub fn exit_code(&self) -> u8 {
        use crate::keys::KeyError as K;
        match self {
            AdminCliError::Keys(
                K::InvalidScope { .. } | K::InvalidName(_) | K::Invalid(_) | K::InvalidGroup(_),
            ) => 2,
            // Bad or missing certificate files, or an identity the command does not apply to:
            // nothing was changed.
            AdminCliError::Tls(_) => 2,
            _ => 1,
        }
    }
}

/// Connection to the daemon, or why there is none.
pub(super) enum Conn {
    Up(UnixStream),
    /// No socket, or nothing listening on it.
    Down,
}

pub(super) fn connect(t: &Target) -> Result<Conn, AdminCliError> {
    match UnixStream::connect(&t.socket) {
        Ok(s) => Ok(Conn::Up(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(Conn::Down)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(AdminCliError::Denied {
            path: t.socket.clone(),
        }),
        Err(e) => Err(AdminCliError::Socket {
            path: t.socket.clone(),
            msg: e.to_string(),
        }),
    }
}

/// One request/response over the socket.
/// A request line as JSON.
pub(super) fn req(r: &Req<'_>) -> Value {
    crate::api::wire::value(r)
}

pub(super) fn call(t: &Target, stream: UnixStream, req: Value) -> Result<Value, AdminCliError> {
    call_timeout(t, stream, req, REPLY_TIMEOUT)
}

/// [`call`] for commands that take longer than the usual reply timeout (ingestion).
pub(super) fn call_timeout(
    t: &Target,
    mut stream: UnixStream,
    mut req: Value,
    timeout: Duration,
) -> Result<Value, AdminCliError> {
    let sock_err = |e: std::io::Error| AdminCliError::Socket {
        path: t.socket.clone(),
        msg: e.to_string(),
    };
    if let Some(o) = req.as_object_mut() {
        o.insert("v".into(), super::PROTOCOL_VERSION.into());
    }
    let mut line = req.to_string();
    line.push('\n');
    stream.set_read_timeout(Some(timeout)).map_err(sock_err)?;
    // A refused peer gets its error line and a closed socket; the write may then fail with
    // EPIPE, so read the answer even if writing failed.
    let wrote = stream.write_all(line.as_bytes());
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    if reply.is_empty() {
        return Err(match (wrote, read) {
            (Err(e), _) | (_, Err(e)) => sock_err(e),
            _ => AdminCliError::Socket {
                path: t.socket.clone(),
                msg: "the daemon closed the connection without answering".into(),
            },
        });
    }
    let v: Value = serde_json::from_str(&reply).map_err(|e| AdminCliError::Socket {
        path: t.socket.clone(),
        msg: format!("unreadable answer: {e}"),
    })?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the daemon reported an unspecified error");
        Err(AdminCliError::Daemon(msg.to_string()))
    }
}

/// Open the database directly because no daemon is listening.
fn open_offline(t: &Target) -> Result<KeyStore, AdminCliError> {
    Ok(KeyStore::open(open_store(t)?)?)
}

/// Run an offline change (no daemon is listening) and write its audit record. The log is
/// opened first, so a change that could not be recorded is not made.
pub(super) fn audited<T>(
    t: &Target,
    action: &str,
    target: &str,
    change: impl FnOnce() -> Result<T, AdminCliError>,
) -> Result<T, AdminCliError> {
    let log = crate::audit::AuditLog::open(
        &t.state_dir.join("audit"),
        crate::audit::AuditConfig::default(),
    )?;
    let started = std::time::Instant::now();
    let result = change();
    log.append(crate::audit::Event {
        kind: "admin".into(),
        source: Some(format!("cli uid {}", nix::unistd::getuid())),
        action: Some(action.to_string()),
        target: Some(target.to_string()),
        status: Some(if result.is_ok() { 200 } else { 400 }),
        error: result.as_ref().err().map(ToString::to_string),
        ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    })?;
    result
}

/// The database, opened directly because no daemon is listening.
pub(super) fn open_store(t: &Target) -> Result<Store, AdminCliError> {
    Store::open_in(&t.state_dir, crate::schema::MIGRATIONS).map_err(|e| match e {
        StoreError::InUse { file } => AdminCliError::Orphaned {
            db: file,
            socket: t.socket.clone(),
        },
        other => AdminCliError::Store(other),
    })
}

pub(super) fn out(text: &str) -> Result<(), AdminCliError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .map_err(AdminCliError::Output)
}

/// The running daemon's `status` object, or `None` when no daemon answers on the socket
/// (`edgeseek doctor`).
pub fn query_status(t: &Target) -> Result<Option<Value>, AdminCliError> {
    match connect(t)? {
        Conn::Up(s) => call(t, s, req(&Req::Status)).map(Some),
        Conn::Down => Ok(None),
    }
}

pub fn status(t: &Target, a: &StatusArgs) -> Result<(), AdminCliError> {
    let v = match connect(t)? {
        Conn::Up(s) => call(t, s, req(&Req::Status))?,
        Conn::Down => return Err(AdminCliError::NotRunning(t.socket.clone())),
    };
    if a.json {
        return out(&format!("{v}\n"));
    }
    let mut lines = Vec::new();
    flatten("", &v, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let text: String = lines
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect();
    out(&text)
}

/// How long `models load` / `unload` wait for the daemon: a large model takes minutes to load
/// (TensorRT builds its engine on first use), an unload waits for running requests.
const MODEL_CHANGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn models(t: &Target, a: &ModelsArgs) -> Result<(), AdminCliError> {
    let (r, json) = match &a.cmd {
        ModelsCmd::List(flags) => return models_list(t, flags),
        ModelsCmd::Load(l) => (
            Req::ModelsLoad {
                name: &l.model,
                pin: l.pin,
            },
            l.json,
        ),
        ModelsCmd::Unload(n) => (Req::ModelsUnload { name: &n.model }, n.json),
        ModelsCmd::Pin(n) => (Req::ModelsPin { name: &n.model }, n.json),
        ModelsCmd::Unpin(n) => (Req::ModelsUnpin { name: &n.model }, n.json),
    };
    let v = match connect(t)? {
        Conn::Up(s) => call_timeout(t, s, req(&r), MODEL_CHANGE_TIMEOUT)?,
        Conn::Down => return Err(AdminCliError::NotRunning(t.socket.clone())),
    };
    if json {
        return out(&format!("{v}\n"));
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let mut line = format!("model {}: {}", text("id"), text("state"));
    if let Some(p) = v.get("provider").and_then(Value::as_str) {
        line.push_str(&format!(", provider {p}"));
    }
    if let Some(c) = v.get("context_length").and_then(Value::as_u64) {
        line.push_str(&format!(", context {c}"));
    }
    if let Some(b) = v
        .get("memory_bytes")
        .and_then(Value::as_u64)
        .filter(|b| *b > 0)
    {
        line.push_str(&format!(
            ", {} MiB of the memory budget",
            b.div_ceil(1 << 20)
        ));
    }
    if v.get("pinned").and_then(Value::as_bool) == Some(true) {
        line.push_str(", pinned");
    }
    out(&format!("{line}\n"))
}

fn models_list(t: &Target, flags: &JsonFlag) -> Result<(), AdminCliError> {
    let v = match connect(t)? {
        Conn::Up(s) => call(t, s, req(&Req::ModelsList))?,
        Conn::Down => return Err(AdminCliError::NotRunning(t.socket.clone())),
    };
    if flags.json {
        return out(&format!("{v}\n"));
    }
    // An array of objects (optionally wrapped as OpenAI's {"data": [...]}) becomes a table.
    let rows = v.get("data").unwrap_or(&v);
    match rows.as_array() {
        Some(items) if items.iter().all(Value::is_object) => {
            let mut cols: Vec<String> = Vec::new();
            for it in items {
                for k in it.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            let table: Vec<Vec<String>> = items
                .iter()
                .map(|it| cols.iter().map(|c| scalar(&it[c.as_str()])).collect())
                .collect();
            let head: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
            out(&render_table(&head, &table))
        }
        _ => out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )),
    }
}

pub fn keys(t: &Target, a: &KeysArgs) -> Result<(), AdminCliError> {
    match &a.cmd {
        KeysCmd::Create(c) => create(t, c),
        KeysCmd::List(f) => list(t, f.json),
        KeysCmd::Revoke(r) => revoke(t, r),
    }
}

fn create(t: &Target, c: &CreateArgs) -> Result<(), AdminCliError> {
    // Validate locally first so a typo fails the same way with or without a daemon.
    let scopes = parse_scopes(&c.scope)?;
    let v = match connect(t)? {
        Conn::Up(s) => call(
            t,
            s,
            req(&Req::KeysCreate {
                name: &c.name,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                rpm: c.rpm,
                tpm: c.tpm,
                group: c.group.as_deref(),
                tokens_per_day: c.tokens_per_day,
                tokens_per_month: c.tokens_per_month,
            }),
        )?,
        Conn::Down => audited(t, "keys.create", &c.name, || {
            let ks = open_offline(t)?;
            let opts = crate::keys::KeyOptions {
                rpm: c.rpm,
                tpm: c.tpm,
                group: c.group.clone(),
                quota: crate::usage::Quota {
                    tokens_per_day: c.tokens_per_day,
                    tokens_per_month: c.tokens_per_month,
                },
            };
            let (info, secret) = ks.create_with(&c.name, scopes, opts)?;
            Ok(super::created_key_json(info, &secret))
        })?,
    };
    if c.json {
        return out(&format!("{v}\n"));
    }
    let secret = v.get("secret").and_then(Value::as_str).ok_or_else(|| {
        AdminCliError::Daemon("the daemon's answer carries no secret".to_string())
    })?;
    let text = format!(
        "created key {} ({})\nscopes: {}\nlimits: {} requests/min, {} tokens/min\n\
         the secret is shown only now; use it as `Authorization: Bearer <secret>`:\n{secret}\n",
        scalar(&v["id"]),
        scalar(&v["name"]),
        v["scopes"]
            .as_array()
            .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        limit(&v["rpm"]),
        limit(&v["tpm"]),
    );
    out(&text)
}

fn limit(v: &Value) -> String {
    if v.is_null() {
        "unlimited".into()
    } else {
        scalar(v)
    }
}

fn list(t: &Target, json_out: bool) -> Result<(), AdminCliError> {
    let records: Vec<KeyRecord> = match connect(t)? {
        Conn::Up(s) => {
            let v = call(t, s, req(&Req::KeysList))?;
            serde_json::from_value(v).map_err(|e| AdminCliError::Socket {
                path: t.socket.clone(),
                msg: format!("unreadable key list: {e}"),
            })?
        }
        // No database yet means no keys; do not create one just to list it.
        Conn::Down if !Store::path_in(&t.state_dir).exists() => Vec::new(),
        Conn::Down => open_offline(t)?.list()?,
    };
    if json_out {
        let s =
            serde_json::to_string(&records).map_err(|e| AdminCliError::Daemon(e.to_string()))?;
        return out(&format!("{s}\n"));
    }
    if records.is_empty() {
        return out(
            "no API keys (create one with `edgeseek keys create --name NAME --scope chat`)\n",
        );
    }
    let head = [
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "LAST USED",
        "RPM",
        "TPM",
        "STATE",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.scopes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                utc(r.created),
                r.last_used.map(utc).unwrap_or_else(|| "never".into()),
                r.rpm.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                r.tpm.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                if r.revoked { "revoked" } else { "active" }.into(),
            ]
        })
        .collect();
    out(&render_table(&head, &rows))
}

fn revoke(t: &Target, r: &RevokeArgs) -> Result<(), AdminCliError> {
    let rec: KeyRecord = match connect(t)? {
        Conn::Up(s) => {
            let v = call(t, s, req(&Req::KeysRevoke { key: &r.key }))?;
            serde_json::from_value(v).map_err(|e| AdminCliError::Socket {
                path: t.socket.clone(),
                msg: format!("unreadable answer: {e}"),
            })?
        }
        Conn::Down if !Store::path_in(&t.state_dir).exists() => {
            return Err(crate::keys::KeyError::NotFound(r.key.clone()).into())
        }
        Conn::Down => audited(t, "keys.revoke", &r.key, || {
            Ok(open_offline(t)?.revoke(&r.key)?)
        })?,
    };
    if r.json {
        let s = serde_json::to_string(&rec).map_err(|e| AdminCliError::Daemon(e.to_string()))?;
        return out(&format!("{s}\n"));
    }
    out(&format!("revoked key {} ({})\n", rec.id, rec.name))
}

pub fn tls(t: &Target, a: &TlsArgs) -> Result<(), AdminCliError> {
    let now = crate::util::unix_now() as i64;
    let (shown, json_out, done) = match &a.cmd {
        TlsCmd::Init(f) => {
            // Nothing to reload: a running daemon created (or was given) its identity at start.
            let i = crate::tls::manage::init(&t.tls, &t.state_dir)?;
            if f.json {
                let mut v = i.shown.to_json(now);
                v.created = Some(i.created);
                return out(&format!("{}\n", wire::value(&v)));
            }
            let done = if i.created {
                format!(
                    "created the TLS identity in {}",
                    t.state_dir.join("tls").display()
                )
            } else {
                format!(
                    "TLS identity exists ({}); nothing created",
                    i.shown.kind.as_str()
                )
            };
            return out(&format!(
                "{done}\n{}fingerprint sha256 {}\n",
                i.shown.to_text(now),
                i.shown.fingerprint
            ));
        }
        TlsCmd::Show(f) => {
            let s = crate::tls::manage::show(&t.tls, &t.state_dir)?;
            if f.json {
                return out(&format!("{}\n", wire::value(&s.to_json(now))));
            }
            return out(&s.to_text(now));
        }
        TlsCmd::Rotate(f) => {
            let s = crate::tls::manage::rotate(&t.tls, &t.state_dir)?;
            let ca = s
                .ca_path
                .as_ref()
                .map_or_else(String::new, |p| format!(" (CA kept: {})", p.display()));
            (s, f.json, format!("rotated the server certificate{ca}"))
        }
        TlsCmd::Import(i) => {
            let s = crate::tls::manage::import(&t.tls, &t.state_dir, &i.cert, &i.key)?;
            (s, i.json, format!("imported {}", i.cert.display()))
        }
    };
    let reloaded = reload_daemon(t, &shown)?;
    if json_out {
        let mut v = shown.to_json(now);
        v.daemon_reloaded = Some(reloaded);
        return out(&format!("{}\n", wire::value(&v)));
    }
    let daemon = if reloaded {
        "the running daemon serves it to new connections now (open ones are kept)"
    } else {
        "no daemon is running; `edgeseek serve` will serve it"
    };
    out(&format!(
        "{done}\n{}{daemon}\nfingerprint sha256 {}\n",
        shown.to_text(now),
        shown.fingerprint
    ))
}

/// Ask a running daemon to `reload` (keys, then the TLS certificate) and check that it now
/// serves `shown`. `Ok(false)`: no daemon is running.
fn reload_daemon(t: &Target, shown: &Shown) -> Result<bool, AdminCliError> {
    let failed = |msg: String| AdminCliError::NotReloaded {
        fingerprint: shown.fingerprint.clone(),
        msg,
    };
    let stream = match connect(t).map_err(|e| failed(e.to_string()))? {
        Conn::Up(s) => s,
        Conn::Down => return Ok(false),
    };
    call(t, stream, req(&Req::Reload)).map_err(|e| failed(e.to_string()))?;
    let status = match connect(t).map_err(|e| failed(e.to_string()))? {
        Conn::Up(s) => call(t, s, req(&Req::Status)).map_err(|e| failed(e.to_string()))?,
        Conn::Down => return Err(failed("it stopped during the reload".into())),
    };
    match status["tls"]["fingerprint_sha256"].as_str() {
        Some(fp) if fp == shown.fingerprint => Ok(true),
        other => Err(failed(format!(
            "it still serves sha256 {} (is it running with another --config or --state-dir?)",
            other.unwrap_or("-")
        ))),
    }
}

pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `a.b  value` lines for a JSON object, nested objects flattened with dots.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        // A list of things with ids (the chat models): one block of lines per item, named by
        // its id (`models.qwen-7b.state  ready`).
        Value::Array(items)
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.get("id").is_some_and(Value::is_string)) =>
        {
            for i in items {
                let id = i["id"].as_str().unwrap_or_default();
                let mut rest = i.clone();
                if let Some(o) = rest.as_object_mut() {
                    o.remove("id");
                }
                flatten(&format!("{prefix}.{id}"), &rest, out);
            }
        }
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

/// Terminal columns of `s`: CJK and full-width characters take two (key names may be Chinese).
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match u32::from(c) {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// Print the `data` list of an answer as a table with `head`, one row per item by `row`, or
/// `empty` when there is none.
pub(super) fn print_list(
    v: &Value,
    head: &[&str],
    empty: &str,
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<(), AdminCliError> {
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .map(|a| a.iter().map(&row).collect())
        .unwrap_or_default();
    if rows.is_empty() {
        return out(&format!("{empty}\n"));
    }
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    out(&render_table(&head, &rows))
}

pub(super) fn render_table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| display_width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(display_width(c));
            }
        }
    }
    let fmt_row = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w.saturating_sub(display_width(c)) + 2));
            }
        }
        s.push('\n');
        s
    };
    let mut s = fmt_row(head);
    for r in rows {
        s.push_str(&fmt_row(r));
    }
    s
}

/// Unix seconds → `YYYY-MM-DD HH:MM UTC` (days-to-civil after Howard Hinnant; no time zone
/// database needed on an appliance).
fn utc(secs: u64) -> String {
    let (y, m, d) = crate::util::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Resolve the socket, state directory and TLS files the way `serve` does.
pub fn target(dev: bool, state_dir: &Path, tls: &TlsConfig) -> Target {
    Target {
        socket: super::socket_path(dev, state_dir),
        state_dir: state_dir.to_path_buf(),
        tls: tls.clone(),
        group_quotas: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }

    #[test]
    fn flatten_and_table() {
        let mut l = Vec::new();
        flatten(
            "",
            &json!({"model": "m", "tls": {"fingerprint": "ab", "expiry": null}, "queue": 3}),
            &mut l,
        );
        assert!(l.contains(&("tls.fingerprint".into(), "ab".into())));
        assert!(l.contains(&("tls.expiry".into(), "-".into())));
        assert!(l.contains(&("queue".into(), "3".into())));
        let mut l = Vec::new();
        flatten(
            "",
            &json!({"models": [{"id": "a", "state": "ready"}, {"id": "b", "state": "failed"}]}),
            &mut l,
        );
        assert_eq!(
            l,
            vec![
                ("models.a.state".into(), "ready".into()),
                ("models.b.state".into(), "failed".into())
            ]
        );
        let t = render_table(
            &["A".into(), "B".into()],
            &[vec!["long value".into(), "x".into()]],
        );
        assert_eq!(t, "A           B\nlong value  x\n");
        let t = render_table(
            &["N".into(), "S".into()],
            &[vec!["规章".into(), "x".into()]],
        );
        assert_eq!(t, "N     S\n规章  x\n");
    }
}
