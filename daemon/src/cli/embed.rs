//! `edgeseek embed`: texts through the embedding model, one JSON object out, or timed with
//! `--bench`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::engine::Provider;

use super::{load_config, Common, Failure};

#[derive(Args, Debug)]
pub(super) struct EmbedArgs {
    /// Embedding model directory [default: embeddings.model, else the first of
    /// <state_dir>/models/all-minilm-l6-v2, /usr/lib/edgeseek/models/all-minilm-l6-v2,
    /// ./.runtime/models/all-minilm-l6-v2]
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// JSON file with an array of strings (`-` = stdin) [default: stdin unless --text]
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    input: Option<PathBuf>,
    /// A text to embed (repeatable)
    #[arg(long, value_name = "TEXT")]
    text: Vec<String>,
    /// Inputs per ONNX Runtime call (overrides embeddings.batch_size)
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Intra-op threads (overrides embeddings.threads; 0 = one per core)
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Fail on inputs over the model's token limit instead of truncating them
    #[arg(long)]
    reject_long: bool,
    /// Time N passes over all inputs after one warm-up pass and print embeddings/s
    /// instead of the vectors
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    bench: Option<u32>,
    /// Execution providers in order, e.g. `cuda,cpu` (overrides engine.providers)
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    providers: Option<Vec<Provider>>,
}

fn read_texts(args: &EmbedArgs) -> Result<Vec<String>, Failure> {
    if !args.text.is_empty() {
        return Ok(args.text.clone());
    }
    let (name, text) = match args.input.as_deref() {
        Some(f) if f != Path::new("-") => (
            f.display().to_string(),
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(format!("{}: {e}", f.display())))?,
        ),
        _ => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                .map_err(|e| Failure::usage(format!("stdin: {e}")))?;
            ("stdin".to_string(), t)
        }
    };
    let texts: Vec<String> = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{name}: expected a JSON array of strings: {e}")))?;
    if texts.is_empty() {
        return Err(Failure::usage(format!("{name}: no inputs")));
    }
    Ok(texts)
}

pub(super) fn embed(common: &Common, args: &EmbedArgs) -> Result<(), Failure> {
    use crate::engine::embed::{self, EmbedError, EmbedRequest, Overflow};
    let (config, opts) = load_config(common, args.providers.as_ref(), None)?;
    let state_dir = config.state_dir(common.state_dir.as_deref(), common.dev);
    let dir = embed::locate(
        args.model.as_deref().or(config.embeddings.model.as_deref()),
        &state_dir,
    )
    .map_err(Failure::usage)?;
    let mut cfg = config.embedder_config();
    if let Some(b) = args.batch_size {
        if b == 0 {
            return Err(Failure::usage("--batch-size must be at least 1"));
        }
        cfg.batch_size = b;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    let texts = read_texts(args)?;
    let embedder = embed::Embedder::start(&dir, config.runtime.library.as_deref(), &opts, &cfg)
        .map_err(Failure::usage)?;
    let req = EmbedRequest {
        overflow: if args.reject_long {
            Overflow::Reject
        } else {
            Overflow::Truncate
        },
        ..EmbedRequest::default()
    };
    let fail = |e: EmbedError| match e {
        EmbedError::EmptyInput { .. } | EmbedError::TooLong { .. } => Failure::usage(e),
        other => Failure::runtime(other),
    };
    let first = embedder.embed_with(&texts, &req).map_err(fail)?;
    let mut out = EmbedOutput {
        model: embedder.name(),
        model_id: embedder.model_id(),
        provider: embedder.provider().as_str(),
        dim: embedder.dim(),
        inputs: texts.len(),
        tokens: first.tokens,
        embeddings: None,
        bench: None,
    };
    if let Some(passes) = args.bench {
        // The first call above was the warm-up.
        let mut walls = Vec::with_capacity(passes as usize);
        for _ in 0..passes {
            let t = Instant::now();
            embedder.embed_with(&texts, &req).map_err(fail)?;
            walls.push(t.elapsed().as_secs_f64());
        }
        let mut sorted = walls.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        out.bench = Some(EmbedBench {
            batch_size: cfg.batch_size,
            threads: cfg.threads,
            passes,
            embeddings_per_s: texts.len() as f64 / median.max(1e-9),
            wall_s: walls,
        });
    } else {
        out.embeddings = Some(&first.vectors);
    }
    // serde writes f32 in its shortest exact form (a `Value` would widen it to f64 digits).
    let text = serde_json::to_string(&out).map_err(Failure::runtime)?;
    embedder.shutdown();
    println!("{text}");
    Ok(())
}

#[derive(Serialize)]
struct EmbedOutput<'a> {
    model: &'a str,
    model_id: &'a str,
    provider: &'a str,
    dim: usize,
    inputs: usize,
    tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<&'a [Vec<f32>]>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    bench: Option<EmbedBench>,
}

#[derive(Serialize)]
struct EmbedBench {
    batch_size: usize,
    threads: usize,
    passes: u32,
    wall_s: Vec<f64>,
    embeddings_per_s: f64,
}
