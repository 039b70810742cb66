//! The admin plane: a unix socket for local administration of the running daemon.
//!
//! Access control has two layers. The socket file is mode 0660, group `edgeseek-admin` when that
//! group exists, so the kernel refuses everyone else at `connect`. Behind that, every connection's
//! peer credentials (SO_PEERCRED) are checked: root, the daemon's own uid, or a process whose
//! primary or supplementary groups include `edgeseek-admin`. Anyone else gets one error line and
//! the connection is closed.
//!
//! Protocol (version 1): newline-delimited JSON, one request, one response, several per
//! connection allowed.
//!
//! ```text
//! → {"v":1,"cmd":"status"}
//! ← {"v":1,"ok":true,"result":{...}}
//! → {"v":1,"cmd":"keys.create","name":"laptop","scopes":["chat"],"rpm":60,"tpm":null}
//! ← {"v":1,"ok":true,"result":{"id":"…","name":"laptop",…,"secret":"es-…"}}
//! → {"v":1,"cmd":"keys.revoke","key":"laptop"}
//! ← {"v":1,"ok":false,"error":"no key with id or name `laptop`"}
//! ```
//! Commands: `status`, `models.list`, `keys.create`, `keys.list`, `keys.revoke`, `reload`,
//! `kb.ingest` (`collection`, `filename`, `content_type`, `data` base64, `create`),
//! `kb.collections`, `kb.create` / `kb.delete` (`name`), `agents.list`, `agents.show` /
//! `agents.delete` (`name`), `agents.create` (`agent`), `agents.update` (`name`, `patch`).

pub mod agents_cli;
pub mod audit_cli;
pub mod cli;
pub mod kb_cli;
pub mod usage_cli;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::keys::{KeyStore, Scope};
use crate::util::blocking;

pub use crate::api::admin_http::AdminBackend;
use crate::api::agents_http::AgentOp;
pub use crate::api::wire::admin::created_key_json;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u64 = 1;
/// Socket of a system daemon.
pub const SYSTEM_SOCKET: &str = "/run/edgeseek/admin.sock";
/// Socket file name inside the state directory in `--dev` mode.
pub const DEV_SOCKET_NAME: &str = "admin.sock";
/// Members of this group may administer the daemon.
pub const ADMIN_GROUP: &str = "edgeseek-admin";

/// Longest request line: a `kb.ingest` request carries a whole document (up to 64 MiB, base64
/// adds a third). Only peers that passed the credential check get to send one.
const MAX_LINE: usize = 96 * 1024 * 1024;
/// An idle admin connection is closed after this long.
const IDLE: Duration = Duration::from_secs(120);
/// Concurrent admin connections; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;

/// Where the admin socket lives: `<state_dir>/admin.sock` in dev mode, else
/// `/run/edgeseek/admin.sock`.
pub fn socket_path(dev: bool, state_dir: &Path) -> PathBuf {
    if dev {
        state_dir.join(DEV_SOCKET_NAME)
    } else {
        PathBuf::from(SYSTEM_SOCKET)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: another edgeseek daemon is already listening there")]
    InUse { path: PathBuf },
    #[error("admin socket {path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("admin socket {path}: {msg}")]
    Bind { path: PathBuf, msg: String },
    #[error("admin socket {path}: accept failed: {msg}")]
    Accept { path: PathBuf, msg: String },
}

/// Who may connect, beyond root and the daemon's own uid.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminOptions {
    /// Members of this group are admins, and the socket file is given to it.
    pub admin_gid: Option<u32>,
}

impl AdminOptions {
    /// Resolve `edgeseek-admin` from the system's group database (absent → only root and the
    /// daemon user).
    pub fn system() -> AdminOptions {
        let admin_gid = match nix::unistd::Group::from_name(ADMIN_GROUP) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(group = ADMIN_GROUP, error = %e, "cannot look up admin group");
                None
            }
        };
        AdminOptions { admin_gid }
    }
}

