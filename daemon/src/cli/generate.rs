//! `edgeseek generate` and `edgeseek bench`: a chat model directory driven straight from
//! the command line (no daemon), one answer or a JSON batch, and the decode benchmark.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::engine::generate::Prompt;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::{
    Engine, GenerateError, GenerateOutput, GenerateRequest, Provider, ProviderPolicy, Scheduler,
    SchedulerError, StreamEvent,
};

use super::{load_config, Common, Failure};

#[derive(Args, Debug)]
pub(super) struct BenchCliArgs {
    /// Model directory
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// CPU kernel threads (overrides engine.intra_threads)
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Tokens generated per stream
    #[arg(long, value_name = "N", default_value_t = 64)]
    decode_tokens: usize,
    /// Prompt length for the time-to-first-token runs
    #[arg(long, value_name = "N", default_value_t = 512)]
    prompt_len: usize,
    /// Concurrent stream counts for the aggregate throughput
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "1,2,4,8,16"
    )]
    streams: Vec<usize>,
    /// Seed of the random prompt ids
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Execution providers in order, e.g. `cuda,cpu` (overrides engine.providers)
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    providers: Option<Vec<Provider>>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "messages"])))]
pub(super) struct GenerateArgs {
    /// Model directory (onnxruntime-genai or onnx-community layout)
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// One user message
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// JSON file with an array of {"role", "content"} messages
    #[arg(long, value_name = "FILE.json")]
    messages: Option<PathBuf>,
    /// Maximum tokens to generate [default: up to the end of the context]
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Greedy decoding (argmax); conflicts with the sampling flags
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "min_p", "seed"])]
    greedy: bool,
    /// Sampling temperature [default: 0.6, DeepSeek-R1's recommendation]
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    /// Nucleus sampling mass [default: 0.95]
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    /// Keep only the K most likely tokens (0 = off)
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Drop tokens below this fraction of the top token's probability
    #[arg(long, value_name = "P")]
    min_p: Option<f32>,
    /// Random seed: the same seed and request give the same output
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Repetition penalty over prompt and output (1.0 = off)
    #[arg(long, value_name = "X")]
    repetition_penalty: Option<f32>,
    /// OpenAI presence penalty (-2..2)
    #[arg(long, value_name = "X")]
    presence_penalty: Option<f32>,
    /// OpenAI frequency penalty (-2..2)
    #[arg(long, value_name = "X")]
    frequency_penalty: Option<f32>,
    /// Bias a token: ID=BIAS (repeatable; BIAS in -100..100)
    #[arg(long, value_name = "ID=BIAS")]
    logit_bias: Vec<String>,
    /// Stop string (repeatable); not included in the output
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Force `</think>` after this many reasoning tokens
    #[arg(long, value_name = "N")]
    max_reasoning_tokens: Option<usize>,
    /// Constrain the answer to JSON valid under the JSON schema in FILE (after the
    /// reasoning of R1 models), as `response_format: json_schema` does on the API
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// Print text as it is generated (reasoning goes to stderr)
    #[arg(long)]
    stream: bool,
    /// Run N copies of the request at once through the batching scheduler (seeds S+i), as
    /// the server runs requests (N = 1: one); with --json prints {"results": [...],
    /// "provider", "wall_s", "aggregate_tok_s"}. Without it: one request on this thread
    #[arg(long, value_name = "N", conflicts_with = "stream",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: Option<u16>,
    /// Print exactly one JSON object with ids, text, reasoning, provider and counts
    #[arg(long)]
    json: bool,
    /// Execution providers in order, e.g. `cuda,cpu` (overrides engine.providers)
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    providers: Option<Vec<Provider>>,
    /// `fallback` or `strict` (overrides engine.provider_policy)
    #[arg(long, value_name = "POLICY")]
    provider_policy: Option<ProviderPolicy>,
}

/// `*dst = v` when the flag was given.
fn set_if<T>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

fn sampling_from(args: &GenerateArgs) -> Result<SamplingParams, Failure> {
    let mut p = if args.greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams::r1_defaults()
    };
    set_if(&mut p.temperature, args.temperature);
    set_if(&mut p.top_p, args.top_p);
    set_if(&mut p.top_k, args.top_k);
    set_if(&mut p.min_p, args.min_p);
    set_if(&mut p.repetition_penalty, args.repetition_penalty);
    set_if(&mut p.presence_penalty, args.presence_penalty);
    set_if(&mut p.frequency_penalty, args.frequency_penalty);
    p.seed = args.seed;
    for b in &args.logit_bias {
        let (id, bias) = b
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--logit-bias `{b}`: expected ID=BIAS")))?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| Failure::usage(format!("--logit-bias `{b}`: bad token id")))?;
        let bias: f32 = bias
            .trim()
            .parse()
            .map_err(|_| Failure::usage(format!("--logit-bias `{b}`: bad bias")))?;
        p.logit_bias.push((id, bias));
    }
    Ok(p)
}

