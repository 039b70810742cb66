//! Argument parsing and dispatch. Business logic lives in the modules; this file only turns
//! flags into requests and results into output. Every failure is one line on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Config;
use crate::engine::generate::Prompt;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::{
    Engine, GenerateError, GenerateOutput, GenerateRequest, Provider, ProviderOptions,
    ProviderPolicy, Scheduler, SchedulerError, StreamEvent,
};

/// Exit code for bad input, configuration or environment (nothing was generated).
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while generating.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "edgeseek",
    version,
    about = "Edge LLM appliance: DeepSeek-R1-Distill models on ONNX Runtime"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Configuration file [default: /etc/edgeseek/edgeseek.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Development mode: state under ./.edgeseek (or --state-dir), no root needed
    #[arg(long, global = true)]
    dev: bool,
    /// State directory (overrides the config)
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a chat answer with a model directory (no daemon needed)
    Generate(GenerateArgs),
    /// Measure decode speed, time to first token and batched throughput (one JSON object)
    Bench(BenchCliArgs),
    /// Show the running daemon's state (model, provider, queue, throughput, uptime, TLS)
    Status(crate::admin::cli::StatusArgs),
    /// Manage API keys (through the daemon, or the database directly when none runs)
    Keys(crate::admin::cli::KeysArgs),
    /// Models served by the running daemon
    Models(crate::admin::cli::ModelsArgs),
    /// The TLS certificate: show it, rotate it (local CA), or import one
    Tls(crate::admin::cli::TlsArgs),
    /// The knowledge base: ingest documents, list, create and delete collections (through the
    /// running daemon)
    Kb(crate::admin::kb_cli::KbArgs),
    /// Serve the OpenAI-compatible HTTPS API (and the admin socket)
    Serve(ServeArgs),
    /// Knowledge-base index benchmark (scripts/bench-kb)
    #[command(hide = true)]
    BenchKb(crate::kb::bench::BenchKbArgs),
    /// Internal: parse one document from stdin under resource limits (see kb::parse::worker)
    #[command(hide = true)]
    ParseWorker(crate::kb::parse::worker::WorkerArgs),
    /// Embed texts with the embedding model (one JSON object), or time it with --bench
    Embed(EmbedArgs),
    /// Check the installation: ONNX Runtime, providers, GPU, models, TLS, disk, port, daemon,
    /// unit hardening (one line per check; exit 1 on any FAIL)
    Doctor(DoctorArgs),
}

