//! API keys: creation, scopes, authentication against an in-memory cache, per-key rate limits.
//!
//! A secret is `es-` followed by 32 random bytes from the OS in hex. Only its SHA-256 is stored.
//! A fast unsalted hash is the right tool here: the secret carries 256 bits of entropy, so neither
//! brute force nor precomputed tables can invert the digest, and hashing stays cheap enough to run
//! on every request. (Slow salted hashes like argon2 exist to protect low-entropy passwords.)
//!
//! Authentication looks the digest up in a map of valid keys. The lookup's timing depends on the
//! *digest* of the presented secret, not on the stored secret, so it leaks nothing an attacker
//! could use without a SHA-256 preimage; a constant-time compare would add nothing there.

//!
//! Parts: this file holds the store (create, list, revoke, authenticate, reload, the
//! last_used writer); `scope` the scopes and their matching; `limits` the rate limits and
//! the clock they run on.

mod limits;
mod scope;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, KEYS};
use crate::util::{hex, lock, read, write};

pub use limits::{Clock, ManualClock, RateLimited, SystemClock};
pub use scope::{parse_scopes, Scope};

use limits::Limits;

/// Prefix of every secret; lets log scrubbers and secret scanners recognise them.
pub const SECRET_PREFIX: &str = "es-";
const SECRET_BYTES: usize = 32;
/// last_used is written back at most this often per key.
const LAST_USED_EVERY_S: u64 = 60;
const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid scope `{scope}`: {why}")]
    InvalidScope { scope: String, why: &'static str },
    #[error("invalid key name `{0}`: use 1-64 letters, digits, `-`, `_`, `.` or `@`")]
    InvalidName(String),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("an active key named `{0}` already exists")]
    NameTaken(String),
    #[error("no key with id or name `{0}`")]
    NotFound(String),
    #[error("several active keys are named `{name}` ({ids}); revoke by id")]
    Ambiguous { name: String, ids: String },
    #[error("invalid group {0:?}: 1-64 lowercase letters, digits, '-' or '_'")]
    InvalidGroup(String),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("key record {id} is unreadable: {msg}")]
    Corrupt { id: String, msg: String },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

crate::store::redb_errors_into!(KeyError, KeyError::Store);

/// What the API needs to know about an authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// The usage group (department) its calls are counted in.
    pub group: Option<String>,
    pub quota: crate::usage::Quota,
}

/// What a new key is limited to, besides its scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub group: Option<String>,
    pub quota: crate::usage::Quota,
}

