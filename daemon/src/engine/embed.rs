//! Sentence embeddings with a BERT-family ONNX encoder (all-MiniLM-L6-v2 by default).
//!
//! **Model directory** (a sentence-transformers export):
//! - `model.onnx`, else `onnx/model.onnx`, else the first `onnx/model*.onnx` by name;
//! - `tokenizer.json`, `config.json` (`hidden_size`, `max_position_embeddings`);
//! - `1_Pooling/config.json`: `mean` (the default when the file is absent), `cls` or `max`;
//! - `sentence_bert_config.json`: `max_seq_length`, the longest input in tokens including
//!   `[CLS]`/`[SEP]` (MiniLM: 256); without it `max_position_embeddings`.
//!
//! The graph's inputs are read from the session: `input_ids` is required,
//! `attention_mask` and `token_type_ids` are fed only when the graph has them (int64 or
//! int32). The output is `sentence_embedding` when the export already pools, else
//! `last_hidden_state` / `token_embeddings` (`[batch, seq, dim]`), pooled here over the
//! attention mask. Vectors are always L2-normalised, so a dot product is the cosine. Every
//! mismatch (missing file, unknown input, width that disagrees with `config.json`) fails at
//! load with the file named.
//!
//! **Service**: [`Embedder`] owns the ONNX Runtime session on one dedicated thread (its
//! kernels use `threads` intra-op threads), fed through a bounded channel. Callers tokenize on
//! their own thread, so tokenization runs in parallel with inference. The worker takes every
//! job waiting (up to a batch's worth of inputs), sorts all their inputs by token count and
//! runs them `batch_size` at a time, so a batch pads to similar lengths, and small requests
//! arriving together share batches. Input buffers are reused between batches.
//!
//! **Languages** ([`EmbedSpec::multilingual`], used by [`crate::kb::Embed::covers`]): a model
//! is taken as multilingual when its directory name or `config.json`'s `_name_or_path`
//! contains one of [`MULTILINGUAL_MARKERS`] (`multilingual`, `m3`, `labse`, `xlm`, `chinese`,
//! `zh`, `cjk`); otherwise it is English-only. Every model covers Latin script;
//! CJK and other scripts only multilingual ones. all-MiniLM-L6-v2 was trained on English
//! and is English-only: Chinese text gets vectors, but meaningless ones.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};
use serde_json::Value as Json;
use tokenizers::{Tokenizer, TruncationParams};

use super::onnx::{first_onnx, impl_file_error, int_tensor_view, read_json, IntType};
use super::ort_env::{self, OrtError, Provider, ProviderOptions};
use crate::kb::{Embed, Script};
use crate::util::{lock, sha256_file};

/// Directory name of the default embedding model (`scripts/setup` assembles it).
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";
/// Where packages install models.
pub const SYSTEM_MODELS_DIR: &str = "/usr/lib/edgeseek/models";
/// Where `scripts/setup` puts it in a checkout (relative to the working directory).
pub const DEV_MODELS_DIR: &str = ".runtime/models";
/// Name fragments that mark a multilingual model (see the module doc).
pub const MULTILINGUAL_MARKERS: &[&str] =
    &["multilingual", "m3", "labse", "xlm", "chinese", "zh", "cjk"];

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model directory {0} does not exist")]
    NoDir(PathBuf),
    #[error(
        "no embedding model found (looked in {tried}); run scripts/setup or set embeddings.model"
    )]
    NotFound { tried: String },
    #[error("{file}: missing")]
    Missing { file: PathBuf },
    #[error("{file}: {msg}")]
    Invalid { file: PathBuf, msg: String },
    #[error(transparent)]
    Ort(#[from] OrtError),
    #[error("input {index} is empty")]
    EmptyInput { index: usize },
    #[error("input {index} has {tokens} tokens; the embedding model reads at most {max}")]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("embedding failed: {0}")]
    Run(String),
    #[error("the embedding queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("the embedder has shut down")]
    ShutDown,
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{0}")]
    Config(String),
}

fn invalid(file: &Path, msg: impl Into<String>) -> EmbedError {
    EmbedError::Invalid {
        file: file.to_path_buf(),
        msg: msg.into(),
    }
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Average over the tokens the attention mask covers.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the covered tokens.
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
}

/// Static facts about an embedding model directory (no ONNX Runtime needed).
#[derive(Clone, Debug)]
pub struct EmbedSpec {
    pub dir: PathBuf,
    /// Served name: the directory name.
    pub name: String,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub pooling: Pooling,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    /// Vector width (`hidden_size`; checked against the graph at load).
    pub dim: usize,
    /// Token id of the padding (`[PAD]`).
    pub pad_id: u32,
    /// Whether the model was trained on more than English (see the module doc).
    pub multilingual: bool,
}

impl_file_error!(EmbedError);

