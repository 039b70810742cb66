//! The parser child process.
//!
//! Protocol: the daemon runs `<edgeseek> parse-worker --kind KIND --max-input-bytes N
//! --max-unpacked-bytes N --max-memory-bytes N --cpu-seconds N [--charset C] [--input FILE]`
//! with an empty environment, and either names the document's (spool) file with `--input`
//! or writes the document to its stdin and closes it. The worker sets its
//! resource limits (`RLIMIT_AS`, `RLIMIT_CPU`, no core dumps), parses with
//! [`super::parse_in_process`] and writes one JSON value to stdout:
//! `{"Ok": ParsedDoc}` or `{"Err": ParseError}`, exit status 0. Anything else (a crash, a
//! signal, no answer in time, too much output) is turned into a [`ParseError`] by [`run`].

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ParseError, ParseOptions};
use crate::kb::{DocKind, ParsedDoc};

/// Environment variable the worker reads a test hook from (`panic`, `abort`, `sleep`,
/// `spin`, `alloc`, `spew`): the integration tests use it to check that each failure is
/// contained. It is set only through [`ParseOptions::test_hook`].
pub const TEST_HOOK_ENV: &str = "EDGESEEK_PARSE_TEST_HOOK";

/// The bytes of stderr kept for error messages.
const STDERR_KEEP: u64 = 64 << 10;

/// Arguments of the hidden `edgeseek parse-worker` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// text, markdown, html, pdf or docx
    #[arg(long, value_parser = parse_kind)]
    pub kind: DocKind,
    #[arg(long)]
    pub max_input_bytes: u64,
    #[arg(long)]
    pub max_unpacked_bytes: u64,
    /// Address-space limit (RLIMIT_AS); 0 = none
    #[arg(long, default_value_t = 0)]
    pub max_memory_bytes: u64,
    /// CPU-time limit (RLIMIT_CPU); 0 = none
    #[arg(long, default_value_t = 0)]
    pub cpu_seconds: u64,
    #[arg(long)]
    pub charset: Option<String>,
    /// Read the document from this file instead of stdin
    #[arg(long)]
    pub input: Option<std::path::PathBuf>,
}

fn parse_kind(s: &str) -> Result<DocKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown document kind `{s}`"))
}

/// What the worker parses: bytes sent through its stdin, or a file it opens itself (so the
/// daemon never holds the document).
#[derive(Clone, Copy)]
pub(super) enum Input<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}

