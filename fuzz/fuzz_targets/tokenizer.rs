//! The tokenizer wrapper: encoding any text (prepare_prompt) never panics, and decoding any
//! id sequence incrementally (IncrementalDecoder → StopMatcher → ReasoningSplitter) never
//! panics and yields exactly what one full decode yields.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use edgeseek::engine::detok::{IncrementalDecoder, ReasoningSplitter, StopMatcher};
use edgeseek::engine::generate::prepare_prompt;
use edgeseek::engine::model::load_tokenizer;
use edgeseek::engine::template::ChatTemplate;
use edgeseek::engine::{ModelSpec, Prompt};
use libfuzzer_sys::fuzz_target;
use tokenizers::Tokenizer;

struct Fixture {
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    vocab: u32,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2-genai");
        let spec = ModelSpec::read(&dir).expect("fixture spec");
        let tokenizer = load_tokenizer(&spec).expect("fixture tokenizer");
        let vocab = tokenizer.get_vocab_size(true) as u32;
        Fixture {
            tokenizer,
            template: ChatTemplate::load(&dir).expect("fixture template"),
            vocab,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // First byte splits the input: text to encode | ids to decode.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (text, ids) = rest.split_at(cut);
    let text = String::from_utf8_lossy(text).into_owned();
    let _ = prepare_prompt(&f.tokenizer, &f.template, &Prompt::Text(text.clone()), None);

    let ids: Vec<u32> = ids
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % f.vocab)
        .collect();
    let mut dec = IncrementalDecoder::new(f.tokenizer.clone(), true);
    let mut stops = StopMatcher::new(vec![text.chars().take(3).collect()]);
    let mut split = ReasoningSplitter::new(true);
    let mut pieces = String::new();
    for &id in &ids {
        let piece = dec.push(id).expect("in-vocabulary ids decode");
        pieces.push_str(&piece);
        let out = stops.push(&piece);
        split.push(&out.text);
    }
    pieces.push_str(&dec.finish().expect("in-vocabulary ids decode"));
    split.push(&stops.finish());
    split.finish();
    let full = f
        .tokenizer
        .decode(&ids, true)
        .expect("in-vocabulary ids decode");
    assert_eq!(
        pieces, full,
        "incremental decode differs from a full decode of {ids:?}"
    );
});
