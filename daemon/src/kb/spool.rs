//! Upload spool: documents on their way into the knowledge base are written to a file under
//! `<state_dir>/spool/` instead of being held in memory, and the parser reads that file. A
//! spool file is removed when its ingest ends, whatever the outcome; files left by a crash
//! are removed when the daemon starts.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next: AtomicU64,
}

impl Spool {
    /// Create `dir` (mode 0700) if needed and remove whatever an earlier run left in it.
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            // Only plain files are ever made here; leave anything else alone.
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty spool file (mode 0600), removed when the returned value is dropped.
    pub fn create(&self) -> std::io::Result<SpoolFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("upload-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(SpoolFile { path, file, len: 0 })
    }
}

/// One spooled document: written in pieces, read back by path, deleted on drop.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Flush what was written (the parser reads the file by path).
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_removed_on_drop_and_leftovers_at_open() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("spool");
        let s = Spool::open(&dir).unwrap();
        let mut f = s.create().unwrap();
        f.write(b"hello ").unwrap();
        f.write(b"world").unwrap();
        f.finish().unwrap();
        assert_eq!(f.len(), 11);
        assert_eq!(std::fs::read(f.path()).unwrap(), b"hello world");
        let p = f.path().to_path_buf();
        let g = s.create().unwrap();
        assert_ne!(g.path(), p);
        drop(f);
        assert!(!p.exists());
        // A file left behind (a crash: no drop) is gone after the next open.
        let left = g.path().to_path_buf();
        std::mem::forget(g);
        assert!(left.exists());
        Spool::open(&dir).unwrap();
        assert!(!left.exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