/// Optional JSON file: `None` when absent, an error when present but unreadable.
fn read_optional_json(file: &Path) -> Result<Option<Json>, EmbedError> {
    if file.exists() {
        read_json(file).map(Some)
    } else {
        Ok(None)
    }
}

fn positive(v: &Json, key: &str, file: &Path) -> Result<Option<usize>, EmbedError> {
    match v.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(x) => match x.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(invalid(file, format!("`{key}` must be a positive integer"))),
        },
    }
}

/// The pooling mode of a sentence-transformers `1_Pooling/config.json`.
pub fn pooling_from_config(cfg: &Json, file: &Path) -> Result<Pooling, EmbedError> {
    let flag = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
    for unsupported in [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if flag(unsupported) {
            return Err(invalid(
                file,
                format!("`{unsupported}` is not supported (mean, cls or max pooling only)"),
            ));
        }
    }
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(k, _)| flag(k))
    .map(|(_, p)| p)
    .collect();
    match modes.as_slice() {
        [] => Ok(Pooling::Mean),
        [one] => Ok(*one),
        _ => Err(invalid(
            file,
            "more than one pooling mode is set (concatenated pooling is not supported)",
        )),
    }
}

/// Whether `name` marks a multilingual model (see the module doc).
pub fn is_multilingual_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MULTILINGUAL_MARKERS.iter().any(|m| lower.contains(m))
}

/// Whether `dir` looks like a sentence-transformers embedding model rather than a chat
/// model (so `serve` does not pick it as the chat model from `<state_dir>/models`).
pub fn is_embedding_model_dir(dir: &Path) -> bool {
    dir.join("sentence_bert_config.json").is_file()
        || dir.join("1_Pooling").is_dir()
        || dir.join("modules.json").is_file()
}

/// The ONNX file of an embedding model directory.
fn find_onnx(dir: &Path) -> Result<PathBuf, EmbedError> {
    let top = dir.join("model.onnx");
    if top.is_file() {
        return Ok(top);
    }
    let sub = dir.join("onnx");
    let preferred = sub.join("model.onnx");
    if preferred.is_file() {
        return Ok(preferred);
    }
    first_onnx(&sub, "model").ok_or(EmbedError::Missing { file: top })
}

impl EmbedSpec {
    /// Read and check the configs of `dir`.
    pub fn read(dir: &Path) -> Result<EmbedSpec, EmbedError> {
        if !dir.is_dir() {
            return Err(EmbedError::NoDir(dir.to_path_buf()));
        }
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(DEFAULT_MODEL)
            .to_string();
        let onnx = find_onnx(dir)?;
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(EmbedError::Missing { file: tokenizer });
        }
        let cfg_file = dir.join("config.json");
        let cfg = read_json::<EmbedError>(&cfg_file)?;
        let dim = positive(&cfg, "hidden_size", &cfg_file)?
            .ok_or_else(|| invalid(&cfg_file, "`hidden_size` missing"))?;
        let positions = positive(&cfg, "max_position_embeddings", &cfg_file)?;
        let st_file = dir.join("sentence_bert_config.json");
        let seq = match read_optional_json(&st_file)? {
            Some(st) => positive(&st, "max_seq_length", &st_file)?,
            None => None,
        };
        let max_tokens = match (seq, positions) {
            (Some(s), Some(p)) if s > p => {
                return Err(invalid(
                    &st_file,
                    format!("`max_seq_length` {s} exceeds the model's {p} positions"),
                ))
            }
            (Some(s), _) => s,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(invalid(
                    &cfg_file,
                    "`max_position_embeddings` missing (and no sentence_bert_config.json)",
                ))
            }
        };
        if max_tokens < 3 {
            return Err(invalid(&cfg_file, "the model reads fewer than 3 tokens"));
        }
        let pool_file = dir.join("1_Pooling").join("config.json");
        let pooling = match read_optional_json(&pool_file)? {
            Some(p) => {
                if let Some(w) = positive(&p, "word_embedding_dimension", &pool_file)? {
                    if w != dim {
                        return Err(invalid(
                            &pool_file,
                            format!("`word_embedding_dimension` {w} but config.json says hidden_size {dim}"),
                        ));
                    }
                }
                pooling_from_config(&p, &pool_file)?
            }
            None => Pooling::Mean,
        };
        let pad_id = cfg
            .get("pad_token_id")
            .and_then(Json::as_u64)
            .map_or(0, |n| n as u32);
        let source_name = cfg
            .get("_name_or_path")
            .and_then(Json::as_str)
            .unwrap_or("");
        let multilingual = is_multilingual_name(&name) || is_multilingual_name(source_name);
        Ok(EmbedSpec {
            dir: dir.to_path_buf(),
            name,
            onnx,
            tokenizer,
            pooling,
            max_tokens,
            dim,
            pad_id,
            multilingual,
        })
    }
}

