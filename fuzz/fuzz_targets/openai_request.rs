//! Request bodies of /v1/chat/completions and /v1/completions: any bytes give a validated
//! request or an API error, never a panic.
#![no_main]

use edgeseek::api::openai::{parse, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(Kind::Chat, data);
    let _ = parse(Kind::Completion, data);
});