/// A key as listed by `keys list` (never contains the secret or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; kept to the minute (see [`KeyStore::authenticate`]).
    #[serde(default)]
    pub last_used: Option<u64>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u32>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Usage group (department); see `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

impl KeyRecord {
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
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

/// The value stored in the `keys` table.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    record: KeyRecord,
    /// Hex SHA-256 of the full secret text (`es-…`).
    sha256: String,
}

type Digest32 = [u8; 32];

struct CachedKey {
    info: KeyInfo,
    /// Last authentication, unix seconds (0 = never in this process).
    last_seen: AtomicU64,
    /// When last_used was last queued for writing, unix seconds.
    last_queued: AtomicU64,
}

/// Writes last_used on its own thread so authentication never waits for a redb write
/// transaction (which may be queued behind a long knowledge-base ingest).
struct Flusher {
    tx: Option<SyncSender<(String, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    cache: RwLock<HashMap<Digest32, Arc<CachedKey>>>,
    limits: Mutex<HashMap<String, Limits>>,
    flusher: Mutex<Flusher>,
    /// Held across create / revoke / reload, each of which reads or writes the file and then
    /// updates the cache. Without it a reload could read the table, lose the race to a revoke,
    /// and then install its stale copy: the revoked key would be valid again.
    mutate: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel, then wait for the last writes: the flusher holds a clone of the
        // Store, and the file must be unlocked when the last KeyStore is gone.
        let f = self.flusher.get_mut().unwrap_or_else(|e| e.into_inner());
        f.tx = None;
        if let Some(t) = f.thread.take() {
            let _ = t.join();
        }
    }
}

/// The API key store. Cheap to clone; all clones share one cache and one set of rate limits.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("store", &self.inner.store)
            .finish()
    }
}

fn unhex32(s: &str) -> Option<Digest32> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    use rand::TryRngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().count() <= MAX_NAME_CHARS
        && n.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn decode(id: &str, bytes: &[u8]) -> Result<StoredKey, KeyError> {
    serde_json::from_slice(bytes).map_err(|e| KeyError::Corrupt {
        id: id.to_string(),
        msg: e.to_string(),
    })
}

fn encode(k: &StoredKey) -> Result<Vec<u8>, KeyError> {
    serde_json::to_vec(k).map_err(|e| KeyError::Corrupt {
        id: k.record.id.clone(),
        msg: e.to_string(),
    })
}

impl KeyStore {
    /// Load the keys of `store` into memory.
    pub fn open(store: Store) -> Result<KeyStore, KeyError> {
        Self::open_with_clock(store, Arc::new(SystemClock::default()))
    }

    pub fn open_with_clock(store: Store, clock: Arc<dyn Clock>) -> Result<KeyStore, KeyError> {
        let (tx, rx) = sync_channel(1024);
        let flush_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("edgeseek-keys".into())
            .spawn(move || flush_last_used(flush_store, rx))
            .map_err(|e| KeyError::Store(StoreError::Db(format!("starting key writer: {e}"))))?;
        let ks = KeyStore {
            inner: Arc::new(Inner {
                store,
                clock,
                cache: RwLock::new(HashMap::new()),
                limits: Mutex::new(HashMap::new()),
                flusher: Mutex::new(Flusher {
                    tx: Some(tx),
                    thread: Some(thread),
                }),
                mutate: Mutex::new(()),
            }),
        };
        ks.reload()?;
        Ok(ks)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Create a key with rate limits only (see [`KeyStore::create_with`]).
    pub fn create(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        rpm: Option<u32>,
        tpm: Option<u32>,
    ) -> Result<(KeyRecord, String), KeyError> {
        self.create_with(
            name,
            scopes,
            KeyOptions {
                rpm,
                tpm,
                ..KeyOptions::default()
            },
        )
    }

    /// Create a key. Returns its info and the secret, which is never stored or shown again.
    pub fn create_with(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        opts: KeyOptions,
    ) -> Result<(KeyRecord, String), KeyError> {
        let KeyOptions {
            rpm,
            tpm,
            group,
            quota,
        } = opts;
        if let Some(g) = group.as_deref().filter(|g| !crate::usage::valid_group(g)) {
            return Err(KeyError::InvalidGroup(g.to_string()));
        }
        if quota.tokens_per_day == Some(0) || quota.tokens_per_month == Some(0) {
            return Err(KeyError::Invalid(
                "token quotas must be at least 1 (omit them for no quota)",
            ));
        }
        if !valid_name(name) {
            return Err(KeyError::InvalidName(name.to_string()));
        }
        if scopes.is_empty() {
            return Err(KeyError::Invalid("a key needs at least one scope"));
        }
        if rpm == Some(0) || tpm == Some(0) {
            return Err(KeyError::Invalid(
                "--rpm / --tpm must be at least 1 (omit them for no limit)",
            ));
        }
        let mut uniq: Vec<Scope> = Vec::with_capacity(scopes.len());
        for s in scopes {
            if !uniq.contains(&s) {
                uniq.push(s);
            }
        }
        let secret = format!("{SECRET_PREFIX}{}", hex(&random_bytes::<SECRET_BYTES>()?));
        let hash = digest(&secret);
        let _serial = lock(&self.inner.mutate);
        let tx = self.inner.store.begin_write()?;
        let record = {
            let mut table = tx.open_table(KEYS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let other = decode(k.value(), v.value())?;
                if !other.record.revoked && other.record.name == name {
                    return Err(KeyError::NameTaken(name.to_string()));
                }
            }
            // 48 random bits: a collision is astronomically unlikely, but check anyway.
            let mut id = hex(&random_bytes::<6>()?);
            while table.get(id.as_str())?.is_some() {
                id = hex(&random_bytes::<6>()?);
            }
            let record = KeyRecord {
                id: id.clone(),
                name: name.to_string(),
                scopes: uniq,
                created: self.inner.clock.unix_secs(),
                last_used: None,
                rpm,
                tpm,
                revoked: false,
                revoked_at: None,
                group,
                tokens_per_day: quota.tokens_per_day,
                tokens_per_month: quota.tokens_per_month,
            };
            let stored = StoredKey {
                record: record.clone(),
                sha256: hex(&hash),
            };
            table.insert(id.as_str(), encode(&stored)?.as_slice())?;
            record
        };
        tx.commit()?;
        let info = record.info();
        write(&self.inner.cache).insert(hash, Arc::new(cached(info.clone(), None)));
        tracing::info!(key_id = %info.id, name = %info.name, "API key created");
        Ok((record, secret))
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let mut out = self.read_all()?;
        // last_used in the file lags by up to a minute; the cache knows the latest use.
        let cache = read(&self.inner.cache);
        let seen: HashMap<&str, u64> = cache
            .values()
            .map(|c| (c.info.id.as_str(), c.last_seen.load(Ordering::Relaxed)))
            .collect();
        for (_, r) in out.iter_mut() {
            if let Some(&t) = seen.get(r.id.as_str()) {
                if t > r.last_used.unwrap_or(0) {
                    r.last_used = Some(t);
                }
            }
        }
        drop(cache);
        let mut records: Vec<KeyRecord> = out.into_iter().map(|(_, r)| r).collect();
        records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(records)
    }

    fn read_all(&self) -> Result<Vec<(String, KeyRecord)>, KeyError> {
        let tx = self.inner.store.begin_read()?;
        let table = tx.open_table(KEYS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let s = decode(k.value(), v.value())?;
            out.push((s.sha256, s.record));
        }
        Ok(out)
    }

    /// Revoke by id, or by name when exactly one active key has it. Subsequent
    /// [`authenticate`](Self::authenticate) calls refuse the key.
    pub fn revoke(&self, id_or_name: &str) -> Result<KeyRecord, KeyError> {
        let _serial = lock(&self.inner.mutate);
        let tx = self.inner.store.begin_write()?;
        let stored = {
            let mut table = tx.open_table(KEYS)?;
            let by_id = match table.get(id_or_name)? {
                Some(v) => Some(decode(id_or_name, v.value())?),
                None => None,
            };
            let mut stored = match by_id {
                Some(s) => s,
                None => {
                    let mut active = Vec::new();
                    let mut revoked = None;
                    for row in table.iter()? {
                        let (k, v) = row?;
                        let s = decode(k.value(), v.value())?;
                        if s.record.name == id_or_name {
                            if s.record.revoked {
                                revoked = Some(s.record.id.clone());
                            } else {
                                active.push(s);
                            }
                        }
                    }
                    match (active.len(), revoked) {
                        (1, _) => active.remove(0),
                        (0, Some(id)) => return Err(KeyError::AlreadyRevoked(id)),
                        (0, None) => return Err(KeyError::NotFound(id_or_name.to_string())),
                        _ => {
                            return Err(KeyError::Ambiguous {
                                name: id_or_name.to_string(),
                                ids: active
                                    .iter()
                                    .map(|s| s.record.id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })
                        }
                    }
                }
            };
            if stored.record.revoked {
                return Err(KeyError::AlreadyRevoked(stored.record.id));
            }
            stored.record.revoked = true;
            stored.record.revoked_at = Some(self.inner.clock.unix_secs());
            table.insert(stored.record.id.as_str(), encode(&stored)?.as_slice())?;
            stored
        };
        tx.commit()?;
        // Committed first, then dropped from the cache: a crash in between cannot resurrect it.
        if let Some(h) = unhex32(&stored.sha256) {
            write(&self.inner.cache).remove(&h);
        }
        // Also drop any entry carrying this id, in case the stored hash was unreadable.
        write(&self.inner.cache).retain(|_, c| c.info.id != stored.record.id);
        lock(&self.inner.limits).remove(&stored.record.id);
        tracing::info!(key_id = %stored.record.id, name = %stored.record.name, "API key revoked");
        Ok(stored.record)
    }

    /// The key whose secret this is, if it exists and is not revoked. Served from memory;
    /// last_used is written back in the background at most once a minute per key.
    pub fn authenticate(&self, bearer_secret: &str) -> Result<Option<KeyInfo>, KeyError> {
        // The format is public, so rejecting malformed input early leaks nothing.
        if !bearer_secret.starts_with(SECRET_PREFIX)
            || bearer_secret.len() != SECRET_PREFIX.len() + 2 * SECRET_BYTES
        {
            return Ok(None);
        }
        let h = digest(bearer_secret);
        let Some(key) = read(&self.inner.cache).get(&h).cloned() else {
            return Ok(None);
        };
        let now = self.inner.clock.unix_secs();
        key.last_seen.fetch_max(now, Ordering::Relaxed);
        let queued = key.last_queued.load(Ordering::Relaxed);
        if now >= queued.saturating_add(LAST_USED_EVERY_S)
            && key
                .last_queued
                .compare_exchange(queued, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let f = lock(&self.inner.flusher);
            if let Some(tx) = &f.tx {
                match tx.try_send((key.info.id.clone(), now)) {
                    Ok(()) => {}
                    // Only a bookkeeping timestamp; it is retried a minute later.
                    Err(TrySendError::Full(_)) => {
                        tracing::debug!(key_id = %key.info.id, "last_used queue full")
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        tracing::warn!("last_used writer stopped")
                    }
                }
            }
        }
        Ok(Some(key.info.clone()))
    }

    /// Re-read every key from the database (SIGHUP). Rate-limit state is kept.
    pub fn reload(&self) -> Result<(), KeyError> {
        let _serial = lock(&self.inner.mutate);
        let rows = self.read_all()?;
        let old = read(&self.inner.cache).clone();
        let mut fresh = HashMap::with_capacity(rows.len());
        for (sha, r) in rows.into_iter().filter(|(_, r)| !r.revoked) {
            let Some(h) = unhex32(&sha) else {
                tracing::warn!(key_id = %r.id, "stored key hash is malformed; key disabled");
                continue;
            };
            let prev = old.get(&h);
            let c = cached(r.info(), prev.map(|p| p.as_ref()));
            if prev.is_none() {
                c.last_seen
                    .store(r.last_used.unwrap_or(0), Ordering::Relaxed);
            }
            fresh.insert(h, Arc::new(c));
        }
        let n = fresh.len();
        *write(&self.inner.cache) = fresh;
        let live: std::collections::HashSet<String> = read(&self.inner.cache)
            .values()
            .map(|c| c.info.id.clone())
            .collect();
        lock(&self.inner.limits).retain(|id, _| live.contains(id));
        tracing::debug!(active_keys = n, "API keys loaded");
        Ok(())
    }
}

fn cached(info: KeyInfo, prev: Option<&CachedKey>) -> CachedKey {
    let (seen, queued) = prev
        .map(|p| {
            (
                p.last_seen.load(Ordering::Relaxed),
                p.last_queued.load(Ordering::Relaxed),
            )
        })
        .unwrap_or((0, 0));
    CachedKey {
        info,
        last_seen: AtomicU64::new(seen),
        last_queued: AtomicU64::new(queued),
    }
}

/// The last_used writer: batches whatever is queued into one write transaction.
fn flush_last_used(store: Store, rx: Receiver<(String, u64)>) {
    while let Ok(first) = rx.recv() {
        let mut batch: HashMap<String, u64> = HashMap::new();
        batch.insert(first.0, first.1);
        while let Ok((id, t)) = rx.try_recv() {
            let e = batch.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
        if let Err(e) = write_last_used(&store, &batch) {
            tracing::warn!(error = %e, "could not record API key last_used");
        }
    }
}

fn write_last_used(store: &Store, batch: &HashMap<String, u64>) -> Result<(), KeyError> {
    let tx = store.begin_write()?;
    {
        let mut table = tx.open_table(KEYS)?;
        for (id, &t) in batch {
            let current = match table.get(id.as_str())? {
                Some(v) => decode(id, v.value())?,
                None => continue,
            };
            let mut s = current;
            if s.record.last_used.unwrap_or(0) >= t {
                continue;
            }
            s.record.last_used = Some(t);
            table.insert(id.as_str(), encode(&s)?.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;
    use std::time::Duration;

    pub(super) fn open(dir: &Path) -> (KeyStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let ks = KeyStore::open_with_clock(
            Store::open_in(dir, &[crate::store::KEYS_V1]).unwrap(),
            clock.clone(),
        )
        .unwrap();
        (ks, clock)
    }

    pub(super) fn scopes(s: &str) -> Vec<Scope> {
        parse_scopes(s).unwrap()
    }

    /// A new `chat` key with these limits, as the API sees it.
    pub(super) fn chat_key(
        ks: &KeyStore,
        name: &str,
        rpm: Option<u32>,
        tpm: Option<u32>,
    ) -> KeyInfo {
        ks.create(name, scopes("chat"), rpm, tpm).unwrap().0.info()
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, clock) = open(dir.path());
        let (info, secret) = ks
            .create("laptop", scopes("chat,kb:read:docs"), Some(10), None)
            .unwrap();
        assert!(
            secret.starts_with("es-") && secret.len() == 3 + 64,
            "{secret}"
        );
        assert_eq!(info.name, "laptop");
        assert_eq!(ks.authenticate(&secret).unwrap(), Some(info.info()));

        // wrong secrets: flipped last char, other prefix, truncated, empty
        let mut wrong = secret.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        for w in [wrong.as_str(), &secret[3..], &secret[..40], "", "Bearer x"] {
            assert_eq!(ks.authenticate(w).unwrap(), None, "{w}");
        }

        // the store never holds the secret
        let raw = std::fs::read(ks.store().path()).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));

        // a second active key with the same name is refused
        assert!(matches!(
            ks.create("laptop", scopes("chat"), None, None),
            Err(KeyError::NameTaken(_))
        ));

        let r = ks.revoke("laptop").unwrap();
        assert!(r.revoked && r.revoked_at.is_some() && r.id == info.id);
        assert_eq!(ks.authenticate(&secret).unwrap(), None);
        assert!(matches!(
            ks.revoke(&info.id),
            Err(KeyError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            ks.revoke("laptop"),
            Err(KeyError::AlreadyRevoked(_))
        ));
        assert!(matches!(ks.revoke("nope"), Err(KeyError::NotFound(_))));
        // the name is free again after revocation
        clock.advance(Duration::from_secs(1));
        let (i2, s2) = ks.create("laptop", scopes("chat"), None, None).unwrap();
        assert_ne!(i2.id, info.id);
        assert!(ks.authenticate(&s2).unwrap().is_some());
        let l = ks.list().unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].revoked && !l[1].revoked);
    }

    #[test]
    fn invalid_create_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, _) = open(dir.path());
        for name in ["", "has space", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    ks.create(name, scopes("chat"), None, None),
                    Err(KeyError::InvalidName(_))
                ),
                "{name}"
            );
        }
        assert!(ks.create("ok", vec![], None, None).is_err());
        assert!(ks.create("ok", scopes("chat"), Some(0), None).is_err());
        assert!(ks.list().unwrap().is_empty());
    }

    #[test]
    fn persists_across_reopen_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, revoked_secret, id) = {
            let (ks, clock) = open(dir.path());
            let (i, s) = ks.create("a", scopes("chat"), None, Some(100)).unwrap();
            clock.advance(Duration::from_secs(1));
            let (_, s2) = ks.create("b", scopes("admin"), None, None).unwrap();
            ks.revoke("b").unwrap();
            clock.advance(Duration::from_secs(5));
            assert!(ks.authenticate(&s).unwrap().is_some());
            (s, s2, i.id)
        };
        // Dropping the KeyStore and Store unlocked the file and flushed last_used.
        let (ks, _) = open(dir.path());
        let got = ks.authenticate(&secret).unwrap().unwrap();
        assert_eq!((got.id.as_str(), got.tpm), (id.as_str(), Some(100)));
        assert_eq!(ks.authenticate(&revoked_secret).unwrap(), None);
        let rec = ks.list().unwrap();
        assert_eq!(rec[0].id, id);
        assert_eq!(rec[0].last_used, Some(1_700_000_006));
        assert!(rec[1].revoked);
        // reload keeps answering the same
        ks.reload().unwrap();
        assert!(ks.authenticate(&secret).unwrap().is_some());
        assert_eq!(ks.authenticate(&revoked_secret).unwrap(), None);
    }

    #[test]
    fn last_used_written_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, clock) = open(dir.path());
        let (i, s) = ks.create("a", scopes("chat"), None, None).unwrap();
        let stored_last_used = |ks: &KeyStore| {
            ks.read_all()
                .unwrap()
                .into_iter()
                .find(|(_, r)| r.id == i.id)
                .unwrap()
                .1
                .last_used
        };
        let wait_for = |ks: &KeyStore, want: Option<u64>| {
            for _ in 0..200 {
                if stored_last_used(ks) == want {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("stored last_used never became {want:?}");
        };
        ks.authenticate(&s).unwrap();
        wait_for(&ks, Some(1_700_000_000));
        clock.advance(Duration::from_secs(30));
        ks.authenticate(&s).unwrap();
        // within the minute: list shows the fresh time, the file keeps the old one
        assert_eq!(ks.list().unwrap()[0].last_used, Some(1_700_000_030));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(stored_last_used(&ks), Some(1_700_000_000));
        clock.advance(Duration::from_secs(31));
        ks.authenticate(&s).unwrap();
        wait_for(&ks, Some(1_700_000_061));
    }

    #[test]
    fn clones_share_state_and_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<KeyStore>();
        let dir = tempfile::tempdir().unwrap();
        let (ks, _) = open(dir.path());
        let other = ks.clone();
        let (_, s) = ks.create("a", scopes("chat"), None, None).unwrap();
        assert!(other.authenticate(&s).unwrap().is_some());
        other.revoke("a").unwrap();
        assert!(ks.authenticate(&s).unwrap().is_none());
    }
}
