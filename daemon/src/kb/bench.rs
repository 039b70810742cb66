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

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::base::{
    IndexConfig, KbError, KnowledgeBase, NewDocument, SearchMode, SearchRequest, SearchTuning,
};
use super::vector::{normalize, Matrix};
use super::{Chunk, DocKind, Embed, HashEmbed, Script};
use crate::store::Store;

/// A standard normal sample (Box–Muller).
fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn unit(rng: &mut ChaCha8Rng, dim: usize) -> Vec<f32> {
    loop {
        let mut v: Vec<f32> = (0..dim).map(|_| gauss(rng)).collect();
        if normalize(&mut v) {
            return v;
        }
    }
}

/// Clusters on the unit sphere with a low intrinsic dimension (see the module docs).
pub struct Clusters {
    dim: usize,
    centers: Vec<Vec<f32>>,
    /// Per cluster: principal directions, already scaled by their spread.
    axes: Vec<Vec<Vec<f32>>>,
}

const AXES: usize = 12;
const NOISE: f32 = 0.08;

impl Clusters {
    pub fn new(dim: usize, clusters: usize, seed: u64) -> Clusters {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut centers = Vec::with_capacity(clusters);
        let mut axes = Vec::with_capacity(clusters);
        for _ in 0..clusters.max(1) {
            centers.push(unit(&mut rng, dim));
            axes.push(
                (0..AXES)
                    .map(|j| {
                        let s = 0.45 / (1.0 + j as f32 * 0.5);
                        unit(&mut rng, dim).into_iter().map(|x| x * s).collect()
                    })
                    .collect(),
            );
        }
        Clusters { dim, centers, axes }
    }

    pub fn len(&self) -> usize {
        self.centers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centers.is_empty()
    }

    /// A unit vector from cluster `c`.
    pub fn sample(&self, rng: &mut ChaCha8Rng, c: usize) -> Vec<f32> {
        let c = c % self.centers.len();
        let mut v = self.centers[c].clone();
        for a in &self.axes[c] {
            let w = gauss(rng);
            v.iter_mut().zip(a).for_each(|(x, y)| *x += w * y);
        }
        let noise = NOISE / (self.dim as f32).sqrt();
        v.iter_mut().for_each(|x| *x += noise * gauss(rng));
        normalize(&mut v);
        v
    }

    /// A unit vector near `v` (a query about the same passage): `v` plus a small move in
    /// the cluster's directions and some noise.
    pub fn near(&self, rng: &mut ChaCha8Rng, v: &[f32], c: usize) -> Vec<f32> {
        let c = c % self.centers.len();
        let mut q = v.to_vec();
        for a in &self.axes[c] {
            let w = 0.3 * gauss(rng);
            q.iter_mut().zip(a).for_each(|(x, y)| *x += w * y);
        }
        let noise = NOISE / (self.dim as f32).sqrt();
        q.iter_mut().for_each(|x| *x += noise * gauss(rng));
        normalize(&mut q);
        q
    }
}

/// `n` clustered unit vectors: clusters from `cluster_seed`, samples from `sample_seed`
/// (row i is the same for every `n` > i).
pub fn clustered_vectors(
    n: usize,
    dim: usize,
    clusters: usize,
    cluster_seed: u64,
    sample_seed: u64,
) -> Matrix {
    let cl = Clusters::new(dim, clusters, cluster_seed);
    let mut rng = ChaCha8Rng::seed_from_u64(sample_seed);
    let mut m = Matrix::new(dim);
    for _ in 0..n {
        let c = rng.random_range(0..cl.len());
        m.push(&cl.sample(&mut rng, c));
    }
    m
}

