//! The daemon's database: one redb file at `<state_dir>/edgeseek.redb`, its table definitions and
//! versioned schema migrations.
//!
//! redb (in its default `ExclusiveWriter` mode) lets one process open the file. While the daemon
//! runs, everything else goes through the admin socket; only when no daemon holds the file does
//! the CLI open it directly (see `admin::cli`).
//!
//! The store knows no module's tables but its own (`meta`, `keys`): whoever opens it passes the
//! schema steps in order (the daemon's list is [`crate::schema::MIGRATIONS`]: this module's
//! [`KEYS_V1`], then the knowledge base's and the agents' steps), so it imports nothing above it.
//!
//! Adding a table: define its `TableDefinition` in the owning module, write
//! `fn vN(tx: &WriteTransaction) -> Result<(), StoreError>` that opens (and thereby creates) it and
//! converts any existing data, and append `Migration { version: N, .. }` to the daemon's list.
//! Versions are consecutive; a migration runs exactly once, in the same write transaction that
//! records the new version, so a crash mid-migration leaves the old schema intact.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::util::{read, write};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "edgeseek.redb";

/// `meta`: small named values; `schema_version` is the last migration applied.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// `keys`: API key id → JSON record (see `keys::StoredKey`). JSON keeps the record readable and
/// lets later versions add fields with serde defaults instead of a migration.
pub const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{file}: database is in use by another process (is the daemon running?)")]
    InUse { file: PathBuf },
    #[error("{file}: cannot open database: {msg}")]
    Open { file: PathBuf, msg: String },
    #[error(
        "{file}: database schema v{found} is newer than this edgeseek understands (v{known}); \
         refusing to touch it (upgrade edgeseek)"
    )]
    TooNew {
        file: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("{file}: migration to schema v{version} ({name}) failed: {msg}")]
    Migration {
        file: PathBuf,
        version: u64,
        name: &'static str,
        msg: String,
    },
    /// The file system is full (ENOSPC / EDQUOT): nothing of the failed write was kept.
    #[error("database: the disk is full ({0}); free space in the state directory")]
    Full(String),
    #[error("database: {0}")]
    Db(String),
}

impl StoreError {
    /// From any redb error: a full disk is its own variant (HTTP 507), the rest is text.
    fn from_redb(e: redb::Error) -> StoreError {
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            IO_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::Full(io.to_string()),
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// Whether an I/O error means "no space left": ENOSPC, or EDQUOT (a quota).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// `From` every redb error type for an error enum that wraps [`StoreError`] in `$variant`
/// (`keys::KeyError::Store`, `kb::KbError::Store`), so `?` works on redb calls there too.
macro_rules! redb_errors_into {
    ($target:ty, $variant:path) => {
        $crate::store::redb_errors_into!(@each $target, $variant;
            redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
    };
    (@each $target:ty, $variant:path; $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $variant($crate::store::StoreError::from(e))
            }
        }
    )*};
}
pub(crate) use redb_errors_into;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from_redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One schema step. `apply` runs inside the write transaction that records `version`.
pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub apply: fn(&WriteTransaction) -> Result<(), StoreError>,
}

impl Migration {
    pub const fn new(
        version: u64,
        name: &'static str,
        apply: fn(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Migration {
        Migration {
            version,
            name,
            apply,
        }
    }
}

/// Schema step 1, the store's own table: API keys. Never edit a released step.
pub const KEYS_V1: Migration = Migration::new(1, "api keys", v1_keys);

fn v1_keys(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(KEYS)?;
    Ok(())
}

/// An open database. Cheap to clone; the file stays open (and locked) while any clone lives.
///
/// After a failed write (a full disk, an I/O error) redb refuses every later transaction
/// ("Previous I/O error occurred") until the file is closed and opened again. The clones share
/// one slot holding the [`Database`], so [`Store::begin_write`] / [`Store::begin_read`] can do
/// that reopen for all of them: the failed handle is taken out of the slot, the file is opened
/// again once the last transaction on it has ended (redb repairs it from its last commit), and
/// every clone continues on the new handle. Nothing committed is lost; the failed transaction
/// is, as it was never acknowledged.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` while a reopen failed (the next transaction tries again).
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// [`IO_ERRORS`] when this store last checked its handle.
    checked_at: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish()
    }
}

