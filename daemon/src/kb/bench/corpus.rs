//! The synthetic corpus of `bench-kb`: clustered unit vectors, Zipf-distributed pseudo-words
//! with topic words, identifiers and Chinese chunks, and the lookup "embedder" that maps each
//! generated text to its vector.

use std::collections::HashMap;
use std::sync::RwLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kb::vector::{normalize, Matrix};
use crate::kb::{Embed, Script};

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
            let words: Vec<String> = crate::kb::text::analyze(&chunk.text);
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

/// An embedder that returns the generator's vector for each known text; tokens, limits and
/// coverage are those of the test embedder [`HashEmbed`](crate::kb::hashembed::HashEmbed).
pub struct LookupEmbed {
    dim: usize,
    words: crate::kb::hashembed::HashEmbed,
    map: RwLock<HashMap<String, Vec<f32>>>,
}

impl LookupEmbed {
    pub fn new(dim: usize) -> LookupEmbed {
        LookupEmbed {
            dim,
            words: crate::kb::hashembed::HashEmbed::new(dim),
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
        self.words.count_tokens(text)
    }
    fn max_tokens(&self) -> usize {
        self.words.max_tokens()
    }
    fn covers(&self, script: Script) -> bool {
        self.words.covers(script)
    }
    fn model_id(&self) -> String {
        format!("bench-lookup-{}", self.dim)
    }
}
