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

use std::path::{Path, PathBuf};

use super::onnx::impl_file_error;
use super::ort_env::OrtError;

mod dir;
pub use dir::*;
mod pooling;
pub use pooling::*;
mod model;
use model::*;
mod service;
pub use service::*;

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

impl_file_error!(EmbedError);
