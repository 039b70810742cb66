use super::*;

fn cfg() -> AuditConfig {
    AuditConfig::default()
}

fn ev(n: u64) -> Event {
    Event {
        kind: "api".into(),
        request_id: Some(format!("req-{n}")),
        key_id: Some(
            if n.is_multiple_of(2) {
                "k-even"
            } else {
                "k-odd"
            }
            .into(),
        ),
        route: Some("/v1/chat/completions".into()),
        status: Some(200),
        tokens_in: Some(n),
        ..Event::default()
    }
}

fn write(dir: &Path, n: u64) {
    let log = AuditLog::open(dir, cfg()).unwrap();
    for i in 0..n {
        log.append(ev(i)).unwrap();
    }
    log.sync().unwrap();
}

fn segment(dir: &Path) -> PathBuf {
    read::segments(dir).unwrap().last().unwrap().1.clone()
}

fn edit_line(dir: &Path, line: usize, f: impl Fn(&str) -> String) {
    let p = segment(dir);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[line] = f(&lines[line]);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_written_log_verifies_and_reads_back_in_order() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 5);
    let v = verify(d.path()).unwrap();
    assert_eq!((v.records, v.first, v.last), (5, Some(1), Some(5)));
    let all = read(d.path(), &Filter::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[0].prev, GENESIS);
    assert_eq!(all[1].prev, all[0].hash);
    assert_eq!(all[3].event, ev(3));
    let even = Filter {
        key_id: Some("k-even".into()),
        ..Filter::default()
    };
    assert_eq!(read(d.path(), &even).unwrap().len(), 3);
}

#[test]
fn reopening_continues_the_chain() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 3);
    write(d.path(), 2);
    let v = verify(d.path()).unwrap();
    assert_eq!((v.records, v.last), (5, Some(5)));
}

#[test]
fn a_changed_field_is_detected_at_its_record() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 4);
    edit_line(d.path(), 2, |l| {
        l.replace("\"status\":200", "\"status\":403")
    });
    let e = verify(d.path()).unwrap_err();
    assert!(e.contains("record 3") && e.contains("changed"), "{e}");
}

#[test]
fn an_added_field_or_space_is_detected() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 2);
    edit_line(d.path(), 0, |l| l.replacen("{", "{\"note\":1,", 1));
    assert!(verify(d.path()).unwrap_err().contains("record 1"));
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 2);
    edit_line(d.path(), 1, |l| l.replacen(",", ", ", 1));
    assert!(verify(d.path()).unwrap_err().contains("record 2"));
}

#[test]
fn a_removed_record_in_the_middle_is_detected() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 4);
    let p = segment(d.path());
    let text = std::fs::read_to_string(&p).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&p, kept.join("\n") + "\n").unwrap();
    let e = verify(d.path()).unwrap_err();
    assert!(e.contains("record 2") && e.contains("missing"), "{e}");
}

#[test]
fn a_cut_at_the_end_is_detected() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 4);
    let p = segment(d.path());
    let text = std::fs::read_to_string(&p).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&p, kept.join("\n") + "\n").unwrap();
    let e = verify(d.path()).unwrap_err();
    assert!(e.contains("ends at record 2") && e.contains("4"), "{e}");
    // So is replacing the whole file by a fresh chain of the same length.
    let d2 = tempfile::tempdir().unwrap();
    write(d2.path(), 4);
    std::fs::copy(segment(d2.path()), &p).unwrap();
    assert!(verify(d.path()).unwrap_err().contains("head names"));
}

#[test]
fn a_torn_last_line_is_cut_at_open_and_the_chain_goes_on() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), 3);
    let p = segment(d.path());
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"seq\":4,\"time_ms\":1").unwrap();
    drop(f);
    assert!(verify(d.path()).unwrap().torn_tail);
    write(d.path(), 1);
    let v = verify(d.path()).unwrap();
    assert_eq!((v.records, v.torn_tail), (4, false));
}

#[test]
fn retention_by_size_drops_old_segments_and_the_rest_still_verifies() {
    let d = tempfile::tempdir().unwrap();
    let small = AuditConfig {
        max_mb: 8, // segments of 1 MiB
        ..cfg()
    };
    let log = AuditLog::open(d.path(), small).unwrap();
    let big = "x".repeat(4000);
    for i in 0..2600 {
        let mut e = ev(i);
        e.error = Some(big.clone());
        log.append(e).unwrap();
        if i.is_multiple_of(200) {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let total: u64 = read::segments(d.path())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 9 * 1024 * 1024, "{total}");
    let v = verify(d.path()).unwrap();
    assert!(v.thinned);
    assert!(v.first.unwrap() > 1);
    assert_eq!(v.last, Some(2600));
    drop(log);
    // Deleting the oldest kept segment by hand is a cut, not retention.
    let oldest = read::segments(d.path()).unwrap()[0].1.clone();
    std::fs::remove_file(oldest).unwrap();
    assert!(verify(d.path()).unwrap_err().contains("missing"));
}

#[test]
fn a_second_writer_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let _log = AuditLog::open(d.path(), cfg()).unwrap();
    match AuditLog::open(d.path(), cfg()) {
        Err(AuditError::Locked { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second writer opened the log"),
    }
}

#[test]
fn an_empty_log_verifies() {
    let d = tempfile::tempdir().unwrap();
    drop(AuditLog::open(d.path(), cfg()).unwrap());
    assert_eq!(verify(d.path()).unwrap().records, 0);
}

// root running an offline admin command (`edgeseek keys create` before the first start) must
// leave a log the service user can open: every file goes to the state directory's owner.
#[test]
fn root_creates_the_log_for_the_state_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    let state = tempfile::tempdir().unwrap();
    let root = nix::unistd::geteuid().is_root();
    let (uid, gid) = if root {
        std::os::unix::fs::chown(state.path(), Some(4242), Some(4343)).unwrap();
        (4242, 4343)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    let dir = state.path().join("audit");
    write(&dir, 3);
    let mut seen = 0;
    for p in std::iter::once(dir.clone())
        .chain(std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()))
    {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", p.display());
        seen += 1;
    }
    // the directory, its lock, head.json and one segment
    assert!(seen >= 4, "only {seen} paths");
}
