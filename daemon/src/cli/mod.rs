//! Argument parsing and dispatch. Business logic lives in the modules; this file only turns
//! flags into requests and results into output. Every failure is one line on stderr.
//!
//! Parts: this file holds the command table, the shared flags, the admin, serve and doctor
//! commands; `generate` the model commands run without a daemon (`generate`, `bench`);
//! `embed` the embedding command.

mod embed;
mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::engine::{Provider, ProviderOptions, ProviderPolicy};

/// Exit code for bad input, configuration or environment (nothing was generated).
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while generating.
const EXIT_FAILURE: u8 = 1;

use embed::{embed, EmbedArgs};
use generate::{bench, generate, BenchCliArgs, GenerateArgs};

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

impl Common {
    fn paths(&self) -> crate::config::Paths {
        crate::config::Paths {
            config: self.config.clone(),
            dev: self.dev,
            state_dir: self.state_dir.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a chat answer with a model directory (no daemon needed)
    Generate(GenerateArgs),
    /// Measure decode speed, time to first token and batched throughput (one JSON object)
    Bench(BenchCliArgs),
    /// Show the running daemon's state (models, provider, queue, throughput, uptime, TLS)
    Status(crate::admin::cli::StatusArgs),
    /// Manage API keys (through the daemon, or the database directly when none runs)
    Keys(crate::admin::cli::KeysArgs),
    /// Chat models of the running daemon: list, load, unload, pin (several serve at once)
    Models(crate::admin::cli::ModelsArgs),
    /// The TLS certificate: show it, rotate it (local CA), or import one
    Tls(crate::admin::cli::TlsArgs),
    /// The knowledge base: ingest documents, list, create and delete collections (through the
    /// running daemon)
    Kb(crate::admin::kb_cli::KbArgs),
    /// Agents: assistants built from instructions, tools and knowledge collections (through the
    /// running daemon, or on the database when none runs)
    Agents(crate::admin::agents_cli::AgentsArgs),
    /// The audit log: who called what, when, with what result (read from the state
    /// directory; `audit verify` checks its hash chain)
    Audit(crate::admin::audit_cli::AuditArgs),
    /// Requests and tokens per usage group and key, with quotas (through the running
    /// daemon, or on the database when none runs)
    Usage(crate::admin::usage_cli::UsageArgs),
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
        Command::Agents(args) => admin(&cli.common, |t| crate::admin::agents_cli::agents(t, args)),
        Command::Audit(args) => admin(&cli.common, |t| crate::admin::audit_cli::audit(t, args)),
        Command::Usage(args) => admin(&cli.common, |t| crate::admin::usage_cli::usage(t, args)),
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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{filter, EnvFilter, Layer};
    let env = EnvFilter::try_from_env("EDGESEEK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd stderr is a journal stream (JOURNAL_STREAM is set): audit records then go
    // to journald natively, each field its own journal field (AUDIT_KIND, AUDIT_KEY_ID, …), so
    // `journalctl -u edgeseek AUDIT_KIND=auth_failure` selects them; they are left out of the
    // stderr lines so the journal holds each once. Anywhere else (a terminal, --dev, a journal
    // that cannot be reached) they stay key=value lines on stderr.
    let journal = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| {
            l.with_field_prefix(Some("AUDIT".into()))
                .with_syslog_identifier("edgeseek".into())
        });
    let audit_in_journal = journal.is_some();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // On a full disk (stderr redirected to a file there) a log line cannot be written;
        // reporting that with eprintln! would panic the logging thread mid-transaction.
        // Lost log lines are the lesser harm.
        .log_internal_errors(false)
        .with_filter(filter::filter_fn(move |m| {
            !(audit_in_journal && m.target() == crate::audit::LOG_TARGET)
        }));
    let journal = journal.map(|j| {
        j.with_filter(filter::filter_fn(|m| {
            m.target() == crate::audit::LOG_TARGET
        }))
    });
    let _ = tracing_subscriber::registry()
        .with(env)
        .with(stderr)
        .with(journal)
        .try_init();
}

fn serve(common: &Common, args: &ServeArgs) -> Result<(), Failure> {
    let opts = crate::serve::ServeOptions {
        paths: common.paths(),
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
        paths: common.paths(),
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
    let mut target = crate::admin::cli::target(common.dev, &state_dir, &config.tls);
    target.group_quotas = config.usage.groups.clone();
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
