use std::path::Path;

use super::*;
use crate::kb::hnsw::Hnsw;
use crate::kb::store::{CHUNKS, DOCUMENTS, DOC_NAMES, KB_META, TERMS, VECTORS};
use crate::kb::text::ANALYZER_VERSION;
use crate::kb::{Chunk, DocKind, HashEmbed, Script};
use redb::ReadableTableMetadata;

/// HashEmbed that refuses any batch containing "FAIL" (a model error mid-ingest).
struct FailOn(HashEmbed);

impl Embed for FailOn {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if texts.iter().any(|t| t.contains("FAIL")) {
            return Err("model exploded".into());
        }
        self.0.embed(texts)
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }
    fn max_tokens(&self) -> usize {
        self.0.max_tokens()
    }
    fn covers(&self, script: Script) -> bool {
        self.0.covers(script)
    }
    fn model_id(&self) -> String {
        self.0.model_id()
    }
}

fn open_with(dir: &Path, embed: Arc<dyn Embed>, cfg: IndexConfig) -> KnowledgeBase {
    let store = Store::open_in(dir, kbstore::MIGRATIONS).unwrap();
    KnowledgeBase::open(store, embed, cfg).unwrap()
}

fn open(dir: &Path) -> KnowledgeBase {
    open_with(
        dir,
        Arc::new(FailOn(HashEmbed::new(64))),
        IndexConfig::default(),
    )
}

/// A knowledge base in `dir` with the collection `hr` holding `a.txt`, one chunk of `text`.
fn open_with_one_doc(dir: &Path, text: &str) -> KnowledgeBase {
    open_with_docs(dir, &[("hr", "a.txt", &[text])])
}

/// A knowledge base in `dir` holding each `(collection, filename, chunk texts)` document,
/// its collection created on first mention.
fn open_with_docs(dir: &Path, docs: &[(&str, &str, &[&str])]) -> KnowledgeBase {
    let kb = open(dir);
    let mut created: Vec<&str> = Vec::new();
    for &(collection, filename, texts) in docs {
        if !created.contains(&collection) {
            kb.create_collection(collection).unwrap();
            created.push(collection);
        }
        kb.ingest_chunks(collection, doc(filename), chunks(texts))
            .unwrap();
    }
    kb
}

fn doc(filename: &str) -> NewDocument {
    NewDocument {
        filename: filename.into(),
        kind: DocKind::Text,
        title: Some(filename.to_uppercase()),
        sha256: "ab".repeat(32),
        size_bytes: 1234,
        pages: None,
    }
}

fn chunks(texts: &[&str]) -> Vec<Chunk> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Chunk {
            ordinal: i as u32,
            text: t.to_string(),
            page: Some(i as u32 + 1),
            heading: vec!["Policy".into(), format!("Part {i}")],
        })
        .collect()
}

fn req(colls: &[&str], q: &str, mode: SearchMode) -> SearchRequest {
    SearchRequest {
        collections: colls.iter().map(|c| c.to_string()).collect(),
        query: q.into(),
        top_k: 10,
        mode,
    }
}

fn files(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.filename.clone()).collect()
}

/// Every stored row of the collection, as (table, key) pairs: the ground truth for what an
/// operation left behind.
fn row_counts(kb: &KnowledgeBase) -> [usize; 5] {
    let tx = kb.inner.store.begin_read().unwrap();
    [
        tx.open_table(DOCUMENTS).unwrap().len().unwrap() as usize,
        tx.open_table(DOC_NAMES).unwrap().len().unwrap() as usize,
        tx.open_table(CHUNKS).unwrap().len().unwrap() as usize,
        tx.open_table(VECTORS).unwrap().len().unwrap() as usize,
        tx.open_table(TERMS).unwrap().len().unwrap() as usize,
    ]
}