/// Candidate model directories when `embeddings.model` is not set, in order.
pub fn default_model_dirs(state_dir: &Path) -> Vec<PathBuf> {
    vec![
        state_dir.join("models").join(DEFAULT_MODEL),
        Path::new(SYSTEM_MODELS_DIR).join(DEFAULT_MODEL),
        Path::new(DEV_MODELS_DIR).join(DEFAULT_MODEL),
    ]
}

/// The embedding model directory: `configured` if set (it must exist), else the first of
/// [`default_model_dirs`] that exists.
pub fn locate(configured: Option<&Path>, state_dir: &Path) -> Result<PathBuf, EmbedError> {
    locate_in(configured, &default_model_dirs(state_dir))
}

fn locate_in(configured: Option<&Path>, candidates: &[PathBuf]) -> Result<PathBuf, EmbedError> {
    if let Some(dir) = configured {
        return if dir.is_dir() {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbedError::NoDir(dir.to_path_buf()))
        };
    }
    if let Some(found) = candidates.iter().find(|d| d.is_dir()) {
        return Ok(found.clone());
    }
    Err(EmbedError::NotFound {
        tried: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The graph's embedding output.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    /// `[batch, seq, dim]`: pooled here.
    Tokens(String),
    /// `[batch, dim]`: pooled by the graph.
    Sentence(String),
}

/// Input and output names and types, read from the session.
#[derive(Clone, Debug)]
struct Graph {
    ids: IntType,
    mask: Option<IntType>,
    type_ids: Option<IntType>,
    output: Output,
}

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const TOKEN_TYPE_IDS: &str = "token_type_ids";

fn int_type(t: &ValueType, file: &Path, name: &str) -> Result<IntType, EmbedError> {
    IntType::of(t).ok_or_else(|| {
        invalid(
            file,
            format!("input `{name}` has unsupported type {t:?} (int64 or int32 expected)"),
        )
    })
}

/// Check the graph against the spec and find its inputs and output.
fn bind_graph(session: &Session, spec: &EmbedSpec) -> Result<Graph, EmbedError> {
    let file = &spec.onnx;
    let mut ids = None;
    let mut mask = None;
    let mut type_ids = None;
    for input in session.inputs() {
        let name = input.name();
        let ty = int_type(input.dtype(), file, name)?;
        match name {
            INPUT_IDS => ids = Some(ty),
            ATTENTION_MASK => mask = Some(ty),
            TOKEN_TYPE_IDS => type_ids = Some(ty),
            other => {
                return Err(invalid(
                    file,
                    format!(
                    "graph input `{other}` is not one of input_ids, attention_mask, token_type_ids"
                ),
                ))
            }
        }
    }
    let ids = ids.ok_or_else(|| invalid(file, "graph has no input `input_ids`"))?;
    let find = |name: &str| session.outputs().iter().find(|o| o.name() == name);
    let (outlet, output, rank) = if let Some(o) = find("sentence_embedding") {
        (o, Output::Sentence(o.name().to_string()), 2)
    } else if let Some(o) = find("last_hidden_state").or_else(|| find("token_embeddings")) {
        (o, Output::Tokens(o.name().to_string()), 3)
    } else {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        return Err(invalid(
            file,
            format!(
                "graph has none of the outputs sentence_embedding, last_hidden_state, token_embeddings (it has {})",
                names.join(", ")
            ),
        ));
    };
    let name = outlet.name();
    match outlet.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => {
            let dims: &[i64] = shape;
            if dims.len() != rank {
                return Err(invalid(
                    file,
                    format!(
                        "output `{name}` has {} dimensions, expected {rank}",
                        dims.len()
                    ),
                ));
            }
            if let Some(&d) = dims.last() {
                if d > 0 && d as usize != spec.dim {
                    return Err(invalid(
                        file,
                        format!(
                            "output `{name}` is {d} wide but config.json says hidden_size {}",
                            spec.dim
                        ),
                    ));
                }
            }
        }
        other => {
            return Err(invalid(
                file,
                format!("output `{name}` has unsupported type {other:?} (float32 expected)"),
            ))
        }
    }
    Ok(Graph {
        ids,
        mask,
        type_ids,
        output,
    })
}

