//! The fixture models' chat templates rendering hostile conversations: any messages render or
//! give a template error, never a panic. Input: a JSON array of messages (as the API passes
//! them on), or else raw text used as one user message.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use edgeseek::engine::template::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

fn templates() -> &'static [ChatTemplate] {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        ["tiny-qwen2-genai", "tiny-llama-genai"]
            .iter()
            .map(|m| ChatTemplate::load(&fixtures.join(m)).expect("fixture template loads"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let messages: Vec<ChatMessage> = match serde_json::from_slice(data) {
        Ok(m) => m,
        Err(_) => vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", String::from_utf8_lossy(data)),
        ],
    };
    for t in templates() {
        let _ = t.render(&messages, true);
        let _ = t.render(&messages, false);
    }
});