#[test]
fn ingest_then_search_list_and_cite() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open(dir.path());
    let c = kb.create_collection("hr").unwrap();
    assert_eq!((c.documents, c.chunks), (0, 0));
    let d = kb
        .ingest_chunks(
            "hr",
            doc("leave.md"),
            chunks(&[
                "Employees receive 25 days of annual leave per year.",
                "Sick leave requires a doctor's note after three days.",
            ]),
        )
        .unwrap();
    assert!(valid_doc_id_shape(&d.id), "{}", d.id);
    assert_eq!((d.chunks, d.collection.as_str()), (2, "hr"));
    kb.ingest_chunks(
        "hr",
        doc("travel.md"),
        chunks(&["Travel expenses are reimbursed within 30 days."]),
    )
    .unwrap();

    let hits = kb
        .search(&req(&["hr"], "annual leave days", SearchMode::Hybrid))
        .unwrap();
    assert_eq!(hits[0].filename, "leave.md");
    assert_eq!(hits[0].ordinal, 0);
    assert_eq!(hits[0].page, Some(1));
    assert_eq!(hits[0].heading.as_deref(), Some("Policy > Part 0"));
    assert!(hits[0].bm25_rank.is_some() && hits[0].dense_rank.is_some());

    let cited = kb.chunk(&hits[0].chunk_id).unwrap();
    assert_eq!(cited.text, hits[0].text);
    assert_eq!(
        (cited.document_id.as_str(), cited.collection.as_str()),
        (d.id.as_str(), "hr")
    );

    let listed = kb.list_documents("hr").unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|d| d.doc.filename.as_str())
            .collect::<Vec<_>>(),
        ["leave.md", "travel.md"]
    );
    assert_eq!(kb.document("hr", &d.id).unwrap(), d);
    let info = kb.list_collections();
    assert_eq!((info[0].documents, info[0].chunks), (2, 3));
}

fn valid_doc_id_shape(id: &str) -> bool {
    kbstore::valid_doc_id(id)
}

#[test]
fn replace_keeps_exactly_the_new_version_and_failed_embed_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open(dir.path());
    kb.create_collection("hr").unwrap();
    let v1 = kb
        .ingest_chunks(
            "hr",
            doc("policy.txt"),
            chunks(&["old wording alpha", "old wording beta", "old wording gamma"]),
        )
        .unwrap();
    let before = row_counts(&kb);
    assert_eq!(before, [1, 1, 3, 3, 3]);

    // A model failure on the new version: the old one stays, whole, and nothing is added.
    let e = kb
        .ingest_chunks("hr", doc("policy.txt"), chunks(&["new text", "FAIL here"]))
        .unwrap_err();
    assert!(matches!(e, KbError::Embed(_)), "{e}");
    assert_eq!(row_counts(&kb), before);
    assert_eq!(kb.list_documents("hr").unwrap()[0].id, v1.id);

    let v2 = kb
        .ingest_chunks(
            "hr",
            doc("policy.txt"),
            chunks(&["new wording delta", "new wording epsilon"]),
        )
        .unwrap();
    assert_ne!(v1.id, v2.id);
    assert_eq!(row_counts(&kb), [1, 1, 2, 2, 2]);
    let hits = kb
        .search(&req(&["hr"], "wording", SearchMode::Bm25))
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.document_id == v2.id));
    // The old citations no longer resolve (to anything).
    assert!(matches!(
        kb.chunk(&format!("{}_0", v1.id)),
        Err(KbError::NotFound { .. })
    ));
    assert!(matches!(
        kb.document("hr", &v1.id),
        Err(KbError::NotFound { .. })
    ));

    kb.delete_document("hr", &v2.id).unwrap();
    assert_eq!(row_counts(&kb), [0, 0, 0, 0, 0]);
    assert!(kb
        .search(&req(&["hr"], "wording", SearchMode::Hybrid))
        .unwrap()
        .is_empty());
    assert!(matches!(
        kb.delete_document("hr", &v2.id),
        Err(KbError::NotFound { .. })
    ));
    let c = kb.collection("hr").unwrap();
    assert_eq!((c.documents, c.chunks), (0, 0));
}

