//! `edgeseek bench-kb` (hidden): search latency and ANN recall through [`KnowledgeBase`] on a
//! synthetic corpus, and `--churn DIR`, a writer that the crash test kills with SIGKILL.
//!
//! The corpus is synthetic but shaped like the real thing:
//! - text: pseudo-words drawn from a Zipf(1.07) vocabulary of 30k words, a few topic words
//!   per cluster, identifiers (`libfoo2`, `v1.4.2`), and ~15 % Chinese chunks built from
//!   common Chinese words (segmented by jieba like real text);
//! - vectors: 384 dims, clustered on the unit sphere. Each cluster is a centre plus a few
//!   principal directions of decreasing spread plus a little isotropic noise: real sentence
//!   embeddings have a low intrinsic dimension, and an isotropic cloud in 384 dims (where every
//!   point is about equally far from every other) would measure something no real corpus has.
//!
//! The embedder is a lookup table filled by the generator (the text → vector map), so the
//! figures are the index's alone; the real model's cost per query is measured by the
//! embedding stage (see `STAGES` in `scripts/bench-kb`).

mod corpus;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use corpus::{clustered_vectors, Clusters, Corpus, GenChunk, LookupEmbed};

use super::base::{
    IndexConfig, KbError, KnowledgeBase, NewDocument, SearchMode, SearchRequest, SearchTuning,
};
use super::{Chunk, DocKind, HashEmbed};
use crate::store::Store;

/// A standard normal sample (Box–Muller).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchKbArgs {
    /// Collection sizes to measure, in chunks (the collection grows from one to the next)
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub chunks: Vec<usize>,
    /// Queries per measurement
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// Vector width
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Clusters in the vector space
    #[arg(long, default_value_t = 200)]
    pub clusters: usize,
    /// Results per query
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Chunks from which a collection gets an ANN graph
    #[arg(long, default_value_t = 5000)]
    pub ann_threshold: usize,
    /// ANN candidates per search
    #[arg(long)]
    pub ef_search: Option<usize>,
    /// Generator seed
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Work directory (default: a fresh one under the system temp dir, removed afterwards)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Instead of benchmarking: ingest, replace and delete documents in DIR forever, printing
    /// `begin …` / `ok …` around each operation (used by the crash test)
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    pub churn: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Latency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
    }
}

