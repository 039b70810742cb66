//! kb::parse of Docx documents on any bytes: a ParsedDoc or a ParseError, in bounded time and
//! memory. The daemon parses this kind in a sandboxed child process (`edgeseek parse-worker`),
//! where a panic is caught and becomes a one-line error for that upload; that containment is
//! the design, so a caught panic is allowed here (libfuzzer-sys's abort-on-panic hook is
//! replaced). Hangs, runaway memory, stack overflows and aborts are not: libFuzzer's -timeout
//! and -rss_limit_mb and the sanitizer catch them.
#![no_main]

use std::sync::Once;

use edgeseek::kb::parse::{parse_in_process, ParseOptions};
use edgeseek::kb::DocKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = parse_in_process(data, DocKind::Docx, &ParseOptions::default());
});