#[derive(Args, Debug)]
struct EmbedArgs {
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

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Check this model directory instead of those under <state_dir>/models (repeatable)
    #[arg(long = "model", value_name = "DIR")]
    models: Vec<PathBuf>,
    /// Only check that the files a manifest.sha256 lists exist (skip hashing: quicker on big
    /// models)
    #[arg(long)]
    no_hash: bool,
    /// Print one JSON object: {"ok", "checks": [{"name", "status", "detail", "fix"}], "summary"}
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// ADDRESS:PORT to listen on [default: server.listen, else 0.0.0.0:443; --dev: 127.0.0.1:8443].
    /// Port 0 picks a free port (printed as `listening on https://…` and written to
    /// <state_dir>/serve.addr)
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Model directory (repeatable); the first is the default chat model, served under its
    /// directory name [default: the first directory under <state_dir>/models]
    #[arg(long = "model", value_name = "DIR")]
    models: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchCliArgs {
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
struct GenerateArgs {
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
    /// Print text as it is generated (reasoning goes to stderr)
    #[arg(long)]
    stream: bool,
    /// Run N copies of the request at once through the batching scheduler (seeds S+i);
    /// with --json prints {"results": [...], "provider", "wall_s", "aggregate_tok_s"}
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "stream",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
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

impl clap::ValueEnum for Provider {
    fn value_variants<'a>() -> &'a [Self] {
        &[Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

impl clap::ValueEnum for ProviderPolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &[ProviderPolicy::Fallback, ProviderPolicy::Strict]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            ProviderPolicy::Fallback => "fallback",
            ProviderPolicy::Strict => "strict",
        }))
    }
}

/// An error for the user: one line, and the exit code that says whose fault it was.
struct Failure {
    code: u8,
    msg: String,
}

impl Failure {
    fn usage(msg: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_USAGE,
            msg: msg.to_string(),
        }
    }
    fn runtime(msg: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_FAILURE,
            msg: msg.to_string(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The doctor's report is the output; library log lines (ONNX Runtime's own errors while a
    // provider is probed) would only repeat it.
    init_logging(if matches!(cli.command, Command::Doctor(_)) {
        "off"
    } else {
        "warn,edgeseek=info"
    });
    if let Command::ParseWorker(args) = &cli.command {
        return crate::kb::parse::worker::main(args);
    }
    let result = match &cli.command {
        Command::Generate(args) => generate(&cli.common, args),
        Command::Bench(args) => bench(&cli.common, args),
        Command::Status(args) => admin(&cli.common, |t| crate::admin::cli::status(t, args)),
        Command::Keys(args) => admin(&cli.common, |t| crate::admin::cli::keys(t, args)),
        Command::Models(args) => admin(&cli.common, |t| crate::admin::cli::models(t, args)),
        Command::Tls(args) => admin(&cli.common, |t| crate::admin::cli::tls(t, args)),
        Command::Kb(args) => admin(&cli.common, |t| crate::admin::kb_cli::kb(t, args)),
        Command::Serve(args) => serve(&cli.common, args),
        Command::BenchKb(args) => crate::kb::bench::main(args).map_err(Failure::runtime),
        Command::ParseWorker(_) => Ok(()),
        Command::Embed(args) => embed(&cli.common, args),
        Command::Doctor(args) => doctor(&cli.common, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let one_line = f.msg.replace('\n', " ");
            eprintln!("edgeseek: error: {one_line}");
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("EDGESEEK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
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
}

fn serve(common: &Common, args: &ServeArgs) -> Result<(), Failure> {
    let opts = crate::serve::ServeOptions {
        config: common.config.clone(),
        dev: common.dev,
        state_dir: common.state_dir.clone(),
        listen: args.listen.clone(),
        models: args.models.clone(),
    };
    crate::serve::run(&opts).map_err(|e| Failure {
        code: e.exit_code(),
        msg: e.to_string(),
    })
}

/// `edgeseek doctor`: the report on stdout; exit 1 when a check failed (the report says which).
fn doctor(common: &Common, args: &DoctorArgs) -> Result<(), Failure> {
    let report = crate::doctor::run(&crate::doctor::Options {
        config: common.config.clone(),
        dev: common.dev,
        state_dir: common.state_dir.clone(),
        models: args.models.clone(),
        verify_hashes: !args.no_hash,
    });
    match crate::doctor::print(&report, args.json) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::runtime(format!(
            "{} check(s) failed (FAIL lines above)",
            report
                .checks
                .iter()
                .filter(|c| c.status == crate::doctor::Level::Fail)
                .count()
        ))),
        Err(e) => Err(Failure::runtime(e)),
    }
}

/// Admin commands: resolve the daemon's socket and state directory, then run `f`.
fn admin(
    common: &Common,
    f: impl FnOnce(&crate::admin::cli::Target) -> Result<(), crate::admin::cli::AdminCliError>,
) -> Result<(), Failure> {
    let config = Config::load(common.config.as_deref(), common.dev).map_err(Failure::usage)?;
    let state_dir = config.state_dir(common.state_dir.as_deref(), common.dev);
    let target = crate::admin::cli::target(common.dev, &state_dir, &config.tls);
    f(&target).map_err(|e| Failure {
        code: e.exit_code(),
        msg: e.to_string(),
    })
}

/// The config and provider options, with `--providers` / `--provider-policy` applied.
fn load_config(
    common: &Common,
    providers: Option<&Vec<Provider>>,
    policy: Option<ProviderPolicy>,
) -> Result<(Config, ProviderOptions), Failure> {
    let config = Config::load(common.config.as_deref(), common.dev).map_err(Failure::usage)?;
    let state_dir = config.state_dir(common.state_dir.as_deref(), common.dev);
    let mut opts = config.provider_options(&state_dir);
    if let Some(p) = providers {
        if p.is_empty() {
            return Err(Failure::usage("--providers: name at least one provider"));
        }
        opts.providers = p.clone();
    }
    if let Some(p) = policy {
        opts.policy = p;
    }
    Ok((config, opts))
}

fn generate(common: &Common, args: &GenerateArgs) -> Result<(), Failure> {
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

    let mut engine = Engine::load(&args.model, config.runtime.library.as_deref(), &opts)
        .map_err(Failure::usage)?;
    let req = GenerateRequest {
        prompt: Prompt::Messages(messages),
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        max_reasoning_tokens: args.max_reasoning_tokens,
        min_tokens: 0,
        logprobs: None,
        tools: None,
    };
    if args.concurrency > 1 {
        return generate_concurrent(
            &config,
            engine,
            req,
            usize::from(args.concurrency),
            args.json,
        );
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

fn embed(common: &Common, args: &EmbedArgs) -> Result<(), Failure> {
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

fn bench(common: &Common, args: &BenchCliArgs) -> Result<(), Failure> {
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