/// Pool token vectors (`hidden` is `[batch, seq, dim]`, row-major) into one vector per row.
/// Row `r` covers positions `0..lens[r]` (inputs are right-padded).
pub fn pool(
    hidden: &[f32],
    seq: usize,
    dim: usize,
    lens: &[usize],
    mode: Pooling,
) -> Vec<Vec<f32>> {
    lens.iter()
        .enumerate()
        .map(|(r, &len)| {
            let len = len.min(seq);
            let row = &hidden[r * seq * dim..(r + 1) * seq * dim];
            let mut v = vec![0f32; dim];
            match mode {
                Pooling::Cls => {
                    if len > 0 {
                        v.copy_from_slice(&row[..dim]);
                    }
                }
                Pooling::Mean => {
                    for tok in row[..len * dim].chunks_exact(dim) {
                        for (a, x) in v.iter_mut().zip(tok) {
                            *a += x;
                        }
                    }
                    // sentence-transformers clamps the count at 1e-9: an empty row stays 0.
                    let n = (len as f32).max(1e-9);
                    v.iter_mut().for_each(|a| *a /= n);
                }
                Pooling::Max => {
                    if len > 0 {
                        v.fill(f32::NEG_INFINITY);
                        for tok in row[..len * dim].chunks_exact(dim) {
                            for (a, x) in v.iter_mut().zip(tok) {
                                *a = a.max(*x);
                            }
                        }
                    }
                }
            }
            v
        })
        .collect()
}

/// Scale `v` to unit length (torch's `F.normalize`: a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// One tokenized input.
#[derive(Clone, Debug)]
struct Tokens {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
}

/// The ONNX Runtime session and its reusable input buffers; lives on the worker thread.
struct Model {
    session: Session,
    graph: Graph,
    pooling: Pooling,
    dim: usize,
    pad_id: i64,
    ids: Vec<i64>,
    mask: Vec<i64>,
    type_ids: Vec<i64>,
    ids32: Vec<i32>,
    mask32: Vec<i32>,
    type_ids32: Vec<i32>,
}

fn run_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Run(e.to_string())
}

/// An input tensor of the graph's integer type, viewing `data64` or (after converting into
/// `data32`) `data32`.
fn int_input<'a>(
    ty: IntType,
    shape: [usize; 2],
    data64: &'a [i64],
    data32: &'a mut Vec<i32>,
) -> Result<SessionInputValue<'a>, EmbedError> {
    int_tensor_view(ty, shape, data64, data32).map_err(run_err)
}

impl Model {
    /// Embed `rows` (each at most the model's limit) as one padded batch.
    fn run(&mut self, rows: &[&Tokens]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let b = rows.len();
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
        let n = b * seq;
        self.ids.clear();
        self.ids.resize(n, self.pad_id);
        self.mask.clear();
        self.mask.resize(n, 0);
        self.type_ids.clear();
        self.type_ids.resize(n, 0);
        for (r, t) in rows.iter().enumerate() {
            let at = r * seq;
            for (dst, &id) in self.ids[at..at + t.ids.len()].iter_mut().zip(&t.ids) {
                *dst = i64::from(id);
            }
            self.mask[at..at + t.ids.len()].fill(1);
            for (dst, &id) in self.type_ids[at..at + t.type_ids.len()]
                .iter_mut()
                .zip(&t.type_ids)
            {
                *dst = i64::from(id);
            }
        }
        let lens: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        let shape = [b, seq];
        let g = &self.graph;
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'_>)> = Vec::with_capacity(3);
        inputs.push((
            Cow::Borrowed(INPUT_IDS),
            int_input(g.ids, shape, &self.ids, &mut self.ids32)?,
        ));
        if let Some(ty) = g.mask {
            inputs.push((
                Cow::Borrowed(ATTENTION_MASK),
                int_input(ty, shape, &self.mask, &mut self.mask32)?,
            ));
        }
        if let Some(ty) = g.type_ids {
            inputs.push((
                Cow::Borrowed(TOKEN_TYPE_IDS),
                int_input(ty, shape, &self.type_ids, &mut self.type_ids32)?,
            ));
        }
        let (out_name, pooled_by_graph) = match &g.output {
            Output::Tokens(n) => (n.clone(), false),
            Output::Sentence(n) => (n.clone(), true),
        };
        let outputs = self.session.run(inputs).map_err(run_err)?;
        let value = outputs
            .get(&out_name)
            .ok_or_else(|| EmbedError::Run(format!("output `{out_name}` missing")))?;
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        let dims: &[i64] = out_shape;
        let dim = self.dim;
        let mut vectors = if pooled_by_graph {
            if dims != [b as i64, dim as i64] {
                return Err(EmbedError::Run(format!(
                    "output `{out_name}` has shape {dims:?}, expected [{b}, {dim}]"
                )));
            }
            data.chunks_exact(dim).map(<[f32]>::to_vec).collect()
        } else {
            if dims != [b as i64, seq as i64, dim as i64] {
                return Err(EmbedError::Run(format!(
                    "output `{out_name}` has shape {dims:?}, expected [{b}, {seq}, {dim}]"
                )));
            }
            pool(data, seq, dim, &lens, self.pooling)
        };
        vectors.iter_mut().for_each(|v| l2_normalize(v));
        Ok(vectors)
    }
}

/// What to do with an input longer than the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the first tokens (the KB chunker already keeps chunks under the limit).
    Truncate,
    /// Fail with [`EmbedError::TooLong`] naming the input (the API does this).
    Reject,
}

