//! The inference engine: ONNX Runtime session, tokenizer, chat template, sampler and the
//! generation loop. See `generate.rs` for how one request becomes tokens and text.

pub mod detok;
pub mod embed;
pub mod generate;
pub mod grammar;
pub mod model;
pub mod onnx;
pub mod ort_env;
pub mod prefix;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod template;
pub mod toolcall;

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

pub use embed::{EmbedError, Embedder, EmbedderConfig};
pub use generate::{
    FinishReason, GenerateError, GenerateOutput, GenerateRequest, Prompt, StreamEvent, TokenLogprob,
};
pub use model::{Layout, ModelError, ModelSpec};
pub use ort_env::{OrtError, Provider, ProviderOptions, ProviderPolicy};
pub use scheduler::{
    Event, RequestHandle, Scheduler, SchedulerConfig, SchedulerError, SchedulerStats,
};

use runner::Runner;
use template::ChatTemplate;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Ort(#[from] OrtError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Template(String),
}

/// A loaded chat model: everything needed to turn messages into text.
pub struct Engine {
    pub runner: Runner,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

impl Engine {
    /// A grammar compiler for this model (constrained decoding).
    pub fn grammars(&self) -> grammar::Grammars {
        let spec = &self.runner.spec;
        grammar::Grammars::new(self.tokenizer.clone(), spec.vocab_size, &spec.eos_ids)
    }

    /// Load the model in `dir`; `library` is the configured ONNX Runtime path, if any.
    pub fn load(
        dir: &Path,
        library: Option<&Path>,
        opts: &ProviderOptions,
    ) -> Result<Engine, LoadError> {
        // Read and check the cheap parts first so a broken directory fails before
        // ONNX Runtime spends seconds on the graph.
        let mut spec = ModelSpec::read(dir)?;
        let template = ChatTemplate::load(dir).map_err(|e| LoadError::Template(e.to_string()))?;
        let rt = ort_env::runtime(library)?;
        let (session, provider) = rt.load_session(&spec.onnx, opts)?;
        spec.bind_graph(&session)?;
        let tokenizer = model::load_tokenizer(&spec)?;
        Ok(Engine {
            runner: Runner::new(session, spec, provider),
            tokenizer,
            template,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.runner.spec
    }

    pub fn provider(&self) -> Provider {
        self.runner.provider
    }
}
