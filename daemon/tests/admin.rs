//! The admin plane end to end: `serve_admin` on a temp socket with a fake backend, spoken to with
//! raw protocol lines and with the real `edgeseek` binary (also as other uids via `setpriv`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use edgeseek::admin::{serve_admin_with, AdminBackend, AdminError, AdminOptions};
use edgeseek::keys::KeyStore;
use edgeseek::schema::MIGRATIONS;
use edgeseek::store::Store;
use serde_json::{json, Value};

struct Fake;

impl AdminBackend for Fake {
    fn status(&self) -> Value {
        json!({
            "model": "fake-model",
            "provider": "cpu",
            "queue_depth": 2,
            "active_sequences": 1,
            "tokens_per_s": 12.5,
            "uptime_s": 42,
            "tls": {"fingerprint": "AB:CD", "not_after": "2027-01-01T00:00:00Z"},
        })
    }
    fn models(&self) -> Value {
        json!([{"id": "fake-model", "provider": "cpu"}])
    }
}

struct Daemon {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), AdminError>>>,
    keys: KeyStore,
    socket: PathBuf,
}

impl Daemon {
    /// Open the store in `state_dir` (holding the redb lock, as the real daemon does) and
    /// serve `<state_dir>/admin.sock`.
    fn start(state_dir: &Path, opts: AdminOptions) -> Daemon {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let keys = KeyStore::open(Store::open_in(state_dir, MIGRATIONS).unwrap()).unwrap();
        let socket = state_dir.join("admin.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (k, s) = (keys.clone(), socket.clone());
        let task = rt.spawn(async move {
            serve_admin_with(
                &s,
                k,
                Arc::new(Fake),
                async {
                    let _ = rx.await;
                },
                opts,
            )
            .await
        });
        // Wait until it accepts (a stale socket file may exist before the daemon replaces it).
        let mut up = false;
        for _ in 0..500 {
            if UnixStream::connect(&socket).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(up, "admin socket never accepted a connection");
        Daemon {
            rt,
            stop: Some(tx),
            task: Some(task),
            keys,
            socket,
        }
    }

    fn stop(mut self) -> Result<(), AdminError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), AdminError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => self.rt.block_on(t).unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// One raw protocol exchange on an open connection.
fn ask(conn: &mut BufReader<UnixStream>, req: &str) -> Value {
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    conn.get_mut().write_all(b"\n").unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgeseek")
}

fn edgeseek(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--dev")
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env("EDGESEEK_LOG", "warn")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn last_line(o: &Output) -> String {
    text(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn protocol_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), AdminOptions::default());
    let mut c = BufReader::new(UnixStream::connect(&d.socket).unwrap());

    let st = ask(&mut c, r#"{"v":1,"cmd":"status"}"#);
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["v"], 1);
    assert_eq!(st["result"]["model"], "fake-model");
    let m = ask(&mut c, r#"{"v":1,"cmd":"models.list"}"#);
    assert_eq!(m["result"][0]["id"], "fake-model");

    let cr = ask(
        &mut c,
        r#"{"v":1,"cmd":"keys.create","name":"laptop","scopes":["chat","kb:read:docs"],"rpm":5}"#,
    );
    assert_eq!(cr["ok"], true, "{cr}");
    let secret = cr["result"]["secret"].as_str().unwrap().to_string();
    let id = cr["result"]["id"].as_str().unwrap().to_string();
    assert_eq!(cr["result"]["scopes"], json!(["chat", "kb:read:docs"]));
    // The daemon's own cache knows the key at once.
    let info = d.keys.authenticate(&secret).unwrap().unwrap();
    assert_eq!((info.id.as_str(), info.rpm), (id.as_str(), Some(5)));

    let l = ask(&mut c, r#"{"v":1,"cmd":"keys.list"}"#);
    let list = l["result"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "laptop");
    assert!(
        !l.to_string().contains(&secret),
        "list must not carry secrets"
    );

    // Errors keep the connection usable.
    for (bad, want) in [
        (
            r#"{"v":1,"cmd":"keys.create","name":"x","scopes":["root"]}"#,
            "invalid scope",
        ),
        (
            r#"{"v":1,"cmd":"keys.create","name":"laptop","scopes":["chat"]}"#,
            "already exists",
        ),
        (r#"{"v":1,"cmd":"keys.create","name":"y"}"#, "scopes"),
        (r#"{"v":1,"cmd":"launch"}"#, "unknown command"),
        (
            r#"{"v":2,"cmd":"status"}"#,
            "unsupported protocol version 2",
        ),
        (r#"{"cmd":"status"}"#, "missing protocol version"),
        (r#"{"v":1,"cmd":"#, "malformed request"),
        (r#"{"v":1,"cmd":"keys.revoke","key":"nobody"}"#, "no key"),
    ] {
        let r = ask(&mut c, bad);
        assert_eq!(r["ok"], false, "{bad} → {r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(want), "{bad} → {e}");
    }

    let rv = ask(&mut c, r#"{"v":1,"cmd":"keys.revoke","key":"laptop"}"#);
    assert_eq!(rv["result"]["revoked"], true, "{rv}");
    assert_eq!(d.keys.authenticate(&secret).unwrap(), None);

    let rl = ask(&mut c, r#"{"v":1,"cmd":"reload"}"#);
    assert_eq!(rl["ok"], true, "{rl}");
    assert_eq!(d.keys.authenticate(&secret).unwrap(), None);

    drop(c);
    let socket = d.socket.clone();
    d.stop().unwrap();
    assert!(!socket.exists(), "socket left behind after shutdown");
}

#[test]
fn cli_goes_through_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), AdminOptions::default());
    // The test process holds the redb file, so only the socket can serve these commands.
    let o = edgeseek(
        dir.path(),
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--scope",
            "chat,embeddings",
            "--rpm",
            "7",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let secret = last_line(&o);
    assert!(
        secret.starts_with("es-") && secret.len() == 67,
        "{secret:?}"
    );
    assert_eq!(text(&o.stdout).matches(&secret).count(), 1);
    assert!(d.keys.authenticate(&secret).unwrap().is_some());

    let o = edgeseek(dir.path(), &["keys", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("ci") && out.contains("chat,embeddings") && out.contains("active"));
    assert!(!out.contains(&secret));

    let o = edgeseek(dir.path(), &["keys", "list", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["rpm"], 7);

    let o = edgeseek(dir.path(), &["status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("fake-model") && out.contains("tls.fingerprint"),
        "{out}"
    );
    let o = edgeseek(dir.path(), &["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["queue_depth"], 2);

    let o = edgeseek(dir.path(), &["models", "list"]);
    assert!(
        text(&o.stdout).contains("fake-model"),
        "{}",
        text(&o.stdout)
    );

    let o = edgeseek(dir.path(), &["keys", "revoke", "ci"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(d.keys.authenticate(&secret).unwrap(), None);

    let o = edgeseek(
        dir.path(),
        &["keys", "create", "--name", "x", "--scope", "chat,kb:nope"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("invalid scope `kb:nope`"));
}

#[test]
fn keys_cli_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // status and models need a daemon
    for args in [&["status"][..], &["models", "list"]] {
        let o = edgeseek(&state, args);
        assert_eq!(o.status.code(), Some(1));
        let err = text(&o.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "edgeseek: error: daemon not running (no socket at {})",
                state.join("admin.sock").display()
            )
        );
    }
    // listing creates nothing
    let o = edgeseek(&state, &["keys", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!state.join("edgeseek.redb").exists());

    let o = edgeseek(
        &state,
        &[
            "keys",
            "create",
            "--name",
            "offline",
            "--scope",
            "chat,kb:read:docs",
            "--tpm",
            "1000",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let secret = last_line(&o);
    assert!(secret.starts_with("es-"), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).lines().count() > 1,
        "info lines precede the secret"
    );

    let o = edgeseek(&state, &["keys", "list", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "offline");
    assert_eq!(v[0]["scopes"], json!(["chat", "kb:read:docs"]));

    // the daemon that starts next accepts the key
    {
        let ks = KeyStore::open(Store::open_in(&state, MIGRATIONS).unwrap()).unwrap();
        let info = ks.authenticate(&secret).unwrap().unwrap();
        assert_eq!(info.tpm, Some(1000));
    }

    let o = edgeseek(&state, &["keys", "revoke", "offline"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ks = KeyStore::open(Store::open_in(&state, MIGRATIONS).unwrap()).unwrap();
    assert_eq!(ks.authenticate(&secret).unwrap(), None);

    // Database held (here by `ks`) but no socket: a clear error, never a second writer.
    let o = edgeseek(&state, &["keys", "list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("edgeseek.redb is held by another process") && err.contains("admin.sock"),
        "{err}"
    );
}

fn setpriv() -> Option<&'static str> {
    let root = nix::unistd::geteuid().is_root();
    let have = Command::new("setpriv").arg("--version").output().is_ok();
    (root && have).then_some("setpriv")
}

/// A copy of the binary and a state dir that other uids can reach.
fn world_reachable(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = dir.join("edgeseek");
    std::fs::copy(bin(), &b).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    (b, state)
}

fn as_user(bin: &Path, state: &Path, ids: &[&str], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(ids)
        .arg(bin)
        .arg("--dev")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("EDGESEEK_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn non_admin_uid_is_refused() {
    let Some(_) = setpriv() else {
        eprintln!("SKIPPED: needs root and setpriv to connect from another uid");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (bin, state) = world_reachable(dir.path());
    let d = Daemon::start(&state, AdminOptions::default());
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);

    // uid 65534 with primary group 0 passes the file permissions (root:root 0660), so this is
    // the peer-credential check refusing it.
    let ids = ["--reuid=65534", "--regid=0", "--clear-groups"];
    let o = as_user(&bin, &state, &ids, &["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    // …and key commands must not fall back to the database behind the daemon's back
    let o = as_user(
        &bin,
        &state,
        &ids,
        &["keys", "create", "--name", "evil", "--scope", "admin"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("permission denied: uid 65534"));
    assert!(o.stdout.is_empty());
    assert!(d.keys.list().unwrap().is_empty());

    // Without the group the kernel already refuses the connect.
    let o = as_user(
        &bin,
        &state,
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &["keys", "list"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("permission denied"),
        "{}",
        text(&o.stderr)
    );

    // root is always let in
    let o = as_user(&bin, &state, &["--reuid=0"], &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn admin_group_members_are_allowed() {
    let Some(_) = setpriv() else {
        eprintln!("SKIPPED: needs root and setpriv to connect from another uid");
        return;
    };
    // A gid that need not exist in /etc/group: the check is numeric.
    const GID: u32 = 47_113;
    let dir = tempfile::tempdir().unwrap();
    let (bin, state) = world_reachable(dir.path());
    let d = Daemon::start(
        &state,
        AdminOptions {
            admin_gid: Some(GID),
        },
    );
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GID));

    let gid = format!("--regid={GID}");
    let groups = format!("--groups={GID}");
    // admin group as the primary group
    let o = as_user(
        &bin,
        &state,
        &["--reuid=65534", &gid, "--clear-groups"],
        &["status", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // admin group as a supplementary group (read from /proc/<pid>/status)
    let o = as_user(
        &bin,
        &state,
        &["--reuid=65534", "--regid=65534", &groups],
        &["keys", "create", "--name", "member", "--scope", "chat"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(d.keys.authenticate(&last_line(&o)).unwrap().is_some());
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "stale socket file");
    let d = Daemon::start(dir.path(), AdminOptions::default());
    let mut c = BufReader::new(UnixStream::connect(&sock).unwrap());
    assert_eq!(ask(&mut c, r#"{"v":1,"cmd":"status"}"#)["ok"], true);

    // A second daemon on the same socket is refused and leaves the first one alone.
    let ks = d.keys.clone();
    let r = d.rt.block_on(serve_admin_with(
        &sock,
        ks,
        Arc::new(Fake),
        std::future::pending(),
        AdminOptions::default(),
    ));
    assert!(matches!(r, Err(AdminError::InUse { .. })), "{r:?}");
    assert_eq!(ask(&mut c, r#"{"v":1,"cmd":"status"}"#)["ok"], true);

    // A regular file is never replaced.
    let other = dir.path().join("not-a-socket");
    std::fs::write(&other, b"keep me").unwrap();
    let r = d.rt.block_on(serve_admin_with(
        &other,
        d.keys.clone(),
        Arc::new(Fake),
        std::future::pending(),
        AdminOptions::default(),
    ));
    assert!(matches!(r, Err(AdminError::NotASocket { .. })), "{r:?}");
    assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
}