/// redb I/O errors seen by this process, in any store. A failed write leaves redb refusing
/// work, but only write transactions say so when they begin (reads fail later, at a table);
/// so a store that sees this count move checks its handle once before the next transaction.
static IO_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How long a reopen waits for the transactions still running on the failed handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl Store {
    /// `<state_dir>/edgeseek.redb`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(DB_FILE)
    }

    /// Open (or create) `<state_dir>/edgeseek.redb` and bring its schema up to `migrations`.
    pub fn open_in(state_dir: &Path, migrations: &[Migration]) -> Result<Store, StoreError> {
        Self::open(&Self::path_in(state_dir), migrations)
    }

    /// Open (or create) the database at `path` and bring its schema up to date with
    /// `migrations`, every schema step in order (the daemon's: [`crate::schema::MIGRATIONS`]).
    pub fn open(path: &Path, migrations: &[Migration]) -> Result<Store, StoreError> {
        let open_err = |msg: String| StoreError::Open {
            file: path.to_path_buf(),
            msg,
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            crate::util::create_private_dir(dir)
                .map_err(|e| open_err(format!("{}: {e}", dir.display())))?;
        }
        let existed = path.exists();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                file: path.to_path_buf(),
            },
            other => open_err(other.to_string()),
        })?;
        if !existed {
            if let Some(dir) = parent {
                adopt_dir_owner(path, dir);
            }
        }
        let store = Store {
            shared: Arc::new(Shared {
                db: RwLock::new(Some(Arc::new(db))),
                path: path.to_path_buf(),
                checked_at: AtomicU64::new(IO_ERRORS.load(Ordering::Relaxed)),
            }),
        };
        store.migrate(migrations)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A write transaction; reopens the file first when the last write failed (see [`Store`]).
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.begin(Database::begin_write)
    }

    /// A read transaction; reopens the file first when the last write failed.
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.begin(|db| db.begin_read())
    }

    fn begin<T>(
        &self,
        start: impl Fn(&Database) -> Result<T, redb::TransactionError>,
    ) -> Result<T, StoreError> {
        let seen = IO_ERRORS.load(Ordering::Relaxed);
        if self.shared.checked_at.swap(seen, Ordering::Relaxed) != seen {
            self.check_handle()?;
        }
        let db = self.handle()?;
        match start(&db) {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                tracing::warn!(file = %self.path().display(), "database refused work after an I/O error: reopening it");
                self.reopen(db)?;
                let db = self.handle()?;
                start(&db).map_err(StoreError::from)
            }
            other => other.map_err(StoreError::from),
        }
    }

    /// Reopen the file if redb refuses work after an I/O error. `try_begin_write` checks that
    /// first and never waits: a busy writer means the handle still works.
    fn check_handle(&self) -> Result<(), StoreError> {
        let db = self.handle()?;
        let refused = matches!(
            db.try_begin_write(),
            Err(redb::TransactionError::Storage(
                redb::StorageError::PreviousIo
            ))
        );
        if refused {
            tracing::warn!(file = %self.path().display(), "database refuses work after an I/O error: reopening it");
            self.reopen(db)?;
        }
        Ok(())
    }

    /// The current handle, opening the file if an earlier reopen failed.
    fn handle(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = read(&self.shared.db).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = write(&self.shared.db);
        if slot.is_none() {
            *slot = Some(Arc::new(self.open_again()?));
        }
        slot.clone()
            .ok_or_else(|| StoreError::Db("database handle missing".into()))
    }

    /// Replace `failed` (if it is still the current handle) by a fresh open of the file.
    fn reopen(&self, failed: Arc<Database>) -> Result<(), StoreError> {
        let mut slot = write(&self.shared.db);
        match slot.as_ref() {
            Some(db) if Arc::ptr_eq(db, &failed) => {}
            Some(_) => return Ok(()), // another clone reopened it already
            None => {}
        }
        // Holding the slot locked, no new reference can be taken; drop ours and wait for the
        // ones other threads still hold (they are about to find the same error). The file
        // itself closes when the last transaction on it ends, which `open_again` waits for.
        *slot = None;
        let gone = Arc::downgrade(&failed);
        drop(failed);
        let deadline = Instant::now() + REOPEN_WAIT;
        while gone.strong_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        *slot = Some(Arc::new(self.open_again()?));
        Ok(())
    }

    /// Open the file again, waiting up to [`REOPEN_WAIT`] for the old handle to close.
    fn open_again(&self) -> Result<Database, StoreError> {
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match Database::create(self.path()) {
                Ok(db) => {
                    tracing::info!(file = %self.path().display(), "database reopened");
                    return Ok(db);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                    if is_disk_full(&e) =>
                {
                    return Err(StoreError::Full(e.to_string()));
                }
                Err(e) => {
                    return Err(StoreError::Open {
                        file: self.path().to_path_buf(),
                        msg: e.to_string(),
                    })
                }
            }
        }
    }

    /// The schema version recorded in the file (0 for an empty database).
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.begin_read()?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(meta
            .get(SCHEMA_VERSION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn migrate(&self, migrations: &[Migration]) -> Result<(), StoreError> {
        let known = migrations.last().map(|m| m.version).unwrap_or(0);
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew {
                file: self.path().to_path_buf(),
                found,
                known,
            });
        }
        if found == known {
            return Ok(());
        }
        // All pending steps and the new version commit together: either the file moves to
        // `known` or it stays exactly as it was.
        let tx = self.begin_write()?;
        for m in migrations.iter().filter(|m| m.version > found) {
            let fail = |msg: String| StoreError::Migration {
                file: self.path().to_path_buf(),
                version: m.version,
                name: m.name,
                msg,
            };
            (m.apply)(&tx).map_err(|e| fail(e.to_string()))?;
            let mut meta = tx.open_table(META).map_err(|e| fail(e.to_string()))?;
            meta.insert(SCHEMA_VERSION_KEY, m.version)
                .map_err(|e| fail(e.to_string()))?;
            tracing::info!(file = %self.path().display(), version = m.version, name = m.name, "schema migrated");
        }
        tx.commit()?;
        Ok(())
    }
}