fn read_messages(file: &Path) -> Result<Vec<ChatMessage>, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    let msgs: Vec<ChatMessage> = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "{}: expected a JSON array of {{\"role\", \"content\"}} objects: {e}",
            file.display()
        ))
    })?;
    if msgs.is_empty() {
        return Err(Failure::usage(format!("{}: no messages", file.display())));
    }
    for (i, m) in msgs.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(Failure::usage(format!(
                "{}: message {i}: unknown role `{}`",
                file.display(),
                m.role
            )));
        }
    }
    Ok(msgs)
}

#[derive(Serialize)]
struct JsonBatch<'a> {
    results: Vec<JsonResult<'a>>,
    provider: Provider,
    wall_s: f64,
    aggregate_tok_s: f64,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    token_ids: &'a [u32],
    text: &'a str,
    reasoning: Option<&'a str>,
    finish_reason: crate::engine::FinishReason,
    provider: Provider,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// With --json-schema: mask time (microseconds) and count.
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<crate::engine::grammar::MaskStats>,
}

pub(super) fn generate(common: &Common, args: &GenerateArgs) -> Result<(), Failure> {
    let (config, opts) = load_config(common, args.providers.as_ref(), args.provider_policy)?;
    let messages = match (&args.prompt, &args.messages) {
        (Some(p), _) => vec![ChatMessage {
            role: "user".into(),
            content: Some(p.clone()),
            extra: Default::default(),
        }],
        (None, Some(f)) => read_messages(f)?,
        (None, None) => return Err(Failure::usage("one of --prompt or --messages is required")),
    };
    let sampling = sampling_from(args)?;

    // The schema file is checked before the model loads (seconds), compiled after (it needs
    // the model's tokenizer).
    let schema_error =
        |file: &Path, e: String| Failure::usage(format!("--json-schema {}: {e}", file.display()));
    let schema = match &args.json_schema {
        Some(file) => Some((
            file,
            std::fs::read_to_string(file)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                .map_err(|e| schema_error(file, e))?,
        )),
        None => None,
    };
    let mut engine = Engine::load(&args.model, config.runtime.library.as_deref(), &opts)
        .map_err(Failure::usage)?;
    let constraint = match schema {
        Some((file, schema)) => {
            let grammar = crate::engine::grammar::Grammar::JsonSchema(schema);
            let compiled = engine.grammars().compile(&grammar);
            Some(compiled.map_err(|e| schema_error(file, e.to_string()))?)
        }
        None => None,
    };
    let req = GenerateRequest {
        prompt: Prompt::Messages(messages),
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        max_reasoning_tokens: args.max_reasoning_tokens,
        min_tokens: 0,
        logprobs: None,
        tools: None,
        constraint,
    };
    if let Some(n) = args.concurrency {
        return generate_concurrent(&config, engine, req, usize::from(n), args.json);
    }
    let stream = args.stream;
    let json = args.json;
    let mut on_event = |ev: StreamEvent<'_>| -> bool {
        if stream {
            // With --json, stdout is reserved for the one JSON object.
            match ev {
                StreamEvent::Reasoning(t) => {
                    let _ = write!(std::io::stderr(), "{t}");
                }
                StreamEvent::Content(t) if json => {
                    let _ = write!(std::io::stderr(), "{t}");
                }
                StreamEvent::Content(t) => {
                    let mut out = std::io::stdout();
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                }
                StreamEvent::Logprob(_) => {}
            }
        }
        true
    };
    let out = engine.generate(&req, &mut on_event).map_err(|e| match e {
        crate::engine::GenerateError::Run(_) => Failure::runtime(e),
        other => Failure::usage(other),
    })?;
    if json {
        let j = json_result(&out, engine.provider());
        let s = serde_json::to_string(&j).map_err(Failure::runtime)?;
        println!("{s}");
    } else if stream {
        println!();
    } else {
        if let Some(r) = out.reasoning.as_deref().filter(|r| !r.is_empty()) {
            eprintln!("[reasoning]\n{r}\n[/reasoning]");
        }
        println!("{}", out.text);
    }
    Ok(())
}

fn json_result(out: &GenerateOutput, provider: Provider) -> JsonResult<'_> {
    JsonResult {
        token_ids: &out.token_ids,
        text: &out.text,
        reasoning: out.reasoning.as_deref(),
        finish_reason: out.finish_reason,
        provider,
        prompt_tokens: out.prompt_tokens,
        completion_tokens: out.completion_tokens,
        mask: out.mask,
    }
}

