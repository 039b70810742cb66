//! A record that does not fit (the disk is full) is an error for that record only: the file is
//! cut back to the last whole record, so the chain stays verifiable and the next record,
//! once there is room, follows it. The full disk is RLIMIT_FSIZE here (writes past it fail
//! with EFBIG after a short write, as ENOSPC does), set process-wide, so this test is its own
//! binary.

use edgeseek::audit::{verify, AuditConfig, AuditLog, Event};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{signal, SigHandler, Signal};

fn event(error: &str) -> Event {
    Event {
        kind: "api".into(),
        status: Some(200),
        error: Some(error.into()),
        ..Event::default()
    }
}

#[test]
fn a_record_that_does_not_fit_leaves_no_half_record() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), AuditConfig::default()).unwrap();
    log.append(event("first")).unwrap();
    log.sync().unwrap();
    let segment = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let before = std::fs::metadata(&segment).unwrap().len();
    // SAFETY: ignoring SIGXFSZ (so an oversized write fails instead of killing the process)
    // installs no handler code.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, before + 100, hard).unwrap();
    let e = log.append(event(&"x".repeat(4000)));
    setrlimit(Resource::RLIMIT_FSIZE, soft, hard).unwrap();
    assert!(e.is_err(), "a record past the limit was written");
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), before);
    log.append(event("after")).unwrap();
    log.sync().unwrap();
    let v = verify(d.path()).unwrap();
    assert_eq!(v.records, 2);
}