#[test]
fn searches_see_the_old_or_the_new_version_never_neither_or_both() {
    let dir = tempfile::tempdir().unwrap();
    let kb = Arc::new(open(dir.path()));
    kb.create_collection("hr").unwrap();
    let v_old = ["marker old one", "marker old two", "marker old three"];
    let v_new = [
        "marker new one",
        "marker new two",
        "marker new three",
        "marker new four",
        "marker new five",
    ];
    kb.ingest_chunks("hr", doc("x.txt"), chunks(&v_old))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kb, stop) = (Arc::clone(&kb), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let v: &[&str] = if n % 2 == 0 { &v_new } else { &v_old };
                kb.ingest_chunks("hr", doc("x.txt"), chunks(v)).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut seen = [0usize; 2];
    for _ in 0..300 {
        for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
            let hits = kb.search(&req(&["hr"], "marker", mode)).unwrap();
            let ids: std::collections::HashSet<_> =
                hits.iter().map(|h| h.document_id.clone()).collect();
            assert_eq!(ids.len(), 1, "mixed or no versions: {hits:?}");
            match hits.len() {
                3 => seen[0] += 1,
                5 => seen[1] += 1,
                n => panic!("{n} chunks: a partial version"),
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = writer.join().unwrap();
    assert!(swaps > 0 && seen.iter().sum::<usize>() == 900);
}

#[test]
fn collections_are_filtered_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open_with_docs(
        dir.path(),
        &[
            (
                "finance",
                "budget.txt",
                &["The salary budget for 2025 grows by four percent."],
            ),
            ("hr", "pay.txt", &["Salary reviews happen every April."]),
        ],
    );
    for mode in [SearchMode::Hybrid, SearchMode::Bm25, SearchMode::Vector] {
        let hits = kb
            .search(&req(&["hr"], "salary budget 2025", mode))
            .unwrap();
        assert!(!hits.is_empty());
        assert!(
            hits.iter().all(|h| h.collection == "hr"),
            "{mode:?}: {hits:?}"
        );
        let both = kb
            .search(&req(&["hr", "finance"], "salary budget 2025", mode))
            .unwrap();
        assert_eq!(both.len(), 2, "{mode:?}");
        assert_eq!(both[0].collection, "finance", "{mode:?}");
    }
    let e = kb
        .search(&req(&["hr", "legal"], "salary", SearchMode::Hybrid))
        .unwrap_err();
    assert!(matches!(e, KbError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("legal"));

    kb.delete_collection("finance").unwrap();
    assert!(matches!(
        kb.search(&req(&["finance"], "salary", SearchMode::Hybrid)),
        Err(KbError::NotFound { .. })
    ));
    assert_eq!(row_counts(&kb), [1, 1, 1, 1, 1]);
    assert_eq!(
        kb.list_collections()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["hr"]
    );
}

#[test]
fn bad_requests_are_invalid_conflict_or_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open(dir.path());
    assert!(matches!(
        kb.create_collection("no spaces"),
        Err(KbError::Invalid(_))
    ));
    kb.create_collection("hr").unwrap();
    assert!(matches!(
        kb.create_collection("hr"),
        Err(KbError::Conflict(_))
    ));
    assert!(matches!(
        kb.ingest_chunks("nope", doc("a.txt"), chunks(&["x"])),
        Err(KbError::NotFound { .. })
    ));
    let mut skipped = chunks(&["a", "b"]);
    skipped[1].ordinal = 5;
    for (d, c) in [
        (doc("a.txt"), skipped),
        (doc("a.txt"), Vec::new()),
        (doc("a.txt"), chunks(&["  "])),
        (doc(""), chunks(&["x"])),
        (
            NewDocument {
                sha256: "xyz".into(),
                ..doc("a.txt")
            },
            chunks(&["x"]),
        ),
    ] {
        assert!(
            matches!(kb.ingest_chunks("hr", d, c), Err(KbError::Invalid(_))),
            "accepted"
        );
    }
    for r in [
        req(&["hr"], "   ", SearchMode::Hybrid),
        req(&[], "x", SearchMode::Hybrid),
        SearchRequest {
            top_k: 0,
            ..req(&["hr"], "x", SearchMode::Hybrid)
        },
        SearchRequest {
            top_k: 101,
            ..req(&["hr"], "x", SearchMode::Hybrid)
        },
        req(&["../hr"], "x", SearchMode::Hybrid),
    ] {
        assert!(matches!(kb.search(&r), Err(KbError::Invalid(_))), "{r:?}");
    }
    for bad in ["", "nonsense", "d_0000000000000000_0", "d_0000000000000000"] {
        assert!(
            matches!(kb.chunk(bad), Err(KbError::NotFound { .. })),
            "{bad}"
        );
    }
    assert!(row_counts(&kb).iter().all(|&n| n == 0));
}

#[test]
fn reopening_gives_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let queries = [
        ("annual leave", SearchMode::Hybrid),
        ("vpn password reset", SearchMode::Bm25),
        ("expenses travel", SearchMode::Vector),
        ("年假", SearchMode::Hybrid),
    ];
    let before: Vec<Vec<Hit>> = {
        let kb = open_with_docs(
            dir.path(),
            &[
                (
                    "hr",
                    "leave.txt",
                    &[
                        "Annual leave is 25 days.",
                        "员工每年享有十五天年假。",
                        "Travel expenses are reimbursed.",
                    ],
                ),
                (
                    "it",
                    "vpn.txt",
                    &[
                        "Reset your VPN password every 90 days.",
                        "The VPN uses WireGuard.",
                    ],
                ),
            ],
        );
        // Replace and delete, so the reopened index must also skip dead rows.
        kb.ingest_chunks(
            "it",
            doc("vpn.txt"),
            chunks(&[
                "VPN passwords are reset by the helpdesk.",
                "The VPN uses WireGuard.",
            ]),
        )
        .unwrap();
        let gone = kb
            .ingest_chunks("hr", doc("gone.txt"), chunks(&["annual leave rumours"]))
            .unwrap();
        kb.delete_document("hr", &gone.id).unwrap();
        queries
            .iter()
            .map(|(q, m)| kb.search(&req(&["hr", "it"], q, *m)).unwrap())
            .collect()
    };
    let kb = open(dir.path());
    let after: Vec<Vec<Hit>> = queries
        .iter()
        .map(|(q, m)| kb.search(&req(&["hr", "it"], q, *m)).unwrap())
        .collect();
    assert!(before.iter().all(|h| !h.is_empty()));
    assert_eq!(before, after);
    assert!(!files(&after[0]).contains(&"gone.txt".to_string()));
}