/// `generate --concurrency N`: N copies of the request through the batching scheduler,
/// submitted at once; sampled requests get seeds `seed + i`.
fn generate_concurrent(
    config: &Config,
    engine: Engine,
    req: GenerateRequest,
    n: usize,
    json: bool,
) -> Result<(), Failure> {
    let mut cfg = config.scheduler_config();
    // Every copy must be accepted; how many decode together is still engine.max_batch.
    cfg.max_queue = cfg.max_queue.max(n);
    let sched = Scheduler::start(engine, cfg).map_err(Failure::usage)?;
    let provider = sched.provider();
    let t = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = req.clone();
        r.sampling.seed = req.sampling.seed.map(|s| s.wrapping_add(i as u64));
        handles.push(sched.submit(r).map_err(|e| match e {
            SchedulerError::Invalid(GenerateError::Run(_)) => Failure::runtime(e),
            other => Failure::usage(other),
        })?);
    }
    let outs = handles
        .into_iter()
        .map(|h| h.wait().map_err(Failure::runtime))
        .collect::<Result<Vec<_>, _>>()?;
    let wall = t.elapsed().as_secs_f64();
    sched.shutdown();
    let tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
    if json {
        let j = JsonBatch {
            results: outs.iter().map(|o| json_result(o, provider)).collect(),
            provider,
            wall_s: wall,
            aggregate_tok_s: tokens as f64 / wall.max(1e-9),
        };
        let s = serde_json::to_string(&j).map_err(Failure::runtime)?;
        println!("{s}");
    } else {
        for (i, out) in outs.iter().enumerate() {
            println!("--- {i} ---");
            if let Some(r) = out.reasoning.as_deref().filter(|r| !r.is_empty()) {
                eprintln!("[{i} reasoning]\n{r}\n[/reasoning]");
            }
            println!("{}", out.text);
        }
    }
    Ok(())
}

pub(super) fn bench(common: &Common, args: &BenchCliArgs) -> Result<(), Failure> {
    let (config, mut opts) = load_config(common, args.providers.as_ref(), None)?;
    if let Some(t) = args.threads {
        opts.intra_threads = t;
    }
    if args.streams.contains(&0) {
        return Err(Failure::usage("--streams: counts must be at least 1"));
    }
    let t = Instant::now();
    let engine = Engine::load(&args.model, config.runtime.library.as_deref(), &opts)
        .map_err(Failure::usage)?;
    let load_s = t.elapsed().as_secs_f64();
    let most = args.streams.iter().copied().max().unwrap_or(1);
    let mut cfg = config.scheduler_config();
    // The bench measures batching, not admission: every stream count runs as one batch.
    cfg.max_batch = cfg.max_batch.max(most);
    cfg.max_queue = cfg.max_queue.max(most);
    let per_token = engine.runner.kv_bytes_per_token() as u64;
    let longest = args.prompt_len.max(16 + args.decode_tokens) as u64 + 1;
    cfg.kv_budget_bytes = cfg.kv_budget_bytes.max(per_token * longest * most as u64);
    let sched = Scheduler::start(engine, cfg).map_err(Failure::usage)?;
    let provider = sched.provider();
    let report = crate::bench::run(
        &sched,
        &crate::bench::BenchArgs {
            decode_tokens: args.decode_tokens,
            prompt_len: args.prompt_len,
            streams: args.streams.clone(),
            seed: args.seed,
        },
    )
    .map_err(|e| match e {
        crate::bench::BenchError::Args => Failure::usage(e),
        other => Failure::runtime(other),
    })?;
    sched.shutdown();
    let mut v = serde_json::to_value(&report).map_err(Failure::runtime)?;
    if let Some(obj) = v.as_object_mut() {
        if let Some(ttft) = obj.remove("ttft_s") {
            obj.insert(format!("ttft_s_{}", report.prompt_len), ttft);
        }
        let model = args
            .model
            .canonicalize()
            .unwrap_or_else(|_| args.model.clone());
        obj.insert("model".into(), model.display().to_string().into());
        obj.insert("threads".into(), opts.intra_threads.into());
        obj.insert("provider".into(), provider.as_str().into());
        obj.insert("load_s".into(), ((load_s * 100.0).round() / 100.0).into());
        obj.insert(
            "notes".into(),
            "edgeseek scheduler (continuous batching, one batched ORT call per step); prompts \
             are random ids, greedy, min_tokens = decode_tokens. Decode-only rates by difference: \
             (run of N tokens - run of 1 token, same prompts) over N-1 tokens per stream; \
             *_incl_prefill = S*N / wall of the N-token run. TTFT = submit of a prompt_len-token \
             prompt to its 1-token result, median of 3."
                .into(),
        );
    }
    println!("{v}");
    Ok(())
}
