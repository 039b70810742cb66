//! Argument parsing and dispatch. Business logic lives in the modules; this file only turns
//! flags into requests and results into output. Every failure is one line on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Config;
use crate::engine::generate::Prompt;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::{Engine, GenerateRequest, Provider, ProviderPolicy, StreamEvent};

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
    init_logging();
    let result = match &cli.command {
        Command::Generate(args) => generate(&cli.common, args),
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EDGESEEK_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,edgeseek=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn sampling_from(args: &GenerateArgs) -> Result<SamplingParams, Failure> {
    let mut p = if args.greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams::r1_defaults()
    };
    if let Some(t) = args.temperature {
        p.temperature = t;
    }
    if let Some(v) = args.top_p {
        p.top_p = v;
    }
    if let Some(v) = args.top_k {
        p.top_k = v;
    }
    if let Some(v) = args.min_p {
        p.min_p = v;
    }
    if let Some(v) = args.repetition_penalty {
        p.repetition_penalty = v;
    }
    if let Some(v) = args.presence_penalty {
        p.presence_penalty = v;
    }
    if let Some(v) = args.frequency_penalty {
        p.frequency_penalty = v;
    }
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
struct JsonResult<'a> {
    token_ids: &'a [u32],
    text: &'a str,
    reasoning: Option<&'a str>,
    finish_reason: crate::engine::FinishReason,
    provider: Provider,
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn generate(common: &Common, args: &GenerateArgs) -> Result<(), Failure> {
    let config = Config::load(common.config.as_deref(), common.dev).map_err(Failure::usage)?;
    let state_dir = config.state_dir(common.state_dir.as_deref(), common.dev);
    let mut opts = config.provider_options(&state_dir);
    if let Some(p) = &args.providers {
        if p.is_empty() {
            return Err(Failure::usage("--providers: name at least one provider"));
        }
        opts.providers = p.clone();
    }
    if let Some(p) = args.provider_policy {
        opts.policy = p;
    }
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
    };
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
            }
        }
        true
    };
    let out = engine.generate(&req, &mut on_event).map_err(|e| match e {
        crate::engine::GenerateError::Run(_) => Failure::runtime(e),
        other => Failure::usage(other),
    })?;
    if json {
        let j = JsonResult {
            token_ids: &out.token_ids,
            text: &out.text,
            reasoning: out.reasoning.as_deref(),
            finish_reason: out.finish_reason,
            provider: engine.provider(),
            prompt_tokens: out.prompt_tokens,
            completion_tokens: out.completion_tokens,
        };
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