/// Run `input` through a worker process (see the module docs).
pub(super) fn run(
    input: Input<'_>,
    kind: DocKind,
    opts: &ParseOptions,
) -> Result<ParsedDoc, ParseError> {
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| ParseError::Spawn {
            exe: "(current executable)".into(),
            msg: e.to_string(),
        })?,
    };
    let mut cmd = Command::new(&exe);
    cmd.arg("parse-worker")
        .arg("--kind")
        .arg(kind.to_string())
        .arg("--max-input-bytes")
        .arg(opts.max_input_bytes.to_string())
        .arg("--max-unpacked-bytes")
        .arg(opts.max_unpacked_bytes.to_string())
        .arg("--max-memory-bytes")
        .arg(opts.max_memory_bytes.to_string())
        .arg("--cpu-seconds")
        .arg(opts.cpu_seconds.to_string());
    if let Some(c) = &opts.charset {
        cmd.arg("--charset").arg(c);
    }
    let bytes = match input {
        Input::Bytes(b) => Some(b),
        Input::File(p) => {
            cmd.arg("--input").arg(p);
            None
        }
    };
    // Nothing from the daemon's environment is needed; keep it (and any secrets in it) out.
    cmd.env_clear();
    if let Some(h) = &opts.test_hook {
        cmd.env(TEST_HOOK_ENV, h);
    }
    cmd.stdin(if bytes.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| ParseError::Spawn {
        exe: exe.display().to_string(),
        msg: e.to_string(),
    })?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let overflow = AtomicBool::new(false);
    let deadline = Instant::now() + opts.timeout;
    let max_out = opts.max_output_bytes;

    let (status, timed_out, out, err) = std::thread::scope(|s| {
        // A worker that dies early closes its stdin; the write error is expected then.
        s.spawn(move || {
            if let (Some(mut w), Some(b)) = (stdin, bytes) {
                let _ = w.write_all(b);
            }
        });
        let overflow = &overflow;
        let out = s.spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = stdout {
                let _ = r.take(max_out + 1).read_to_end(&mut buf);
            }
            if buf.len() as u64 > max_out {
                overflow.store(true, Ordering::SeqCst);
            }
            buf
        });
        let err = s.spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = stderr {
                let mut r = r;
                let _ = (&mut r).take(STDERR_KEEP).read_to_end(&mut buf);
                // Keep draining so the worker never blocks on a full stderr pipe.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            buf
        });
        let mut timed_out = false;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(_) => break None,
            }
            if overflow.load(Ordering::SeqCst) || Instant::now() >= deadline {
                timed_out = !overflow.load(Ordering::SeqCst);
                let _ = child.kill();
                break child.wait().ok();
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        (
            status,
            timed_out,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });

    if overflow.load(Ordering::SeqCst) {
        return Err(ParseError::OutputTooLarge(max_out));
    }
    if timed_out {
        return Err(ParseError::Timeout(opts.timeout.as_secs().max(1)));
    }
    let stderr = String::from_utf8_lossy(&err);
    let Some(status) = status else {
        return Err(ParseError::Worker(
            "lost track of the worker process".into(),
        ));
    };
    if status.success() {
        return serde_json::from_slice::<Result<ParsedDoc, ParseError>>(&out)
            .unwrap_or_else(|e| Err(ParseError::Worker(format!("unreadable answer: {e}"))));
    }
    if stderr.contains("memory allocation of") {
        return Err(ParseError::OutOfMemory(opts.max_memory_bytes >> 20));
    }
    match status.signal() {
        Some(s) if s == nix::sys::signal::Signal::SIGXCPU as i32 => {
            Err(ParseError::CpuLimit(opts.cpu_seconds))
        }
        // The hard CPU limit (one second above the soft one) ends in SIGKILL.
        Some(s) if s == nix::sys::signal::Signal::SIGKILL as i32 => {
            Err(ParseError::CpuLimit(opts.cpu_seconds))
        }
        Some(s) => Err(ParseError::Worker(format!(
            "killed by signal {s}{}",
            last_line(&stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ))),
        None => Err(ParseError::Worker(format!(
            "exit status {}{}",
            status.code().unwrap_or(-1),
            last_line(&stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ))),
    }
}

/// The most telling stderr line: a panic message if there is one, else the last line.
fn last_line(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .and_then(|i| {
            // "thread 'main' panicked at src/x.rs:1:2:" is followed by the message.
            lines
                .get(i + 1)
                .filter(|l| !l.starts_with("note:"))
                .or(lines.get(i))
        })
        .or(lines.last())?;
    Some(super::one_line(pick, 300))
}

/// Entry point of `edgeseek parse-worker`.
pub fn main(args: &WorkerArgs) -> ExitCode {
    let reply = work(args);
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &reply).is_ok() && out.flush().is_ok();
    if written {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn work(args: &WorkerArgs) -> Result<ParsedDoc, ParseError> {
    if let Err(e) = limit_resources(args) {
        return Err(ParseError::Worker(format!(
            "cannot set resource limits: {e}"
        )));
    }
    let mut input = Vec::new();
    let read = match &args.input {
        Some(p) => std::fs::File::open(p).and_then(|f| {
            f.take(args.max_input_bytes.saturating_add(1))
                .read_to_end(&mut input)
        }),
        None => std::io::stdin()
            .lock()
            .take(args.max_input_bytes.saturating_add(1))
            .read_to_end(&mut input),
    };
    read.map_err(|e| ParseError::Worker(format!("reading the document: {e}")))?;
    if input.len() as u64 > args.max_input_bytes {
        return Err(ParseError::TooLarge {
            size: input.len() as u64,
            limit: args.max_input_bytes,
        });
    }
    if let Ok(hook) = std::env::var(TEST_HOOK_ENV) {
        test_hook(&hook);
    }
    let opts = ParseOptions {
        max_input_bytes: args.max_input_bytes,
        max_unpacked_bytes: args.max_unpacked_bytes,
        charset: args.charset.clone(),
        ..ParseOptions::default()
    };
    super::parse_in_process(&input, args.kind, &opts)
}

fn limit_resources(args: &WorkerArgs) -> nix::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    if args.max_memory_bytes > 0 {
        setrlimit(
            Resource::RLIMIT_AS,
            args.max_memory_bytes,
            args.max_memory_bytes,
        )?;
    }
    if args.cpu_seconds > 0 {
        // SIGXCPU at the soft limit; SIGKILL one second later if it is ignored.
        setrlimit(Resource::RLIMIT_CPU, args.cpu_seconds, args.cpu_seconds + 1)?;
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    Ok(())
}

/// Misbehaviours on demand, for the containment tests.
fn test_hook(hook: &str) {
    match hook {
        // A panic outside the parsers' catch_unwind: the process dies with status 101.
        "panic" => panic!("test hook: parser panic"),
        "abort" => std::process::abort(),
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        "spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hold: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut v = vec![0u8; 64 << 20];
                v[0] = 1;
                hold.push(std::hint::black_box(v));
            }
        }
        "spew" => {
            let chunk = vec![b'x'; 1 << 16];
            let mut out = std::io::stdout().lock();
            while out.write_all(&chunk).is_ok() {}
            std::process::exit(0);
        }
        _ => {}
    }
}