#[test]
fn chinese_query_trusts_bm25_english_paraphrase_falls_to_dense() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open(dir.path());
    kb.create_collection("hr").unwrap();
    kb.ingest_chunks(
        "hr",
        doc("zh.txt"),
        chunks(&[
            "员工每年享有十五天带薪年假，年假需提前两周申请。",
            "报销差旅费用需要提交发票和审批单。",
            "公司的VPN密码每九十天必须重置一次。",
        ]),
    )
    .unwrap();
    kb.ingest_chunks(
        "hr",
        doc("en.txt"),
        chunks(&[
            "Reimbursement policy: submit receipts within thirty days.",
            "Parking permits are issued by facilities.",
        ]),
    )
    .unwrap();
    // Chinese: the BM25 winner stays first; the blind dense ranker only fills in after.
    let bm25 = kb
        .search(&req(&["hr"], "怎么重置VPN密码", SearchMode::Bm25))
        .unwrap();
    let hybrid = kb
        .search(&req(&["hr"], "怎么重置VPN密码", SearchMode::Hybrid))
        .unwrap();
    assert!(bm25[0].text.contains("VPN密码"));
    let n = bm25.len();
    assert_eq!(
        hybrid[..n].iter().map(|h| &h.chunk_id).collect::<Vec<_>>(),
        bm25.iter().map(|h| &h.chunk_id).collect::<Vec<_>>()
    );
    assert!(hybrid[n..].iter().all(|h| h.bm25_rank.is_none()));

    // English with typos: no keyword in common, but the (trigram) embedder still sees it.
    let q = "reimbersement polcy reciepts";
    assert!(kb
        .search(&req(&["hr"], q, SearchMode::Bm25))
        .unwrap()
        .is_empty());
    let hybrid = kb.search(&req(&["hr"], q, SearchMode::Hybrid)).unwrap();
    assert!(
        hybrid[0].text.starts_with("Reimbursement policy"),
        "{hybrid:?}"
    );
    assert_eq!(hybrid[0].dense_rank, Some(1));
}