/// Run the admin socket at `path` until `shutdown` completes, with the system's admin group.
pub async fn serve_admin(
    path: &Path,
    keys: KeyStore,
    backend: Arc<dyn AdminBackend>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    serve_admin_with(path, keys, backend, shutdown, AdminOptions::system()).await
}

/// [`serve_admin`] with explicit options (tests use a made-up admin gid).
pub async fn serve_admin_with(
    path: &Path,
    keys: KeyStore,
    backend: Arc<dyn AdminBackend>,
    shutdown: impl Future<Output = ()>,
    opts: AdminOptions,
) -> Result<(), AdminError> {
    let (listener, ino) = bind(path, opts.admin_gid)?;
    tracing::info!(socket = %path.display(), "admin socket listening");
    let policy = Policy {
        daemon_uid: nix::unistd::geteuid().as_raw(),
        admin_gid: opts.admin_gid,
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) if transient_accept_error(&e) => {
                        tracing::warn!(error = %e, "admin accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => break Err(AdminError::Accept { path: path.to_path_buf(), msg: e.to_string() }),
                };
                // Refuse at once rather than stall the accept loop (and shutdown) behind
                // idle connections.
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    conns.spawn(async move {
                        let mut s = stream;
                        let _ = s.write_all(&err_line("too many admin connections; try again")).await;
                    });
                    continue;
                };
                let keys = keys.clone();
                let backend = backend.clone();
                conns.spawn(async move {
                    handle(stream, keys, backend, policy).await;
                    drop(permit);
                });
            }
        }
    };
    conns.abort_all();
    remove_if_ours(path, ino);
    result
}

fn transient_accept_error(e: &std::io::Error) -> bool {
    // Out of descriptors or memory, or a peer that gave up before accept: keep serving.
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

mod libc_errno {
    pub const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
    pub const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = nix::errno::Errno::ENOMEM as i32;
}

/// Bind the socket without a window where it has looser permissions: bind a temporary name in
/// the same directory, set mode and group, then rename it over `path` (atomic; also replaces a
/// stale socket left by a crashed daemon). Returns the listener and the socket's inode.
fn bind(path: &Path, admin_gid: Option<u32>) -> Result<(UnixListener, u64), AdminError> {
    let err = |msg: String| AdminError::Bind {
        path: path.to_path_buf(),
        msg,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            // 0755: the socket's own mode is the gate; the directory must be traversable by
            // admin group members.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(AdminError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                // Nobody listening: a leftover of a daemon that did not exit cleanly.
                Err(_) => tracing::info!(socket = %path.display(), "replacing stale admin socket"),
            }
        }
        Ok(_) => {
            return Err(AdminError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| err(format!("bind {}: {e}", tmp.display())))?;
    let finish = || -> Result<u64, AdminError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| err(format!("chmod: {e}")))?;
        if let Some(gid) = admin_gid {
            if let Err(e) = nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid))) {
                // Unprivileged daemons (dev mode) may not be in the group; the socket then
                // stays owner-only in practice, which is the safe direction.
                tracing::debug!(gid, error = %e, "cannot give the admin socket to the admin group");
            }
        }
        std::fs::rename(&tmp, path).map_err(|e| err(format!("rename into place: {e}")))?;
        let ino = std::fs::symlink_metadata(path)
            .map_err(|e| err(e.to_string()))?
            .ino();
        Ok(ino)
    };
    let ino = match finish() {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| err(e.to_string()))?;
    let listener = UnixListener::from_std(std_listener).map_err(|e| err(e.to_string()))?;
    Ok((listener, ino))
}

/// Remove the socket on shutdown, unless another daemon has replaced it meanwhile.
fn remove_if_ours(path: &Path, ino: u64) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(path);
    }
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    daemon_uid: u32,
    admin_gid: Option<u32>,
}

/// The peer as the kernel reported it at connect time.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: i32,
    uid: u32,
    gid: u32,
}