/// Restrict a new database to owner + group, and when root created it, hand it to the state
/// directory's owner (see `util::adopt_owner`).
fn adopt_dir_owner(file: &Path, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640));
    crate::util::adopt_owner(file, dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::store::MIGRATIONS;
    use redb::ReadableTable;

    const COUNTER: TableDefinition<&str, u64> = TableDefinition::new("test_counter");

    // Each run of a migration bumps a counter, so a second run would be visible.
    fn count_v1(tx: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = tx.open_table(COUNTER)?;
        let n = t.get("v1")?.map(|v| v.value()).unwrap_or(0);
        t.insert("v1", n + 1)?;
        Ok(())
    }
    fn count_v2(tx: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = tx.open_table(COUNTER)?;
        let n = t.get("v2")?.map(|v| v.value()).unwrap_or(0);
        t.insert("v2", n + 1)?;
        Ok(())
    }
    fn failing(_: &WriteTransaction) -> Result<(), StoreError> {
        Err(StoreError::Db("boom".into()))
    }

    fn counts(s: &Store) -> (u64, u64) {
        let tx = s.begin_read().unwrap();
        let t = tx.open_table(COUNTER).unwrap();
        let get = |k| t.get(k).unwrap().map(|v| v.value()).unwrap_or(0);
        (get("v1"), get("v2"))
    }

    #[test]
    fn creates_file_and_runs_builtin_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(&dir.path().join("state"), MIGRATIONS).unwrap();
        assert_eq!(s.path(), dir.path().join("state").join(DB_FILE));
        assert_eq!(
            s.schema_version().unwrap(),
            MIGRATIONS.last().unwrap().version
        );
        let tx = s.begin_read().unwrap();
        tx.open_table(KEYS).unwrap();
    }

    #[test]
    fn migrations_run_once_and_new_ones_run_on_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let v1 = [Migration::new(1, "one", count_v1)];
        let s = Store::open(&path, &v1).unwrap();
        assert_eq!(counts(&s), (1, 0));
        drop(s);
        let s = Store::open(&path, &v1).unwrap();
        assert_eq!(counts(&s), (1, 0), "v1 ran again on reopen");
        drop(s);
        let v2 = [
            Migration::new(1, "one", count_v1),
            Migration::new(2, "two", count_v2),
        ];
        let s = Store::open(&path, &v2).unwrap();
        assert_eq!(counts(&s), (1, 1));
        assert_eq!(s.schema_version().unwrap(), 2);
        drop(s);
        // An older binary refuses a newer file instead of guessing.
        let e = Store::open(&path, &v1).unwrap_err().to_string();
        assert!(e.contains("v2") && e.contains(DB_FILE), "{e}");
    }

    #[test]
    fn failed_migration_leaves_file_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let ok = [Migration::new(1, "one", count_v1)];
        drop(Store::open(&path, &ok).unwrap());
        let bad = [
            Migration::new(1, "one", count_v1),
            Migration::new(2, "two", count_v2),
            Migration::new(3, "broken", failing),
        ];
        let e = Store::open(&path, &bad).unwrap_err().to_string();
        assert!(e.contains("v3") && e.contains("broken"), "{e}");
        let s = Store::open(&path, &ok).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        assert_eq!(counts(&s), (1, 0), "v2 must have been rolled back");
    }

    #[test]
    fn second_open_names_file_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open_in(dir.path(), MIGRATIONS).unwrap();
        let e = Store::open_in(dir.path(), MIGRATIONS).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(DB_FILE));
    }

    #[test]
    fn garbage_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, b"this is not a redb file, not at all, no").unwrap();
        let e = Store::open(&path, MIGRATIONS).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        // Never overwritten.
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is not a redb file, not at all, no"
        );
    }
}