/// Options of one [`Embedder::embed_with`] call.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    pub overflow: Overflow,
    /// Wait for room when the queue is full (blocking callers), or fail at once with
    /// [`EmbedError::QueueFull`] (the API, which answers 429).
    pub wait: bool,
    /// Set to skip the inputs not yet embedded (a client that went away).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for EmbedRequest {
    fn default() -> Self {
        EmbedRequest {
            overflow: Overflow::Truncate,
            wait: true,
            cancel: None,
        }
    }
}

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// One unit-length vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read, `[CLS]`/`[SEP]` included.
    pub tokens: usize,
}

/// Settings of the service (config `[embeddings]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedderConfig {
    /// Inputs per ONNX Runtime call.
    pub batch_size: usize,
    /// Intra-op threads of the session; 0 lets ONNX Runtime decide (one per core).
    pub threads: usize,
    /// Requests waiting for the worker; more fail with [`EmbedError::QueueFull`] (or wait,
    /// see [`EmbedRequest::wait`]).
    pub max_queue: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            batch_size: 32,
            threads: 0,
            max_queue: 64,
        }
    }
}

/// Counters of the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedStats {
    pub queued: usize,
    pub inputs: u64,
    pub tokens: u64,
    pub batches: u64,
}

struct Job {
    rows: Vec<Tokens>,
    cancel: Option<Arc<AtomicBool>>,
    reply: SyncSender<Result<Vec<Vec<f32>>, EmbedError>>,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    inputs: AtomicU64,
    tokens: AtomicU64,
    batches: AtomicU64,
}

struct Shared {
    spec: EmbedSpec,
    model_id: String,
    provider: Provider,
    cfg: EmbedderConfig,
    /// Truncates to the model's limit; no padding.
    tokenizer: Tokenizer,
    /// No truncation, no padding: for counting and for rejecting long inputs.
    counter: Tokenizer,
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Embedder::shutdown`]: the worker fails what is left instead of running it.
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// The embedding service: cheap to clone and share between threads.
#[derive(Clone)]
pub struct Embedder {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.shared.model_id)
            .field("provider", &self.shared.provider)
            .finish()
    }
}

fn load_tokenizers(spec: &EmbedSpec) -> Result<(Tokenizer, Tokenizer), EmbedError> {
    let file = &spec.tokenizer;
    let mut counter =
        Tokenizer::from_file(file).map_err(|e| invalid(file, format!("cannot load: {e}")))?;
    // tokenizer.json files often carry the exporter's fixed padding and truncation (MiniLM:
    // pad to 128); the service pads per batch and truncates at the model's own limit.
    counter.with_padding(None);
    counter
        .with_truncation(None)
        .map_err(|e| invalid(file, e.to_string()))?;
    let mut tokenizer = counter.clone();
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| invalid(file, e.to_string()))?;
    Ok((tokenizer, counter))
}

impl Embedder {
    /// Load the model in `dir` and start the worker thread. `library` is the configured ONNX
    /// Runtime path, if any; `opts` are the engine's provider options (TensorRT is left out:
    /// its engines are built per input shape, and every batch has a new one), with the
    /// session's intra-op threads taken from `cfg.threads`.
    pub fn start(
        dir: &Path,
        library: Option<&Path>,
        opts: &ProviderOptions,
        cfg: &EmbedderConfig,
    ) -> Result<Embedder, EmbedError> {
        if cfg.batch_size == 0 || cfg.max_queue == 0 {
            return Err(EmbedError::Config(
                "batch_size and max_queue must be at least 1".into(),
            ));
        }
        // Cheap checks first, so a broken directory fails before ONNX Runtime parses a graph.
        let spec = EmbedSpec::read(dir)?;
        let (tokenizer, counter) = load_tokenizers(&spec)?;
        let mut opts = opts.clone();
        opts.providers.retain(|p| *p != Provider::Tensorrt);
        if opts.providers.is_empty() {
            opts.providers.push(Provider::Cpu);
        }
        opts.intra_threads = cfg.threads;
        let rt = ort_env::runtime(library)?;
        let (session, provider) = rt.load_session(&spec.onnx, &opts)?;
        let graph = bind_graph(&session, &spec)?;
        let sha = sha256_file(&spec.onnx).map_err(|e| invalid(&spec.onnx, e.to_string()))?;
        let model_id = format!("{}@{}", spec.name, &sha[..12]);
        let model = Model {
            session,
            graph,
            pooling: spec.pooling,
            dim: spec.dim,
            pad_id: i64::from(spec.pad_id),
            ids: Vec::new(),
            mask: Vec::new(),
            type_ids: Vec::new(),
            ids32: Vec::new(),
            mask32: Vec::new(),
            type_ids32: Vec::new(),
        };
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            model,
            rx,
            batch_size: cfg.batch_size,
            stop: stop.clone(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("edgeseek-embed".into())
            .spawn(move || worker.run())
            .map_err(|e| EmbedError::Config(format!("cannot start the embedding thread: {e}")))?;
        tracing::debug!(model = %model_id, provider = provider.as_str(), dim = spec.dim,
            max_tokens = spec.max_tokens, pooling = spec.pooling.as_str(), "embedding model ready");
        Ok(Embedder {
            shared: Arc::new(Shared {
                spec,
                model_id,
                provider,
                cfg: cfg.clone(),
                tokenizer,
                counter,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                stop,
                counters,
            }),
        })
    }

    pub fn spec(&self) -> &EmbedSpec {
        &self.shared.spec
    }

    /// Served name: the directory name (`all-minilm-l6-v2`).
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// Directory name and the first 12 hex digits of the ONNX file's sha256
    /// (`all-minilm-l6-v2@8199be6f699a`).
    pub fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    pub fn dim(&self) -> usize {
        self.shared.spec.dim
    }

    /// Longest input in tokens, `[CLS]`/`[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.shared.spec.max_tokens
    }

