//! The audit log: one append-only, hash-chained record per API call, authentication failure
//! and administrative change, kept under `<state_dir>/audit/`.
//!
//! **Format.** JSON lines in segment files named by the sequence number of their first record
//! (`00000000000000000001.jsonl`). A record is its fields followed by `"hash"` as the last
//! member; the hash is SHA-256 over the previous record's hash (hex) and the exact bytes of
//! the line up to that member, so any edited byte, removed or reordered record breaks the
//! chain at that point. The line bytes are hashed as written (not re-serialized), so even an
//! added field or changed whitespace is caught.
//!
//! **Ends of the chain.** `head.json` holds the last record the log made durable (sequence
//! and hash), rewritten after each sync: a cut at the end (truncated file, deleted newest
//! segment) leaves records the head names missing. `anchor.json` holds where the retained
//! chain starts: retention (by age and total size) drops whole oldest segments and moves the
//! anchor first, so a log thinned by retention verifies, one cut at its start does not.
//! Someone able to rewrite every later record and both files can forge a consistent log; the
//! journal copy of each record (see [`AuditLog::append`]) is the outside witness against that.
//!
//! **Durability.** Each record is written to the file (one `write` of the whole line) before
//! the call it records answers, so a killed daemon loses none; the file is synced to disk at
//! most a second later ([`AuditLog::sync`], called by a timer), so a power cut loses at most
//! that second. A torn last line (the machine died mid-write) is cut off at open, with a
//! warning; a complete line is never rewritten.
//!
//! One writer at a time: the daemon while it runs, else an offline `edgeseek` command; an
//! exclusive lock on `lock` keeps two from interleaving. Reading (`edgeseek audit`, verify)
//! needs no lock: it stops at the last complete line.

mod read;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use read::{read, verify, Filter, Verified};

use crate::util::lock;

/// The hash a chain's first record follows.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Suffix every record line ends with after its hash: `"}` and the newline.
const HASH_MEMBER: &str = ",\"hash\":\"";

/// What happened. Fields that do not apply are left out of the record.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `api` (a request answered), `auth_failure`, or `admin` (a change through the admin
    /// socket or an offline command).
    pub kind: String,
    pub request_id: Option<String>,
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// The key's usage group (department), when it has one.
    pub group: Option<String>,
    /// Peer address (`ip:port`), or `socket` / `cli` for admin actions.
    pub source: Option<String>,
    pub method: Option<String>,
    /// The route's pattern (`/v1/kb/collections/{name}`), not the raw path.
    pub route: Option<String>,
    /// The action of an admin change (`keys.create`, `agents.delete`, …).
    pub action: Option<String>,
    /// What the call named: a model or `agent:NAME`.
    pub model: Option<String>,
    /// The remote model (`[remote.NAME]`) that answered: the request left the appliance.
    pub remote: Option<String>,
    /// The local model was busy and the request went to `remote` instead.
    pub overflow: Option<bool>,
    /// The thing an admin change or a route's parameters name (a key id, a collection).
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub status: Option<u16>,
    /// Milliseconds from the request's arrival to the end of its response body.
    pub ms: Option<u64>,
    /// The error's message for a refused or failed call.
    pub error: Option<String>,
    /// The request's content, only with `[audit] include_content = true`.
    pub content: Option<Value>,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since 1970-01-01 UTC.
    pub time_ms: u64,
    pub prev: String,
    #[serde(flatten)]
    pub event: Event,
    pub hash: String,
}

/// `[audit]`: retention and content.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records older than this many days are dropped (whole segments). Default 400: a year
    /// and a margin, what most retention policies ask for.
    pub max_age_days: u64,
    /// The log's size limit in MiB; the oldest segments go first. Default 1024.
    pub max_mb: u64,
    /// Keep the request's messages in API records. Default false: the log says who did
    /// what, not what they wrote.
    pub include_content: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_age_days: 400,
            max_mb: 1024,
            include_content: false,
        }
    }
}