#[derive(Debug, Serialize)]
pub struct StrictRecall {
    pub ef: usize,
    pub recall_at_10: f64,
    pub p50_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct SizeReport {
    pub chunks: usize,
    pub ingest_chunks_per_s: f64,
    /// Time after the last ingest until the ANN graph covered every chunk.
    pub ann_catch_up_s: f64,
    pub ann_rows: usize,
    /// `mode/engine` → latency: hybrid/ann, hybrid/exact, bm25, vector/ann, vector/exact.
    pub latency: Vec<(String, Latency)>,
    pub ann_recall_at_10: f64,
    /// Recall@10 and latency of the graph searched with only `top_k` candidates and ef 10,
    /// 20, 40 (vs exact).
    pub strict: Vec<StrictRecall>,
    /// Share of queries whose source chunk is in the hybrid top-k (a sanity check of the
    /// synthetic queries, not a quality figure).
    pub hybrid_source_in_top_k: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub sizes: Vec<SizeReport>,
    /// Reopening the largest collection: rebuilding the in-memory indexes from redb…
    pub reopen_s: f64,
    /// …and until the ANN graph was rebuilt (searches are exact meanwhile).
    pub reopen_ann_s: f64,
    pub dim: usize,
    pub threads: usize,
}

/// The hidden subcommand: a benchmark run (table on stderr, one JSON object on stdout) or
/// the churn writer.
pub fn main(args: &BenchKbArgs) -> Result<(), String> {
    if let Some(dir) = &args.churn {
        return churn(dir).map_err(|e| e.to_string());
    }
    let report = run(args).map_err(|e| e.to_string())?;
    print_table(&report);
    let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn run(args: &BenchKbArgs) -> Result<BenchReport, KbError> {
    let invalid = |m: &str| KbError::Invalid(m.to_string());
    let mut sizes = args.chunks.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() || sizes[0] == 0 || args.queries == 0 || args.top_k == 0 {
        return Err(invalid("--chunks, --queries and --top-k must be positive"));
    }
    let work = match &args.dir {
        Some(d) => WorkDir {
            path: d.clone(),
            remove: false,
        },
        None => WorkDir {
            path: std::env::temp_dir().join(format!("edgeseek-bench-kb-{}", std::process::id())),
            remove: true,
        },
    };
    let cfg = IndexConfig {
        ann_threshold: args.ann_threshold,
        ..IndexConfig::default()
    };
    let embed = Arc::new(LookupEmbed::new(args.dim));
    let open = |e: Arc<LookupEmbed>| -> Result<KnowledgeBase, KbError> {
        let store = Store::open_in(&work.path, super::store::MIGRATIONS)?;
        KnowledgeBase::open(store, e, cfg.clone())
    };
    let mut kb = open(Arc::clone(&embed))?;
    if kb.list_collections().iter().any(|c| c.name == "bench") {
        return Err(invalid(
            "the work directory already holds a benchmark collection",
        ));
    }
    kb.create_collection("bench")?;
    super::text::warm_up();
    let mut corpus = Corpus::new(args.dim, args.clusters, args.seed);
    let mut kept: Vec<GenChunk> = Vec::new();
    let mut reports = Vec::new();
    let mut doc_no = 0usize;
    const PER_DOC: usize = 100;
    for &size in &sizes {
        let t0 = Instant::now();
        let before = kept.len();
        while kept.len() < size {
            let n = PER_DOC.min(size - kept.len());
            let mut chunks = Vec::with_capacity(n);
            for i in 0..n {
                let g = corpus.chunk();
                embed.insert(g.text.clone(), g.vector.clone());
                chunks.push(Chunk {
                    ordinal: i as u32,
                    text: g.text.clone(),
                    page: None,
                    heading: vec![format!("Section {}", i / 10)],
                });
                kept.push(g);
            }
            kb.ingest_chunks("bench", text_doc(format!("doc{doc_no:06}.txt")), chunks)?;
            doc_no += 1;
        }
        let ingest_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        kb.wait_idle();
        let catch_up = t1.elapsed().as_secs_f64();
        eprintln!(
            "bench-kb: {size} chunks ingested ({:.0} chunks/s), ANN caught up in {catch_up:.1} s",
            (size - before) as f64 / ingest_s
        );
        let mut r = measure(&kb, &mut corpus, &kept, &embed, args)?;
        r.ingest_chunks_per_s = (size - before) as f64 / ingest_s;
        r.ann_catch_up_s = catch_up;
        reports.push(r);
    }
    drop(kb);
    let t = Instant::now();
    kb = open(Arc::clone(&embed))?;
    let reopen_s = t.elapsed().as_secs_f64();
    kb.wait_idle();
    let reopen_ann_s = t.elapsed().as_secs_f64();
    drop(kb);
    Ok(BenchReport {
        sizes: reports,
        reopen_s,
        reopen_ann_s,
        dim: args.dim,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

fn measure(
    kb: &KnowledgeBase,
    corpus: &mut Corpus,
    kept: &[GenChunk],
    embed: &LookupEmbed,
    args: &BenchKbArgs,
) -> Result<SizeReport, KbError> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ kept.len() as u64);
    let mut queries = Vec::with_capacity(args.queries);
    let mut sources = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let i = rng.random_range(0..kept.len());
        let (text, v) = corpus.query_for(&kept[i]);
        embed.insert(text.clone(), v);
        queries.push(text);
        sources.push(kept[i].text.clone());
    }
    let req = |q: &str, mode| SearchRequest {
        collections: vec!["bench".into()],
        query: q.to_string(),
        top_k: args.top_k,
        mode,
    };
    let ann = SearchTuning {
        ef_search: args.ef_search,
        ..SearchTuning::default()
    };
    let exact = SearchTuning {
        exact: true,
        ..SearchTuning::default()
    };
    let runs = [
        ("hybrid/ann", SearchMode::Hybrid, ann),
        ("hybrid/exact", SearchMode::Hybrid, exact),
        ("bm25", SearchMode::Bm25, ann),
        ("vector/ann", SearchMode::Vector, ann),
        ("vector/exact", SearchMode::Vector, exact),
    ];
    let mut lat = Vec::new();
    let mut results: HashMap<&str, Vec<Vec<String>>> = HashMap::new();
    for (name, mode, tuning) in runs {
        // Warm caches (pages of the redb file, the allocator) before timing.
        for q in queries.iter().take(20) {
            kb.search_tuned(&req(q, mode), &tuning)?;
        }
        let mut ms = Vec::with_capacity(queries.len());
        let mut res = Vec::with_capacity(queries.len());
        for q in &queries {
            let t = Instant::now();
            let hits = kb.search_tuned(&req(q, mode), &tuning)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            res.push(hits.into_iter().map(|h| h.chunk_id).collect::<Vec<_>>());
        }
        lat.push((name.to_string(), latency(ms)));
        results.insert(name, res);
    }
    let recall = {
        let (a, e) = (&results["vector/ann"], &results["vector/exact"]);
        let mut found = 0usize;
        let mut total = 0usize;
        for (a, e) in a.iter().zip(e) {
            found += a.iter().filter(|x| e.contains(x)).count();
            total += e.len();
        }
        found as f64 / total.max(1) as f64
    };
    // The graph alone, without the facade's deeper candidate list: top_k candidates and a
    // small ef, the settings where an approximate index shows its misses.
    let mut strict = Vec::new();
    for ef in [10usize, 20, 40] {
        let tuning = SearchTuning {
            ef_search: Some(ef),
            candidates: Some(args.top_k),
            ..SearchTuning::default()
        };
        let mut found = 0usize;
        let mut total = 0usize;
        let mut ms = Vec::with_capacity(queries.len());
        for (q, e) in queries.iter().zip(&results["vector/exact"]) {
            let t = Instant::now();
            let hits = kb.search_tuned(&req(q, SearchMode::Vector), &tuning)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|h| e.contains(&h.chunk_id)).count();
            total += e.len();
        }
        strict.push(StrictRecall {
            ef,
            recall_at_10: found as f64 / total.max(1) as f64,
            p50_ms: latency(ms).p50_ms,
        });
    }
    // Source check: does the hybrid top-k contain the chunk the query was made from?
    let mut src_hits = 0usize;
    for (q, src) in queries.iter().zip(&sources) {
        let hits = kb.search(&req(q, SearchMode::Hybrid))?;
        src_hits += usize::from(hits.iter().any(|h| &h.text == src));
    }
    let info = kb.collection("bench")?;
    Ok(SizeReport {
        chunks: info.chunks,
        ingest_chunks_per_s: 0.0,
        ann_catch_up_s: 0.0,
        ann_rows: info.ann_rows,
        latency: lat,
        ann_recall_at_10: recall,
        strict,
        hybrid_source_in_top_k: src_hits as f64 / queries.len() as f64,
    })
}

fn print_table(r: &BenchReport) {
    eprintln!(
        "\n| chunks | search | p50 ms | p99 ms | mean ms | vs exact (p50) |\n|---:|---|---:|---:|---:|---:|"
    );
    for s in &r.sizes {
        let p50 = |n: &str| {
            s.latency
                .iter()
                .find(|l| l.0 == n)
                .map_or(f64::NAN, |l| l.1.p50_ms)
        };
        for (name, l) in &s.latency {
            let anchor = if name.starts_with("hybrid") {
                p50("hybrid/exact")
            } else {
                p50("vector/exact")
            };
            eprintln!(
                "| {} | {name} | {:.3} | {:.3} | {:.3} | {:.2} |",
                s.chunks,
                l.p50_ms,
                l.p99_ms,
                l.mean_ms,
                l.p50_ms / anchor
            );
        }
    }
    eprintln!("\n| chunks | ANN recall@10 vs exact | source chunk in hybrid top-k | ingest chunks/s | ANN catch-up s |\n|---:|---:|---:|---:|---:|");
    for s in &r.sizes {
        eprintln!(
            "| {} | {:.4} | {:.3} | {:.0} | {:.1} |",
            s.chunks,
            s.ann_recall_at_10,
            s.hybrid_source_in_top_k,
            s.ingest_chunks_per_s,
            s.ann_catch_up_s
        );
    }
    eprintln!("\n| chunks | ANN alone (candidates = top_k): ef → recall@10, p50 ms |\n|---:|---|");
    for s in &r.sizes {
        let cells: Vec<String> = s
            .strict
            .iter()
            .map(|x| format!("ef {}: {:.4}, {:.3} ms", x.ef, x.recall_at_10, x.p50_ms))
            .collect();
        eprintln!("| {} | {} |", s.chunks, cells.join("; "));
    }
    eprintln!(
        "\nreopen: indexes rebuilt from redb in {:.2} s, ANN ready after {:.2} s\n",
        r.reopen_s, r.reopen_ann_s
    );
}

/// Churn writer: documents `doc0.txt` … `doc{FILES-1}.txt` in collection `c`, each ingest
/// `gen N` with `N % 7 + 1` chunks whose text names the generation; every 5th operation
/// deletes instead. Prints `begin ingest|delete FILE gen N` before and `ok …` after each
/// operation, so a killer knows what had returned.
pub fn churn(dir: &Path) -> Result<(), KbError> {
    const FILES: u64 = 6;
    let store = Store::open_in(dir, super::store::MIGRATIONS)?;
    let kb = KnowledgeBase::open(store, Arc::new(HashEmbed::new(64)), IndexConfig::default())?;
    if kb.collection("c").is_err() {
        kb.create_collection("c")?;
    }
    // Generations stay unique across (killed) runs: run r numbers its operations from
    // r × 1 000 000 + 1, with r counted in a file written once at start.
    let run = churn_run(dir) + 1;
    std::fs::write(dir.join("churn.run"), run.to_string())
        .map_err(|e| KbError::Invalid(format!("{}: {e}", dir.display())))?;
    let mut gen = run * 1_000_000;
    let stdout = std::io::stdout();
    loop {
        gen += 1;
        let file = format!("doc{}.txt", gen % FILES);
        let delete = gen.is_multiple_of(5);
        let op = if delete { "delete" } else { "ingest" };
        {
            let mut o = stdout.lock();
            let _ = writeln!(o, "begin {op} {file} gen {gen}");
            let _ = o.flush();
        }
        if delete {
            let id = kb
                .list_documents("c")?
                .into_iter()
                .find(|d| d.doc.filename == file)
                .map(|d| d.id);
            if let Some(id) = id {
                kb.delete_document("c", &id)?;
            }
        } else {
            let n = (gen % 7 + 1) as u32;
            let chunks = (0..n)
                .map(|i| Chunk {
                    ordinal: i,
                    text: format!("generation gen{gen} part {i} of {file} churn text"),
                    page: None,
                    heading: Vec::new(),
                })
                .collect();
            kb.ingest_chunks("c", text_doc(file.clone()), chunks)?;
        }
        let mut o = stdout.lock();
        let _ = writeln!(o, "ok {op} {file} gen {gen}");
        let _ = o.flush();
    }
}

fn churn_run(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("churn.run"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A synthetic plain-text document: the benchmarks ingest chunks directly, so there are no
/// source bytes to hash or measure.
fn text_doc(filename: String) -> NewDocument {
    NewDocument {
        filename,
        kind: DocKind::Text,
        title: None,
        sha256: "0".repeat(64),
        size_bytes: 0,
        pages: None,
    }
}