    pub fn provider(&self) -> Provider {
        self.shared.provider
    }

    pub fn config(&self) -> &EmbedderConfig {
        &self.shared.cfg
    }

    /// Tokens of `text` without special tokens (0 if the tokenizer fails on it).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.shared
            .counter
            .encode_fast(text, false)
            .map_or(0, |e| e.len())
    }

    pub fn stats(&self) -> EmbedStats {
        let c = &self.shared.counters;
        EmbedStats {
            queued: c.queued.load(Ordering::Relaxed),
            inputs: c.inputs.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }

    /// Embed `texts` (truncating long ones), waiting for the worker. One unit vector per
    /// input, in order. Blocks: call it from a plain thread or `spawn_blocking`.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_with(texts, &EmbedRequest::default())
            .map(|e| e.vectors)
    }

    /// Embed `texts` with explicit options; also reports the tokens read. Blocks.
    pub fn embed_with<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        req: &EmbedRequest,
    ) -> Result<Embeddings, EmbedError> {
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Vec::new(),
                tokens: 0,
            });
        }
        let rows = self.tokenize(texts, req.overflow)?;
        let tokens = rows.iter().map(|r| r.ids.len()).sum();
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job {
            rows,
            cancel: req.cancel.clone(),
            reply,
        };
        self.send(job, req.wait)?;
        let vectors = result.recv().map_err(|_| EmbedError::ShutDown)??;
        Ok(Embeddings { vectors, tokens })
    }

    fn tokenize<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        overflow: Overflow,
    ) -> Result<Vec<Tokens>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.as_ref().is_empty()) {
            return Err(EmbedError::EmptyInput { index });
        }
        let sh = &self.shared;
        let max = sh.spec.max_tokens;
        let tok = match overflow {
            Overflow::Truncate => &sh.tokenizer,
            Overflow::Reject => &sh.counter,
        };
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = tok
            .encode_batch_fast(inputs, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                if e.len() > max {
                    return Err(EmbedError::TooLong {
                        index,
                        tokens: e.len(),
                        max,
                    });
                }
                Ok(Tokens {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    fn send(&self, job: Job, wait: bool) -> Result<(), EmbedError> {
        let sh = &self.shared;
        let tx = lock(&sh.tx).clone().ok_or(EmbedError::ShutDown)?;
        let queued = sh.counters.queued.fetch_add(1, Ordering::SeqCst);
        let sent = if wait {
            tx.send(job).map_err(|_| EmbedError::ShutDown)
        } else if queued >= sh.cfg.max_queue {
            Err(EmbedError::QueueFull(queued))
        } else {
            tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => EmbedError::QueueFull(queued),
                TrySendError::Disconnected(_) => EmbedError::ShutDown,
            })
        };
        if sent.is_err() {
            sh.counters.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Stop the worker: the batch running finishes, every input not yet embedded fails with
    /// [`EmbedError::ShutDown`], and so do later calls. Returns when the thread has exited
    /// (at most one batch later). Dropping the last clone does the same.
    pub fn shutdown(&self) {
        self.shared.stop();
    }
}

impl Shared {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the last sender ends the worker's `recv` once the queue is drained.
        drop(lock(&self.tx).take());
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("embedding thread panicked");
            }
        }
    }
}