/// Common Chinese words (office and IT vocabulary) for the Chinese share of the corpus.
const ZH_WORDS: &[&str] = &[
    "员工",
    "公司",
    "年假",
    "申请",
    "审批",
    "报销",
    "发票",
    "差旅",
    "费用",
    "合同",
    "部门",
    "经理",
    "系统",
    "密码",
    "重置",
    "账号",
    "权限",
    "服务器",
    "网络",
    "安全",
    "数据",
    "备份",
    "恢复",
    "客户",
    "订单",
    "产品",
    "质量",
    "检查",
    "流程",
    "规定",
    "制度",
    "培训",
    "入职",
    "离职",
    "工资",
    "奖金",
    "考勤",
    "加班",
    "休假",
    "病假",
    "会议",
    "报告",
    "项目",
    "计划",
    "预算",
    "采购",
    "供应商",
    "仓库",
    "库存",
    "物流",
    "财务",
    "审计",
    "风险",
    "合规",
    "政策",
    "文件",
    "签字",
    "盖章",
    "邮件",
    "电话",
    "办公室",
    "设备",
    "电脑",
    "打印机",
    "软件",
    "升级",
    "版本",
    "漏洞",
    "补丁",
    "日志",
    "监控",
    "告警",
    "故障",
    "维护",
    "部署",
    "测试",
    "开发",
    "需求",
    "设计",
    "文档",
    "标准",
    "规范",
    "指标",
    "考核",
    "绩效",
    "晋升",
    "薪酬",
    "福利",
    "保险",
    "公积金",
    "体检",
    "食堂",
    "班车",
    "停车",
    "门禁",
    "访客",
    "消防",
    "演练",
    "应急",
    "预案",
    "通知",
    "公告",
    "每年",
    "每月",
    "提前",
    "必须",
    "需要",
    "可以",
    "不得",
    "按照",
    "根据",
    "负责",
    "提交",
    "确认",
    "完成",
    "处理",
    "管理",
    "使用",
    "提供",
    "支持",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "vor", "sa", "qui", "del", "pan", "ro", "ne", "tur", "bi",
    "gal", "fe", "mon", "si", "dra", "lu", "cor", "pe", "vin", "sta", "ho", "ber", "ga", "zu",
    "nix", "te", "mar", "ol",
];

/// Zipf sampler over ranks `0..n`.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += 1.0 / (r as f64).powf(s);
            cdf.push(acc);
        }
        cdf.iter_mut().for_each(|c| *c /= acc);
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let u: f64 = rng.random::<f64>();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Generator of chunk texts and vectors.
pub struct Corpus {
    rng: ChaCha8Rng,
    words: Vec<String>,
    zipf: Zipf,
    clusters: Clusters,
    /// Per cluster: topic word ranks (mid-frequency words).
    topics: Vec<Vec<usize>>,
}

/// A generated chunk: its text, vector and cluster.
pub struct GenChunk {
    pub text: String,
    pub vector: Vec<f32>,
    pub cluster: usize,
    pub chinese: bool,
}

