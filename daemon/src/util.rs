//! Small helpers shared by several modules (kept here so each exists once).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31); proleptic Gregorian
/// (Howard Hinnant's algorithm). Avoids a date-time dependency for a few timestamps.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Create a directory (and parents) readable by its owner only, if it does not exist: state
/// holds key hashes and TLS private keys. An existing directory keeps the mode the
/// administrator gave it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// When root creates a file under the state directory (e.g. `edgeseek keys create` before the
/// first start of a daemon that runs as user `edgeseek`), hand it to the owner of `dir`;
/// otherwise the daemon could not open its own files. Does nothing for other users or when
/// `dir` belongs to root.
pub fn adopt_owner(path: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if meta.uid() == 0 {
        return;
    }
    let owner = Some(nix::unistd::Uid::from_raw(meta.uid()));
    let group = Some(nix::unistd::Gid::from_raw(meta.gid()));
    if let Err(e) = nix::unistd::chown(path, owner, group) {
        tracing::warn!(path = %path.display(), error = %e, "could not hand a new file to the state directory's owner");
    }
}

/// Seconds since 1970-01-01 UTC now (0 for a clock set before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Test helper: `r` failed, with a message that contains each of `needles`. Returns the
/// message for further checks.
#[cfg(test)]
#[track_caller]
pub fn expect_err<T: std::fmt::Debug, E: std::fmt::Display>(
    r: Result<T, E>,
    needles: &[&str],
) -> String {
    let e = match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "`{n}` is not in: {e}");
    }
    e
}

/// Test helper: compiles only when `T` may be shared between threads.
#[cfg(test)]
pub fn assert_send_sync<T: Send + Sync>() {}

/// Lowercase hex of `bytes` (digests, fingerprints, random ids).
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[usize::from(b >> 4)] as char);
        s.push(H[usize::from(b & 15)] as char);
    }
    s
}

/// SHA-256 of a file's contents, lowercase hex, read in pieces (model files are gigabytes).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
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
    Ok(hex(&h.finalize()))
}

// Poison-tolerant locking. A lock is poisoned when a thread panicked while holding it; every
// lock in this crate guards state that each update leaves whole (a single insert, remove or
// replace, with no panicking path halfway through), so the value is still consistent and
// taking it beats turning one panic into a panic in every later caller.

/// `m.lock()`, also after a panic of another holder.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `l.read()`, also after a panic of another holder.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// `l.write()`, also after a panic of another holder.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Stop a worker thread that is fed through a channel: raise `stop`, drop the sender (a
/// worker blocked waiting for work then sees the channel closed), and join the thread. `what`
/// names the thread in the log when it panicked.
pub fn stop_worker<T>(
    stop: &AtomicBool,
    tx: &Mutex<Option<T>>,
    thread: &Mutex<Option<JoinHandle<()>>>,
    what: &str,
) {
    stop.store(true, Ordering::SeqCst);
    drop(lock(tx).take());
    let handle = lock(thread).take();
    if let Some(t) = handle {
        if t.join().is_err() {
            tracing::error!("{what} thread panicked");
        }
    }
}

/// `cv.wait(guard)`, also after a panic of another holder of the mutex.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// A blocking task that did not return a value: it panicked, or the runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailed(String);

impl From<TaskFailed> for String {
    fn from(e: TaskFailed) -> String {
        format!("internal error: {e}")
    }
}

/// Run blocking work (redb transactions, which wait for other writers; embedding) on tokio's
/// blocking pool, off the reactor. A task that fails to return becomes `E` through
/// [`TaskFailed`].
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(TaskFailed(e.to_string())))?
}

/// The common network failures of an outbound connection in plain words ("connection
/// refused"), for one-line causes; `None` for the others.
pub fn plain_io_error(e: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Some("connection refused"),
        ConnectionReset => Some("connection reset"),
        ConnectionAborted => Some("connection aborted"),
        TimedOut => Some("connection timed out"),
        HostUnreachable => Some("host unreachable"),
        NetworkUnreachable => Some("network unreachable"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_file_digest() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("abc");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn locks_survive_a_panicking_holder() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(1));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = l2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 2));
    }

    #[test]
    fn blocking_returns_the_value_and_reports_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ok: Result<u8, String> = rt.block_on(blocking(|| Ok(7)));
        assert_eq!(ok, Ok(7));
        let failed: Result<u8, String> = rt.block_on(blocking(|| panic!("boom")));
        let e = failed.unwrap_err();
        assert!(
            e.starts_with("internal error: ") && e.contains("panicked"),
            "{e}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