impl Policy {
    /// `groups` is asked only when uid and primary gid do not decide.
    fn allows(&self, peer: &Peer, groups: impl FnOnce() -> Vec<u32>) -> bool {
        if peer.uid == 0 || peer.uid == self.daemon_uid {
            return true;
        }
        match self.admin_gid {
            Some(g) => peer.gid == g || groups().contains(&g),
            None => false,
        }
    }
}

/// Supplementary groups of the connecting process, from `/proc/<pid>/status` (what the kernel
/// actually grants that process). The process must still run as the uid SO_PEERCRED reported,
/// which guards against the pid having been reused. Without /proc (hidepid) fall back to the
/// group database.
fn peer_groups(peer: &Peer) -> Vec<u32> {
    if let Some(g) = proc_groups(peer) {
        return g;
    }
    let user = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid)) {
        Ok(Some(u)) => u,
        _ => return Vec::new(),
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(peer.gid))
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

fn proc_groups(peer: &Peer) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", peer.pid)).ok()?;
    parse_proc_status(&text, peer.uid)
}

fn parse_proc_status(text: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    // Uid: real effective saved fs — SO_PEERCRED carries the effective uid.
    let euid: u32 = field("Uid:")?.get(1)?.parse().ok()?;
    if euid != uid {
        return None;
    }
    field("Groups:")?
        .into_iter()
        .map(|g| g.parse().ok())
        .collect()
}

#[derive(Serialize)]
struct Response<'a> {
    v: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn ok_line(result: Value) -> Vec<u8> {
    line(&Response {
        v: PROTOCOL_VERSION,
        ok: true,
        result: Some(result),
        error: None,
    })
}

fn err_line(msg: &str) -> Vec<u8> {
    line(&Response {
        v: PROTOCOL_VERSION,
        ok: false,
        result: None,
        error: Some(msg),
    })
}

