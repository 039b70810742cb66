//! SIGKILL during knowledge-base writes. A child (`edgeseek bench-kb --churn DIR`) ingests,
//! replaces and deletes documents in a loop, printing `begin …` before and `ok …` after each
//! operation; the test kills it at different moments, reopens the database and checks that it
//! opens, that every acknowledged operation is there, and that each document is whole (all
//! its chunks, findable by keyword and by vector). An operation that was in flight may or may
//! not have happened, but never in part.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeseek::kb::{
    HashEmbed, IndexConfig, KnowledgeBase, SearchMode, SearchRequest, SearchTuning,
};
use edgeseek::store::Store;

/// What a churn line says: the operation, its file and its generation.
#[derive(Clone, Debug, PartialEq)]
struct Op {
    delete: bool,
    file: String,
    gen: u64,
}

fn parse(line: &str) -> Option<(bool, Op)> {
    // "begin ingest doc3.txt gen 17" / "ok delete doc0.txt gen 20"
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() != 5 || w[3] != "gen" {
        return None;
    }
    let done = match w[0] {
        "begin" => false,
        "ok" => true,
        _ => return None,
    };
    Some((
        done,
        Op {
            delete: w[1] == "delete",
            file: w[2].to_string(),
            gen: w[4].parse().ok()?,
        },
    ))
}

/// The generation of the document stored for each file (None: no document).
type State = HashMap<String, Option<u64>>;

fn effect(op: &Op) -> Option<u64> {
    (!op.delete).then_some(op.gen)
}

/// Reopen the database and return what is stored, checking every document is whole.
fn inspect(dir: &Path) -> State {
    let store =
        Store::open_in(dir, edgeseek::kb::store::MIGRATIONS).expect("database opens after SIGKILL");
    let kb = KnowledgeBase::open(store, Arc::new(HashEmbed::new(64)), IndexConfig::default())
        .expect("knowledge base loads after SIGKILL");
    let mut state = State::new();
    for d in kb.list_documents("c").unwrap() {
        let first = kb.chunk(&format!("{}_0", d.id)).unwrap();
        let gen: u64 = first
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("gen").and_then(|g| g.parse().ok()))
            .unwrap_or_else(|| panic!("unexpected text {:?}", first.text));
        assert_eq!(u64::from(d.chunks), gen % 7 + 1, "{d:?}");
        for i in 0..d.chunks {
            let c = kb.chunk(&format!("{}_{i}", d.id)).unwrap();
            assert!(c.text.contains(&format!("gen{gen} part {i} ")), "{c:?}");
        }
        for mode in [SearchMode::Bm25, SearchMode::Vector] {
            let hits = kb
                .search_tuned(
                    &SearchRequest {
                        collections: vec!["c".into()],
                        query: format!("gen{gen}"),
                        top_k: 100,
                        mode,
                    },
                    &SearchTuning::default(),
                )
                .unwrap();
            let own = hits.iter().filter(|h| h.document_id == d.id).count();
            // Keyword search finds exactly this document's chunks; dense finds them all
            // among its neighbours.
            assert_eq!(own, d.chunks as usize, "{mode:?} for {d:?}");
        }
        assert!(state.insert(d.doc.filename.clone(), Some(gen)).is_none());
    }
    state
}

#[test]
fn sigkill_during_writes_keeps_every_acknowledged_document_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = State::new();
    let mut total_acks = 0;
    // Kill at different offsets after the child's first acknowledged operation.
    for (round, delay_ms) in [0u64, 37, 150, 290, 410, 530].into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseek"))
            .args(["bench-kb", "--churn"])
            .arg(dir.path())
            .env("EDGESEEK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let started = Instant::now();
        let mut kill_at: Option<Instant> = None;
        loop {
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "round {round}: the churn writer acknowledged nothing"
            );
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(5)) {
                if kill_at.is_none() && l.starts_with("ok ") {
                    kill_at = Some(Instant::now() + Duration::from_millis(delay_ms));
                }
                lines.push(l);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        // Everything the child printed before it died counts.
        lines.extend(rx.try_iter());

        let mut in_flight: Option<Op> = None;
        for l in &lines {
            let (done, op) = parse(l).unwrap_or_else(|| panic!("bad line {l:?}"));
            if done {
                assert_eq!(in_flight.as_ref(), Some(&op));
                acked.insert(op.file.clone(), effect(&op));
                total_acks += 1;
                in_flight = None;
            } else {
                in_flight = Some(op);
            }
        }

        let found = inspect(dir.path());
        let files: std::collections::BTreeSet<&String> = acked.keys().chain(found.keys()).collect();
        for f in files {
            let have = found.get(f).copied().flatten();
            let want = acked.get(f).copied().flatten();
            let maybe = in_flight.as_ref().filter(|op| &op.file == f).map(effect);
            assert!(
                have == want || maybe == Some(have),
                "round {round}: {f} holds gen {have:?}; acknowledged {want:?}, in flight {maybe:?}"
            );
        }
        eprintln!(
            "round {round}: {} lines, in flight {in_flight:?}, last {:?}",
            lines.len(),
            &lines[lines.len().saturating_sub(3)..]
        );
        // Whatever the in-flight operation did is now the truth.
        if let Some(op) = in_flight {
            acked.insert(op.file.clone(), found.get(&op.file).copied().flatten());
        }
    }
    assert!(
        total_acks >= 12,
        "only {total_acks} operations acknowledged"
    );
}