#[test]
fn ann_takes_over_past_the_threshold_and_compaction_drops_deleted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IndexConfig {
        ann_threshold: 150,
        ann_step: 64,
        compact_min_dead: 50,
        compact_dead_fraction: 0.25,
        ..IndexConfig::default()
    };
    let kb = open_with(dir.path(), Arc::new(HashEmbed::new(64)), cfg.clone());
    kb.create_collection("big").unwrap();
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut ids = Vec::new();
    for d in 0..20 {
        let texts: Vec<String> = (0..15)
            .map(|i| {
                let k = d * 15 + i;
                format!(
                    "{} {} {} item{k}",
                    words[k % 16],
                    words[(k / 16) % 16],
                    words[(k * 7) % 16]
                )
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        ids.push(
            kb.ingest_chunks("big", doc(&format!("d{d}.txt")), chunks(&refs))
                .unwrap()
                .id,
        );
    }
    kb.wait_idle();
    assert_eq!(kb.collection("big").unwrap().ann_rows, 300);
    let exact = SearchTuning {
        exact: true,
        ..SearchTuning::default()
    };
    let ann = SearchTuning::default();
    let agree = |kb: &KnowledgeBase| {
        let mut same = 0;
        for q in [
            "alpha bravo",
            "kilo lima mike",
            "oscar papa golf",
            "item17 echo",
        ] {
            let r = req(&["big"], q, SearchMode::Vector);
            let a = kb.search_tuned(&r, &ann).unwrap();
            let e = kb.search_tuned(&r, &exact).unwrap();
            same += a
                .iter()
                .filter(|h| e.iter().any(|x| x.chunk_id == h.chunk_id))
                .count();
        }
        same
    };
    assert!(agree(&kb) >= 38, "ANN recall too low: {}/40", agree(&kb));

    // Delete a third: the dead rows exceed both thresholds, the worker rebuilds.
    for id in &ids[..7] {
        kb.delete_document("big", id).unwrap();
    }
    kb.wait_idle();
    let c = kb.collection("big").unwrap();
    assert_eq!((c.documents, c.chunks), (13, 195));
    {
        let coll = kb.coll("big").unwrap();
        let idx = read(&coll.idx);
        // Compacted once the dead passed the thresholds (the last deletes may come after).
        assert!(idx.alive.len() < 300, "not compacted");
        assert_eq!(idx.alive.len() - idx.dead_slots, 195);
        assert!(idx.dead_slots < 75);
        assert_eq!(idx.ann.as_ref().map(Hnsw::len), Some(idx.alive.len()));
    }
    let dead: Vec<&String> = ids[..7].iter().collect();
    for mode in [SearchMode::Vector, SearchMode::Hybrid, SearchMode::Bm25] {
        let hits = kb
            .search(&req(&["big"], "alpha bravo item3", mode))
            .unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| !dead.contains(&&h.document_id)));
    }
    assert!(agree(&kb) >= 38);
}

#[test]
fn another_embedding_model_is_detected_and_reembed_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    // Made with the default model (64 dimensions), closed, then opened with another.
    drop(open_with_one_doc(dir.path(), "annual leave policy"));
    let kb = open_with(
        dir.path(),
        Arc::new(HashEmbed::new(32)),
        IndexConfig::default(),
    );
    let c = kb.collection("hr").unwrap();
    assert!(!c.vectors_current);
    assert_eq!(c.model_id, "hash-bow-64");
    let e = kb
        .ingest_chunks("hr", doc("b.txt"), chunks(&["more"]))
        .unwrap_err();
    assert!(matches!(e, KbError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("hash-bow-64") && e.to_string().contains("hash-bow-32"));
    // Keyword search still answers; dense alone cannot.
    let hits = kb
        .search(&req(&["hr"], "annual leave", SearchMode::Hybrid))
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].dense_rank.is_none());
    assert!(matches!(
        kb.search(&req(&["hr"], "annual leave", SearchMode::Vector)),
        Err(KbError::Conflict(_))
    ));

    assert_eq!(kb.reembed("hr").unwrap(), 1);
    let c = kb.collection("hr").unwrap();
    assert!(c.vectors_current && c.model_id == "hash-bow-32");
    let hits = kb
        .search(&req(&["hr"], "annual leave", SearchMode::Vector))
        .unwrap();
    assert_eq!(hits.len(), 1);
    kb.ingest_chunks("hr", doc("b.txt"), chunks(&["more"]))
        .unwrap();
    drop(kb);
    // And it stays fixed after a restart.
    let kb = open_with(
        dir.path(),
        Arc::new(HashEmbed::new(32)),
        IndexConfig::default(),
    );
    assert!(kb.collection("hr").unwrap().vectors_current);
}