impl AuditConfig {
    /// A segment is an eighth of the size limit (at least 1 MiB), so retention by size keeps
    /// at least seven eighths of what the limit allows.
    fn segment_bytes(&self) -> u64 {
        (self.max_mb * 1024 * 1024 / 8).max(1024 * 1024)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("audit log {dir} is being written by another process (the running daemon?)")]
    Locked { dir: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// The sequence number and hash of a point of the chain (`head.json`, `anchor.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub seq: u64,
    pub hash: String,
}

/// The writer.
pub struct AuditLog {
    dir: PathBuf,
    cfg: Mutex<AuditConfig>,
    w: Mutex<Writer>,
    /// Held for the log's lifetime: one writer per directory.
    _lock: File,
}

struct Writer {
    file: File,
    path: PathBuf,
    bytes: u64,
    /// The last record written: its sequence number and hash.
    last: Mark,
    /// The last record made durable (what `head.json` says).
    synced: u64,
}

impl AuditLog {
    /// Open (creating) the log in `dir`, taking its writer lock and resuming the chain from
    /// the newest segment's last complete record.
    pub fn open(dir: &Path, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        crate::util::create_private_dir(dir).map_err(io(dir))?;
        // Root running an offline admin command creates the log for the daemon's user.
        if let Some(state) = dir.parent() {
            crate::util::adopt_owner(dir, state);
        }
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        crate::util::adopt_owner(&lock_path, dir);
        nix_flock(&lock_file).map_err(|e| match e {
            nix::errno::Errno::EWOULDBLOCK => AuditError::Locked {
                dir: dir.to_path_buf(),
            },
            e => AuditError::Io {
                path: lock_path.clone(),
                why: e.to_string(),
            },
        })?;
        let segments = read::segments(dir)?;
        // Where the retained chain starts: after the last record retention dropped, or at
        // the beginning.
        let start = read::anchor(dir)?.unwrap_or(Mark {
            seq: 0,
            hash: GENESIS.to_string(),
        });
        let (path, last) = match segments.split_last() {
            None => (segment_path(dir, start.seq + 1), start),
            Some(((_, newest), older)) => {
                let last = match resume(newest)? {
                    Some(m) => m,
                    // An empty newest segment (a stop right after starting it): the chain
                    // goes on from the one before.
                    None => match older.last() {
                        Some((_, p)) => read::last_mark(p)?.unwrap_or(start),
                        None => start,
                    },
                };
                (newest.clone(), last)
            }
        };
        let file = open_append(&path)?;
        let bytes = file.metadata().map_err(io(&path))?.len();
        let log = AuditLog {
            dir: dir.to_path_buf(),
            cfg: Mutex::new(cfg),
            w: Mutex::new(Writer {
                file,
                path,
                bytes,
                synced: last.seq,
                last,
            }),
            _lock: lock_file,
        };
        log.write_head()?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether API records keep the request's content.
    pub fn include_content(&self) -> bool {
        lock(&self.cfg).include_content
    }

    /// Apply a reloaded `[audit]` section.
    pub fn set_config(&self, cfg: AuditConfig) {
        *lock(&self.cfg) = cfg;
    }

    /// Append one record, written to the file before this returns, and mirrored to the log
    /// (journald under systemd) as one structured line. Returns its sequence number.
    pub fn append(&self, event: Event) -> Result<u64, AuditError> {
        let segment_bytes = lock(&self.cfg).segment_bytes();
        let mut w = lock(&self.w);
        if w.bytes >= segment_bytes {
            let path = segment_path(&self.dir, w.last.seq + 1);
            let file = open_append(&path)?;
            w.file.sync_data().map_err(io(&w.path))?;
            w.file = file;
            w.path = path;
            w.bytes = 0;
        }
        let seq = w.last.seq + 1;
        let time_ms = now_ms();
        let (line, hash) = encode(seq, time_ms, &w.last.hash, &event);
        let path = w.path.clone();
        if let Err(e) = w.file.write_all(line.as_bytes()) {
            // A short write (a full disk) must not leave half a record for the next one to
            // follow: cut the file back to the last whole record.
            let _ = w.file.set_len(w.bytes);
            return Err(io(&path)(e));
        }
        w.bytes += line.len() as u64;
        w.last = Mark {
            seq,
            hash: hash.clone(),
        };
        drop(w);
        tracing::info!(
            target: LOG_TARGET,
            seq,
            kind = %event.kind,
            request_id = event.request_id.as_deref(),
            key_id = event.key_id.as_deref(),
            key_name = event.key_name.as_deref(),
            group = event.group.as_deref(),
            source = event.source.as_deref(),
            route = event.route.as_deref(),
            action = event.action.as_deref(),
            model = event.model.as_deref(),
            remote = event.remote.as_deref(),
            overflow = event.overflow,
            target = event.target.as_deref(),
            status = event.status,
            tokens_in = event.tokens_in,
            tokens_out = event.tokens_out,
            ms = event.ms,
            hash = %hash,
            "audit"
        );
        Ok(seq)
    }

    /// Make every written record durable and record the head; then apply retention. Cheap
    /// when nothing was written since the last call.
    pub fn sync(&self) -> Result<(), AuditError> {
        {
            let w = lock(&self.w);
            if w.synced == w.last.seq {
                return Ok(());
            }
        }
        self.write_head()?;
        self.retain()
    }

    fn write_head(&self) -> Result<(), AuditError> {
        let mut w = lock(&self.w);
        w.file.sync_data().map_err(io(&w.path))?;
        let head = w.last.clone();
        write_json(&self.dir.join("head.json"), &head)?;
        w.synced = head.seq;
        Ok(())
    }

    /// Drop the oldest segments past the age or size limit (never the one being written),
    /// moving the anchor to the first record kept before deleting anything.
    fn retain(&self) -> Result<(), AuditError> {
        let cfg = lock(&self.cfg).clone();
        let current = lock(&self.w).path.clone();
        let segments = read::segments(&self.dir)?;
        let mut sizes = Vec::with_capacity(segments.len());
        for (_, p) in &segments {
            let m = std::fs::metadata(p).map_err(io(p))?;
            sizes.push((m.len(), m.modified().ok()));
        }
        let mut total: u64 = sizes.iter().map(|s| s.0).sum();
        let max_bytes = cfg.max_mb * 1024 * 1024;
        let max_age = std::time::Duration::from_secs(cfg.max_age_days * 86_400);
        let mut drop_upto = 0;
        for (i, (_, p)) in segments.iter().enumerate() {
            if *p == current || i + 1 >= segments.len() {
                break;
            }
            // A segment's newest record is at most as old as the next segment's start; its
            // modification time is when it was last written.
            let old = sizes[i]
                .1
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if total > max_bytes || old {
                total -= sizes[i].0;
                drop_upto = i + 1;
            } else {
                break;
            }
        }
        if drop_upto == 0 {
            return Ok(());
        }
        let (next_seq, _) = &segments[drop_upto];
        // The anchor names the last dropped record, which the first kept one follows.
        let last_dropped =
            read::last_mark(&segments[drop_upto - 1].1)?.ok_or_else(|| AuditError::Io {
                path: segments[drop_upto - 1].1.clone(),
                why: "segment has no complete record".into(),
            })?;
        debug_assert_eq!(last_dropped.seq + 1, *next_seq);
        write_json(&self.dir.join("anchor.json"), &last_dropped)?;
        for (_, p) in &segments[..drop_upto] {
            std::fs::remove_file(p).map_err(io(p))?;
        }
        tracing::info!(
            dropped_through = last_dropped.seq,
            "audit retention dropped old segments"
        );
        Ok(())
    }

    /// The last record written (sequence and hash).
    pub fn last(&self) -> Mark {
        lock(&self.w).last.clone()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.write_head() {
            tracing::warn!(error = %e, "audit log: final sync failed");
        }
    }
}

fn nix_flock(f: &File) -> Result<(), nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function borrows; no memory is passed.
    let r = unsafe { nix::libc::flock(f.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// The tracing target of the records' log mirror (journald fields under systemd, stderr lines
/// elsewhere).
pub const LOG_TARGET: &str = "edgeseek::audit";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.jsonl"))
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    if let Some(dir) = path.parent() {
        crate::util::adopt_owner(path, dir);
    }
    Ok(f)
}

/// The line of a record and its hash.
fn encode(seq: u64, time_ms: u64, prev: &str, event: &Event) -> (String, String) {
    let mut body = serde_json::to_string(&serde_json::json!({
        "seq": seq, "time_ms": time_ms, "prev": prev,
    }))
    .expect("serializes");
    body.pop(); // the closing brace
    let ev = serde_json::to_string(event).expect("an event serializes");
    if ev.len() > 2 {
        body.push(',');
        body.push_str(&ev[1..ev.len() - 1]);
    }
    let hash = chain_hash(prev, &body);
    (format!("{body}{HASH_MEMBER}{hash}\"}}\n"), hash)
}

/// SHA-256 (hex) over the previous hash and a record's bytes before its hash member.
fn chain_hash(prev: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest segment's last complete record, cutting a torn final line off first.
fn resume(path: &Path) -> Result<Option<Mark>, AuditError> {
    let data = std::fs::read(path).map_err(io(path))?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < data.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = data.len() - complete,
            "audit log: cutting off a torn last line (the machine stopped mid-write)"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(complete as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    read::last_mark(path)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), AuditError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&serde_json::to_vec(v).expect("serializes"))
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    if let Some(d) = path.parent() {
        crate::util::adopt_owner(&tmp, d);
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(d) = path.parent() {
        File::open(d).and_then(|d| d.sync_all()).map_err(io(d))?;
    }
    Ok(())
}