fn line(r: &Response<'_>) -> Vec<u8> {
    let mut v = serde_json::to_vec(r)
        .unwrap_or_else(|_| br#"{"v":1,"ok":false,"error":"response encoding failed"}"#.to_vec());
    v.push(b'\n');
    v
}

async fn handle(
    stream: UnixStream,
    keys: KeyStore,
    backend: Arc<dyn AdminBackend>,
    policy: Policy,
) {
    let peer =
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "admin connection without peer credentials; refused");
                return;
            }
        };
    let (r, mut w) = stream.into_split();
    let allowed = if peer.uid == 0 || peer.uid == policy.daemon_uid || policy.admin_gid.is_none() {
        policy.allows(&peer, Vec::new)
    } else {
        // Reading /proc is blocking file I/O; tiny, but keep it off the reactor anyway.
        tokio::task::spawn_blocking(move || policy.allows(&peer, || peer_groups(&peer)))
            .await
            .unwrap_or(false)
    };
    if !allowed {
        tracing::warn!(uid = peer.uid, pid = peer.pid, "admin connection refused");
        let msg = format!(
            "permission denied: uid {} is not root, the daemon's user or a member of group {ADMIN_GROUP}",
            peer.uid
        );
        let _ = w.write_all(&err_line(&msg)).await;
        let _ = w.shutdown().await;
        return;
    }
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let n = match tokio::time::timeout(IDLE, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if buf.last() != Some(&b'\n') {
            let msg = if buf.len() > MAX_LINE {
                "request line too long"
            } else {
                "request must end with a newline"
            };
            let _ = w.write_all(&err_line(msg)).await;
            return;
        }
        let started = std::time::Instant::now();
        let result = dispatch(&buf, &keys, &backend, &peer).await;
        backend.audit(command_record(&buf, &peer, &result, started));
        let reply = match result {
            Ok(v) => ok_line(v),
            Err(msg) => err_line(&msg),
        };
        if w.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The audit record of one socket command: who (uid and pid), which command, what it named
/// (the `name`, `key` or `collection` of the request), how it ended. Never the request's
/// other fields: a key's secret or a document's text are not the log's business.
fn command_record(
    line: &[u8],
    peer: &Peer,
    result: &Result<Value, String>,
    started: std::time::Instant,
) -> crate::audit::Event {
    let req: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
    let text = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
    crate::audit::Event {
        kind: "admin".into(),
        source: Some(format!("socket uid {} pid {}", peer.uid, peer.pid)),
        action: Some(text("cmd").unwrap_or_else(|| "(malformed)".into())),
        target: text("name")
            .or_else(|| text("key"))
            .or_else(|| text("collection")),
        status: Some(if result.is_ok() { 200 } else { 400 }),
        error: result.as_ref().err().cloned(),
        ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    }
}

#[derive(Deserialize)]
struct Envelope {
    v: Option<u64>,
    cmd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    #[allow(dead_code)]
    v: u64,
    #[allow(dead_code)]
    cmd: String,
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u32>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
    #[serde(default)]
    tokens_per_month: Option<u64>,
}

impl CreateReq {
    fn options(&self) -> crate::keys::KeyOptions {
        crate::keys::KeyOptions {
            rpm: self.rpm,
            tpm: self.tpm,
            group: self.group.clone(),
            quota: crate::usage::Quota {
                tokens_per_day: self.tokens_per_day,
                tokens_per_month: self.tokens_per_month,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    #[allow(dead_code)]
    v: u64,
    #[allow(dead_code)]
    cmd: String,
    key: String,
}

/// An `agents.*` request: `name` (show, update, delete), `agent` (create: the whole agent),
/// `patch` (update: the fields to change).
fn agent_op(cmd: &str, line: &[u8]) -> Result<AgentOp, String> {
    #[derive(Deserialize)]
    struct R {
        name: Option<String>,
        agent: Option<Value>,
        patch: Option<Value>,
    }
    let r: R = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let name = || r.name.clone().ok_or("missing `name`");
    Ok(match cmd {
        "agents.list" => AgentOp::List,
        "agents.show" => AgentOp::Show(name()?),
        "agents.delete" => AgentOp::Delete(name()?),
        "agents.create" => AgentOp::Create(r.agent.clone().ok_or("missing `agent`")?),
        _ => AgentOp::Update(name()?, r.patch.clone().ok_or("missing `patch`")?),
    })
}

/// A `models.*` request: `name` (a model name, or for `models.load` also a directory) and,
/// for `models.load`, `pin`.
fn model_op(cmd: &str, line: &[u8]) -> Result<crate::api::registry::ModelOp, String> {
    use crate::api::registry::ModelOp;
    #[derive(Deserialize)]
    struct R {
        name: Option<String>,
        #[serde(default)]
        pin: bool,
    }
    let r: R = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let name = r.name.ok_or("missing `name`")?;
    Ok(match cmd {
        "models.load" => ModelOp::Load {
            model: name,
            pin: r.pin,
        },
        "models.unload" => ModelOp::Unload(name),
        "models.pin" => ModelOp::Pin(name, true),
        _ => ModelOp::Pin(name, false),
    })
}

async fn dispatch(
    line: &[u8],
    keys: &KeyStore,
    backend: &Arc<dyn AdminBackend>,
    peer: &Peer,
) -> Result<Value, String> {
    let env: Envelope =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    match env.v {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {v} (this daemon speaks {PROTOCOL_VERSION})"
            ))
        }
        None => return Err("missing protocol version `v`".into()),
    }
    let cmd = env.cmd.ok_or("missing `cmd`")?;
    let parse = |what: &str| format!("bad `{cmd}` request: {what}");
    tracing::info!(cmd = %cmd, uid = peer.uid, pid = peer.pid, "admin command");
    match cmd.as_str() {
        "status" => Ok(backend.status()),
        "models.list" => Ok(backend.models()),
        "keys.list" => {
            let k = keys.clone();
            let list = blocking(move || k.list().map_err(|e| e.to_string())).await?;
            serde_json::to_value(list).map_err(|e| e.to_string())
        }
        "keys.create" => {
            let req: CreateReq = serde_json::from_slice(line).map_err(|e| parse(&e.to_string()))?;
            let scopes = req
                .scopes
                .iter()
                .map(|s| s.parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let k = keys.clone();
            let (info, secret) = blocking(move || {
                k.create_with(&req.name, scopes, req.options())
                    .map_err(|e| e.to_string())
            })
            .await?;
            Ok(created_key_json(info, &secret))
        }
        "keys.revoke" => {
            let req: RevokeReq = serde_json::from_slice(line).map_err(|e| parse(&e.to_string()))?;
            let k = keys.clone();
            let rec = blocking(move || k.revoke(&req.key).map_err(|e| e.to_string())).await?;
            serde_json::to_value(rec).map_err(|e| e.to_string())
        }
        "reload" => {
            let k = keys.clone();
            blocking(move || k.reload().map_err(|e| e.to_string())).await?;
            let b = backend.clone();
            blocking(move || b.reload()).await?;
            Ok(crate::api::wire::value(
                &crate::api::wire::admin::Reloaded { reloaded: true },
            ))
        }
        "agents.list" | "agents.show" | "agents.create" | "agents.update" | "agents.delete" => {
            let op = agent_op(&cmd, line).map_err(|e| parse(&e))?;
            let b = backend.clone();
            blocking(move || b.agents(op)).await
        }
        "models.load" | "models.unload" | "models.pin" | "models.unpin" => {
            let op = model_op(&cmd, line).map_err(|e| parse(&e))?;
            let b = backend.clone();
            blocking(move || b.model_op(op)).await
        }
        "usage" => {
            let req: Value = serde_json::from_slice(line).map_err(|e| parse(&e.to_string()))?;
            let b = backend.clone();
            blocking(move || b.usage(&req)).await
        }
        kb @ ("kb.ingest" | "kb.collections" | "kb.create" | "kb.delete") => {
            let req: Value = serde_json::from_slice(line).map_err(|e| parse(&e.to_string()))?;
            let (b, kb) = (backend.clone(), kb.to_string());
            blocking(move || b.kb(&kb, &req)).await
        }
        other => Err(format!(
            "unknown command `{other}` (known: status, models.list, models.load, models.unload, \
             models.pin, models.unpin, keys.create, keys.list, \
             keys.revoke, reload, usage, kb.ingest, kb.collections, kb.create, kb.delete, agents.list, \
             agents.show, agents.create, agents.update, agents.delete)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let p = Policy {
            daemon_uid: 999,
            admin_gid: Some(4242),
        };
        let peer = |uid, gid| Peer { pid: 1, uid, gid };
        let never = || -> Vec<u32> { panic!("groups consulted needlessly") };
        assert!(p.allows(&peer(0, 5), never));
        assert!(p.allows(&peer(999, 5), never));
        assert!(p.allows(&peer(1000, 4242), never));
        assert!(p.allows(&peer(1000, 1000), || vec![27, 4242]));
        assert!(!p.allows(&peer(1000, 1000), || vec![27]));
        let no_group = Policy {
            daemon_uid: 999,
            admin_gid: None,
        };
        assert!(!no_group.allows(&peer(1000, 0), never));
    }

    #[test]
    fn proc_status_parsing() {
        let text = "Name:\tcat\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\nGroups:\t4 24 4242 \n";
        assert_eq!(parse_proc_status(text, 1001), Some(vec![4, 24, 4242]));
        // effective uid differs: the pid may have been reused
        assert_eq!(parse_proc_status(text, 1000), None);
        assert_eq!(
            parse_proc_status("Uid:\t5\t5\t5\t5\nGroups:\n", 5),
            Some(vec![])
        );
        assert_eq!(parse_proc_status("Groups:\t1\n", 5), None);
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path(true, Path::new("/tmp/s")),
            PathBuf::from("/tmp/s/admin.sock")
        );
        assert_eq!(
            socket_path(false, Path::new("/tmp/s")),
            PathBuf::from(SYSTEM_SOCKET)
        );
    }
}