impl Drop for Shared {
    /// Join the worker, so its ONNX Runtime session is released before the process exits
    /// (the worker holds no reference to `Shared`, so this cannot wait on itself).
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    model: Model,
    rx: Receiver<Job>,
    batch_size: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut rows = first.rows.len();
            let mut jobs = vec![first];
            // Requests that arrived together share batches.
            while rows < self.batch_size {
                match self.rx.try_recv() {
                    Ok(j) => {
                        rows += j.rows.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            self.counters.queued.fetch_sub(jobs.len(), Ordering::SeqCst);
            self.process(jobs);
        }
    }

    /// Embed every row of `jobs`, sorted by length, `batch_size` rows per call; reply to
    /// each job.
    fn process(&mut self, jobs: Vec<Job>) {
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.rows.len()).map(move |r| (j, r)))
            .collect();
        order.sort_by_key(|&(j, r)| jobs[j].rows[r].ids.len());
        let mut results: Vec<Result<Vec<Vec<f32>>, EmbedError>> = jobs
            .iter()
            .map(|j| Ok(vec![Vec::new(); j.rows.len()]))
            .collect();
        for batch in order.chunks(self.batch_size) {
            if self.stop.load(Ordering::Relaxed) {
                for r in results.iter_mut() {
                    *r = Err(EmbedError::ShutDown);
                }
                break;
            }
            let live: Vec<(usize, usize)> = batch
                .iter()
                .copied()
                .filter(|&(j, _)| results[j].is_ok() && !jobs[j].cancelled())
                .collect();
            if live.is_empty() {
                continue;
            }
            let rows: Vec<&Tokens> = live.iter().map(|&(j, r)| &jobs[j].rows[r]).collect();
            match self.model.run(&rows) {
                Ok(vectors) => {
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .inputs
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    let tokens: usize = rows.iter().map(|t| t.ids.len()).sum();
                    self.counters
                        .tokens
                        .fetch_add(tokens as u64, Ordering::Relaxed);
                    for (&(j, r), v) in live.iter().zip(vectors) {
                        if let Ok(out) = &mut results[j] {
                            out[r] = v;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "embedding batch failed");
                    let msg = e.to_string();
                    for &(j, _) in &live {
                        results[j] = Err(EmbedError::Run(msg.clone()));
                    }
                }
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let result = if job.cancelled() && result.is_ok() {
                Err(EmbedError::Cancelled)
            } else {
                result
            };
            // The caller may be gone (cancelled); nothing to do then.
            let _ = job.reply.try_send(result);
        }
    }
}

impl Embed for Embedder {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Embedder::embed(self, texts).map_err(|e| e.to_string())
    }

    fn dim(&self) -> usize {
        Embedder::dim(self)
    }

    fn count_tokens(&self, text: &str) -> usize {
        Embedder::count_tokens(self, text)
    }

    fn max_tokens(&self) -> usize {
        Embedder::max_tokens(self)
    }

    fn covers(&self, script: Script) -> bool {
        match script {
            Script::Latin => true,
            Script::Cjk | Script::Other => self.shared.spec.multilingual,
        }
    }

    fn model_id(&self) -> String {
        Embedder::model_id(self).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn mean_pooling_ignores_padding() {
        // Two rows, seq 3, dim 2; row 1 has one valid token, then padding full of junk.
        let hidden = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // row 0: three tokens
            7.0, 8.0, 100.0, 100.0, -50.0, 9.0, // row 1: one token + padding
        ];
        let out = pool(&hidden, 3, 2, &[3, 1], Pooling::Mean);
        assert!(close(&out[0], &[3.0, 4.0]), "{:?}", out[0]);
        assert!(close(&out[1], &[7.0, 8.0]), "{:?}", out[1]);
    }

    #[test]
    fn cls_and_max_pooling() {
        let hidden = [1.0, -2.0, 3.0, -4.0, 99.0, 99.0];
        assert!(close(
            &pool(&hidden, 3, 2, &[2], Pooling::Cls)[0],
            &[1.0, -2.0]
        ));
        // The padded third token (99) must not win the max.
        assert!(close(
            &pool(&hidden, 3, 2, &[2], Pooling::Max)[0],
            &[3.0, -2.0]
        ));
    }

    #[test]
    fn empty_row_pools_to_zero() {
        let hidden = [5.0, 5.0];
        for mode in [Pooling::Mean, Pooling::Cls, Pooling::Max] {
            assert_eq!(pool(&hidden, 1, 2, &[0], mode)[0], vec![0.0, 0.0]);
        }
    }

