//! Reading the audit log: the export (`edgeseek audit`, `GET /v1/admin/audit`) and the chain
//! check (`edgeseek audit verify`). Neither takes the writer's lock: both stop at the last
//! complete line, so they run beside the daemon.

use std::path::{Path, PathBuf};

use super::{chain_hash, io, AuditError, Mark, Record, GENESIS, HASH_MEMBER};

/// Segment files in order of their first sequence number.
pub(super) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_mark(path: &Path) -> Result<Option<Mark>, AuditError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AuditError::Io {
                path: path.to_path_buf(),
                why: format!("not a valid mark: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// The last record retention dropped, when it dropped any.
pub(super) fn anchor(dir: &Path) -> Result<Option<Mark>, AuditError> {
    read_mark(&dir.join("anchor.json"))
}

/// The complete lines of a segment (a torn last line left out).
fn lines(path: &Path) -> Result<(Vec<String>, bool), AuditError> {
    let data = std::fs::read(path).map_err(io(path))?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&data[..complete]);
    Ok((
        text.lines().map(str::to_string).collect(),
        complete < data.len(),
    ))
}

/// The sequence number and hash of a segment's last complete record.
pub(super) fn last_mark(path: &Path) -> Result<Option<Mark>, AuditError> {
    let (lines, _) = lines(path)?;
    let Some(last) = lines.last() else {
        return Ok(None);
    };
    let r: Record = serde_json::from_str(last).map_err(|e| AuditError::Io {
        path: path.to_path_buf(),
        why: format!("last record is not valid: {e}"),
    })?;
    Ok(Some(Mark {
        seq: r.seq,
        hash: r.hash,
    }))
}

/// Which records an export shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (milliseconds since 1970).
    pub since_ms: Option<u64>,
    pub key_id: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    /// At most this many, the newest.
    pub limit: Option<usize>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self
                .key_id
                .as_ref()
                .is_none_or(|k| r.event.key_id.as_ref() == Some(k))
            && self
                .group
                .as_ref()
                .is_none_or(|g| r.event.group.as_ref() == Some(g))
            && self.kind.as_ref().is_none_or(|k| &r.event.kind == k)
    }
}

/// The records `filter` keeps, oldest first. A line that is not a record is skipped here
/// (verify reports it).
pub fn read(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut out = Vec::new();
    for (_, path) in segments(dir)? {
        for line in lines(&path)?.0 {
            if let Ok(r) = serde_json::from_str::<Record>(&line) {
                if filter.keeps(&r) {
                    out.push(r);
                }
            }
        }
    }
    if let Some(n) = filter.limit {
        let cut = out.len().saturating_sub(n);
        out.drain(..cut);
    }
    Ok(out)
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub records: u64,
    /// The first retained record (after what retention dropped).
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Records before `first` were dropped by retention (the anchor says where).
    pub thinned: bool,
    /// The newest segment ends in an incomplete line (being written, or torn by a crash).
    pub torn_tail: bool,
}

/// Check the whole chain: every record's hash over its bytes and its predecessor's hash,
/// sequence numbers without gaps, the start against the anchor and the end against the
/// head. The error names the first break.
pub fn verify(dir: &Path) -> Result<Verified, String> {
    let e = |e: AuditError| e.to_string();
    let anchor = anchor(dir).map_err(e)?;
    let head = read_mark(&dir.join("head.json")).map_err(e)?;
    let segs = segments(dir).map_err(e)?;
    let (mut seq, mut prev) = match &anchor {
        Some(a) => (a.seq + 1, a.hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let mut v = Verified {
        records: 0,
        first: None,
        last: None,
        thinned: anchor.is_some(),
        torn_tail: false,
    };
    let n_segs = segs.len();
    for (i, (first, path)) in segs.iter().enumerate() {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let (lines, torn) = lines(path).map_err(e)?;
        if torn {
            if i + 1 < n_segs {
                return Err(format!(
                    "{name}: ends in an incomplete record, and newer segments follow"
                ));
            }
            v.torn_tail = true;
        }
        if !lines.is_empty() && *first != seq {
            return Err(format!(
                "{name}: starts at record {first}, but record {seq} comes next (records are missing)"
            ));
        }
        for (n, line) in lines.iter().enumerate() {
            let at = format!("record {seq} ({name} line {})", n + 1);
            let cut = line.len().checked_sub(HASH_MEMBER.len() + 64 + 2);
            let Some(cut) =
                cut.filter(|&c| line[c..].starts_with(HASH_MEMBER) && line.ends_with("\"}"))
            else {
                return Err(format!(
                    "{at}: not a record line (its hash member is missing or moved)"
                ));
            };
            let body = &line[..cut];
            let hash = &line[cut + HASH_MEMBER.len()..line.len() - 2];
            let r: Record = serde_json::from_str(line)
                .map_err(|err| format!("{at}: not a valid record: {err}"))?;
            if r.seq != seq {
                return Err(format!("{at}: has sequence number {}, expected {seq} (records are missing or reordered)", r.seq));
            }
            if r.prev != prev {
                return Err(format!(
                    "{at}: does not follow the record before it (chain broken)"
                ));
            }
            if chain_hash(&prev, body) != hash {
                return Err(format!(
                    "{at}: its content does not match its hash (the record was changed)"
                ));
            }
            if head
                .as_ref()
                .is_some_and(|h| h.seq == seq && h.hash != hash)
            {
                return Err(format!(
                    "{at}: is not the record the head names (records were replaced)"
                ));
            }
            v.first.get_or_insert(seq);
            v.last = Some(seq);
            v.records += 1;
            prev = hash.to_string();
            seq += 1;
        }
    }
    match &head {
        None if v.records > 0 => {
            return Err("head.json is missing: the end of the log cannot be checked".into())
        }
        None => {}
        Some(h) => {
            let last = v.last.unwrap_or(seq - 1);
            if last < h.seq {
                return Err(format!(
                    "the log ends at record {last}, but record {} was written (records were cut off the end)",
                    h.seq
                ));
            }
        }
    }
    Ok(v)
}