impl Corpus {
    pub fn new(dim: usize, clusters: usize, seed: u64) -> Corpus {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_words = 30_000;
        let mut words = Vec::with_capacity(n_words);
        let mut seen = std::collections::HashSet::new();
        while words.len() < n_words {
            let k = rng.random_range(2..=4);
            let w: String = (0..k)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let topics = (0..clusters)
            .map(|_| (0..20).map(|_| rng.random_range(200..8000)).collect())
            .collect();
        Corpus {
            rng,
            words,
            zipf: Zipf::new(n_words, 1.07),
            clusters: Clusters::new(dim, clusters, seed ^ 0x5eed),
            topics,
        }
    }

    pub fn chunk(&mut self) -> GenChunk {
        let c = self.rng.random_range(0..self.clusters.len());
        let chinese = self.rng.random::<f32>() < 0.15;
        let text = if chinese {
            let n = self.rng.random_range(40..100);
            let mut t = String::new();
            for i in 0..n {
                // Topic words of a cluster map to Chinese words too, so Chinese queries have
                // something specific to find.
                let w = if self.rng.random::<f32>() < 0.25 {
                    let r = self.topics[c][self.rng.random_range(0..20)];
                    ZH_WORDS[r % ZH_WORDS.len()]
                } else {
                    ZH_WORDS[self.zipf.sample(&mut self.rng) % ZH_WORDS.len()]
                };
                t.push_str(w);
                if i % 9 == 8 {
                    t.push('，');
                }
            }
            t.push('。');
            t
        } else {
            let n = self.rng.random_range(60..140);
            let mut t = String::new();
            for i in 0..n {
                if i > 0 {
                    t.push(' ');
                }
                let roll = self.rng.random::<f32>();
                if roll < 0.25 {
                    let r = self.topics[c][self.rng.random_range(0..20)];
                    t.push_str(&self.words[r]);
                } else if roll < 0.27 {
                    let r = self.rng.random_range(0..500);
                    t.push_str(&format!("lib{}{}", self.words[r], r % 10));
                } else if roll < 0.28 {
                    let (a, b) = (self.rng.random_range(0..5), self.rng.random_range(0..20));
                    t.push_str(&format!("v{a}.{b}.{}", self.rng.random_range(0..10)));
                } else {
                    t.push_str(&self.words[self.zipf.sample(&mut self.rng)]);
                }
                if i % 15 == 14 {
                    t.push('.');
                }
            }
            t
        };
        let vector = self.clusters.sample(&mut self.rng, c);
        GenChunk {
            text,
            vector,
            cluster: c,
            chinese,
        }
    }

    /// A query about `chunk`: a few of its words (Chinese chunks: a few of its jieba words
    /// run together) and a vector near its own.
    pub fn query_for(&mut self, chunk: &GenChunk) -> (String, Vec<f32>) {
        let n = self.rng.random_range(3..=5);
        let text = if chunk.chinese {
            let words: Vec<String> = super::text::analyze(&chunk.text);
            if words.is_empty() {
                chunk.text.chars().take(6).collect()
            } else {
                (0..n)
                    .map(|_| words[self.rng.random_range(0..words.len())].clone())
                    .collect::<String>()
            }
        } else {
            let words: Vec<&str> = chunk.text.split_whitespace().collect();
            (0..n)
                .map(|_| words[self.rng.random_range(0..words.len())].trim_end_matches('.'))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let v = self
            .clusters
            .near(&mut self.rng, &chunk.vector, chunk.cluster);
        (text, v)
    }
}

/// An embedder that returns the generator's vector for each known text.
#[derive(Default)]
pub struct LookupEmbed {
    dim: usize,
    map: RwLock<HashMap<String, Vec<f32>>>,
}

impl LookupEmbed {
    pub fn new(dim: usize) -> LookupEmbed {
        LookupEmbed {
            dim,
            map: RwLock::new(HashMap::new()),
        }
    }
    pub fn insert(&self, text: String, v: Vec<f32>) {
        crate::util::write(&self.map).insert(text, v);
    }
}

impl Embed for LookupEmbed {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let map = crate::util::read(&self.map);
        texts
            .iter()
            .map(|t| {
                map.get(t)
                    .cloned()
                    .ok_or_else(|| "text not in the benchmark's table".to_string())
            })
            .collect()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
    fn max_tokens(&self) -> usize {
        512
    }
    fn covers(&self, script: Script) -> bool {
        script == Script::Latin
    }
    fn model_id(&self) -> String {
        format!("bench-lookup-{}", self.dim)
    }
}

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
            kb.ingest_chunks(
                "bench",
                NewDocument {
                    filename: format!("doc{doc_no:06}.txt"),
                    kind: DocKind::Text,
                    title: None,
                    sha256: "0".repeat(64),
                    size_bytes: 0,
                    pages: None,
                },
                chunks,
            )?;
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
                .find(|d| d.filename == file)
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
            kb.ingest_chunks(
                "c",
                NewDocument {
                    filename: file.clone(),
                    kind: DocKind::Text,
                    title: None,
                    sha256: "0".repeat(64),
                    size_bytes: 0,
                    pages: None,
                },
                chunks,
            )?;
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