    #[test]
    fn normalisation() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!(close(&v, &[0.6, 0.8]));
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn pooling_config() {
        let f = Path::new("/m/1_Pooling/config.json");
        let p = |v: Json| pooling_from_config(&v, f);
        assert_eq!(
            p(json!({"pooling_mode_mean_tokens": true})).unwrap(),
            Pooling::Mean
        );
        assert_eq!(
            p(json!({"pooling_mode_cls_token": true})).unwrap(),
            Pooling::Cls
        );
        assert_eq!(
            p(json!({"pooling_mode_max_tokens": true})).unwrap(),
            Pooling::Max
        );
        assert_eq!(p(json!({})).unwrap(), Pooling::Mean);
        let e = p(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/m/1_Pooling/config.json") && e.contains("more than one"),
            "{e}"
        );
        let e = p(json!({"pooling_mode_lasttoken": true}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pooling_mode_lasttoken"), "{e}");
    }

    /// A model directory with the given files (path, content).
    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const CONFIG: &str = r#"{"hidden_size": 384, "max_position_embeddings": 512, "_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}"#;

    #[test]
    fn spec_reads_limits_and_pooling() {
        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            ("sentence_bert_config.json", r#"{"max_seq_length": 256}"#),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}"#,
            ),
        ]);
        let s = EmbedSpec::read(d.path()).unwrap();
        assert_eq!((s.dim, s.max_tokens, s.pooling), (384, 256, Pooling::Cls));
        assert!(s.onnx.ends_with("model.onnx"));
        assert!(!s.multilingual);
        // Without sentence_bert_config.json the position count is the limit.
        let d = dir_with(&[
            ("onnx/model_quantized.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
        ]);
        let s = EmbedSpec::read(d.path()).unwrap();
        assert_eq!((s.max_tokens, s.pooling), (512, Pooling::Mean));
        assert!(s.onnx.ends_with("onnx/model_quantized.onnx"));
    }

    #[test]
    fn spec_errors_name_the_file() {
        let d = dir_with(&[("tokenizer.json", "{}"), ("config.json", CONFIG)]);
        let e = EmbedSpec::read(d.path()).unwrap_err();
        assert!(
            matches!(&e, EmbedError::Missing { file } if file.ends_with("model.onnx")),
            "{e}"
        );

        let d = dir_with(&[("model.onnx", ""), ("config.json", CONFIG)]);
        let e = EmbedSpec::read(d.path()).unwrap_err();
        assert!(
            matches!(&e, EmbedError::Missing { file } if file.ends_with("tokenizer.json")),
            "{e}"
        );

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", "{"),
        ]);
        let e = EmbedSpec::read(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("invalid JSON"),
            "{e}"
        );

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            ("sentence_bert_config.json", r#"{"max_seq_length": 1024}"#),
        ]);
        let e = EmbedSpec::read(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("sentence_bert_config.json") && e.contains("1024"),
            "{e}"
        );

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 768}"#,
            ),
        ]);
        let e = EmbedSpec::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("1_Pooling") && e.contains("768"), "{e}");

        let e = EmbedSpec::read(Path::new("/nonexistent/embed")).unwrap_err();
        assert!(matches!(e, EmbedError::NoDir(_)));
    }

    #[test]
    fn language_rule() {
        assert!(!is_multilingual_name("all-minilm-l6-v2"));
        assert!(!is_multilingual_name(
            "sentence-transformers/all-MiniLM-L6-v2"
        ));
        assert!(is_multilingual_name(
            "paraphrase-multilingual-MiniLM-L12-v2"
        ));
        assert!(is_multilingual_name("BAAI/bge-m3"));
        assert!(is_multilingual_name("bge-small-zh-v1.5"));
        assert!(is_multilingual_name("LaBSE"));
        // The name in config.json counts too.
        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            (
                "config.json",
                r#"{"hidden_size": 8, "max_position_embeddings": 16, "_name_or_path": "intfloat/multilingual-e5-small"}"#,
            ),
        ]);
        assert!(EmbedSpec::read(d.path()).unwrap().multilingual);
    }

    #[test]
    fn locate_search_order() {
        let root = tempfile::tempdir().unwrap();
        let cands: Vec<PathBuf> = ["a", "b", "c"]
            .iter()
            .map(|n| root.path().join(n))
            .collect();
        let e = locate_in(None, &cands).unwrap_err().to_string();
        for c in &cands {
            assert!(e.contains(&c.display().to_string()), "{e}");
        }
        std::fs::create_dir_all(&cands[2]).unwrap();
        assert_eq!(locate_in(None, &cands).unwrap(), cands[2]);
        std::fs::create_dir_all(&cands[1]).unwrap();
        assert_eq!(locate_in(None, &cands).unwrap(), cands[1]);
        // A configured directory must exist; it is never replaced by a default.
        let e = locate_in(Some(Path::new("/nonexistent/m")), &cands).unwrap_err();
        assert!(matches!(e, EmbedError::NoDir(_)));
        let state = Path::new("/srv/es");
        assert_eq!(
            default_model_dirs(state),
            vec![
                state.join("models").join(DEFAULT_MODEL),
                Path::new(SYSTEM_MODELS_DIR).join(DEFAULT_MODEL),
                Path::new(DEV_MODELS_DIR).join(DEFAULT_MODEL),
            ]
        );
    }

    #[test]
    fn embedding_dirs_are_recognised() {
        let d = dir_with(&[("sentence_bert_config.json", "{}")]);
        assert!(is_embedding_model_dir(d.path()));
        let d = dir_with(&[("genai_config.json", "{}")]);
        assert!(!is_embedding_model_dir(d.path()));
    }
}