#[test]
fn stale_analyzer_terms_are_rederived_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kb = open_with_one_doc(dir.path(), "Annual leave policy");
        // Pretend the terms were made by an older analyzer that produced garbage.
        let tx = kb.inner.store.begin_write().unwrap();
        {
            let mut t = tx.open_table(TERMS).unwrap();
            let keys: Vec<String> = t
                .iter()
                .unwrap()
                .map(|r| r.unwrap().0.value().to_string())
                .collect();
            for k in keys {
                t.insert(
                    k.as_str(),
                    kbstore::encode_terms(&[("zzz".into(), 1)]).as_slice(),
                )
                .unwrap();
            }
            tx.open_table(KB_META)
                .unwrap()
                .insert(kbstore::META_ANALYZER, "0")
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let kb = open(dir.path());
    let hits = kb.search(&req(&["hr"], "leave", SearchMode::Bm25)).unwrap();
    assert_eq!(hits.len(), 1);
    assert!(kb
        .search(&req(&["hr"], "zzz", SearchMode::Bm25))
        .unwrap()
        .is_empty());
}

#[test]
fn migrates_a_v1_database_with_keys_to_the_kb_schema() {
    use crate::store::{KEYS, KEYS_V1};
    let dir = tempfile::tempdir().unwrap();
    let path = Store::path_in(dir.path());
    {
        let s = Store::open(&path, &[KEYS_V1]).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        let tx = s.begin_write().unwrap();
        tx.open_table(KEYS)
            .unwrap()
            .insert("k_1", b"{\"kept\":true}".as_slice())
            .unwrap();
        tx.commit().unwrap();
        // The v1 file has no knowledge-base tables.
        let r = s.begin_read().unwrap();
        assert!(r.open_table(COLLECTIONS).is_err());
    }
    let s = Store::open(&path, kbstore::MIGRATIONS).unwrap();
    assert_eq!(s.schema_version().unwrap(), 2);
    {
        let r = s.begin_read().unwrap();
        assert_eq!(
            r.open_table(KEYS)
                .unwrap()
                .get("k_1")
                .unwrap()
                .unwrap()
                .value(),
            b"{\"kept\":true}"
        );
        for t in [COLLECTIONS, DOCUMENTS, CHUNKS, VECTORS, TERMS] {
            assert_eq!(r.open_table(t).unwrap().len().unwrap(), 0);
        }
        assert_eq!(
            r.open_table(KB_META)
                .unwrap()
                .get(kbstore::META_ANALYZER)
                .unwrap()
                .unwrap()
                .value(),
            ANALYZER_VERSION
        );
    }
    let kb = KnowledgeBase::open(s, Arc::new(HashEmbed::new(16)), IndexConfig::default()).unwrap();
    kb.create_collection("docs").unwrap();
    kb.ingest_chunks("docs", doc("a.txt"), chunks(&["hello world"]))
        .unwrap();
}

#[test]
fn knowledge_base_is_send_and_sync() {
    crate::util::assert_send_sync::<KnowledgeBase>();
}

#[test]
fn a_deleted_and_recreated_collection_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open(dir.path());
    kb.create_collection("x").unwrap();
    let old = kb.coll("x").unwrap();
    kb.ingest_chunks("x", doc("a.txt"), chunks(&["first life"]))
        .unwrap();
    kb.delete_collection("x").unwrap();
    kb.create_collection("x").unwrap();
    // A writer still holding the old handle is refused rather than writing into the new one.
    assert!(matches!(kb.gate(&old), Err(KbError::NotFound { .. })));
    kb.ingest_chunks("x", doc("b.txt"), chunks(&["second life"]))
        .unwrap();
    let hits = kb.search(&req(&["x"], "life", SearchMode::Hybrid)).unwrap();
    assert_eq!(files(&hits), ["b.txt"]);
    assert_eq!(row_counts(&kb), [1, 1, 1, 1, 1]);
}

#[test]
fn a_knowledge_base_dropped_right_after_opening_stops_its_worker() {
    // Dropping races the worker's first check of the shutdown flag; a wake-up lost there
    // left the worker asleep and the drop joining it forever. Many rounds make the race
    // likely; the watchdog turns a hang into a failure.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..300 {
            drop(open(&path));
        }
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(300))
            .is_ok(),
        "dropping a knowledge base hung"
    );
}
