//! kb::parse of Markdown documents on any bytes: a ParsedDoc or a ParseError, in bounded time and
//! memory. The daemon parses this kind in its own process, so a panic (even one caught and turned
//! into an error) is a bug.
#![no_main]

use edgeseek::kb::parse::{parse_in_process, ParseError, ParseOptions};
use edgeseek::kb::DocKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = parse_in_process(data, DocKind::Markdown, &ParseOptions::default());
    if let Err(e @ ParseError::Panicked { .. }) = r {
        panic!("parser panicked: {e}");
    }
});
