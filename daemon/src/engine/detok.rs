//! Streaming text: incremental detokenization, stop strings, and the R1
//! reasoning/content split.
//!
//! All three are push-based state machines fed once per generated token, so
//! each keeps only a small bounded window of state and does `O(1)` amortised
//! work per piece (independent of how long the generation already is).

use std::sync::Arc;

use tokenizers::{DecoderWrapper, Tokenizer};

/// Errors from incremental detokenization.
#[derive(Debug, thiserror::Error)]
pub enum DetokError {
    /// The tokenizer refused to decode the current window of ids.
    #[error("failed to decode token ids {ids:?}: {message}")]
    Decode {
        /// The window that failed (small: only the undecided tail).
        ids: Vec<u32>,
        /// The tokenizer's error text (`tokenizers::Error` is a boxed trait
        /// object that is not itself `std::error::Error`, so we keep its text).
        message: String,
    },
}

/// If this many ids accumulate without producing a clean (non-U+FFFD-ending)
/// decode, the window is flushed anyway (window mode only: see [`IncrementalDecoder`]).
/// Keeps the per-token cost bounded when a decoder other than ByteLevel meets a long run
/// of invalid bytes.
const MAX_PENDING_IDS: usize = 16;

/// Incremental detokenizer: push ids, get text pieces that never split a UTF-8 character;
/// the concatenation of all pieces (incl. finish()) equals tokenizer.decode(all_ids, skip_special).
///
/// Two modes, chosen from the tokenizer's decoder:
/// - **bytes** (a `ByteLevel` decoder: Qwen2, Llama 3, DeepSeek-R1-Distill, SmolLM2): such a
///   full decode is `String::from_utf8_lossy` of the tokens' bytes, so each id's bytes are
///   appended to a buffer and every complete character (or invalid sequence, as U+FFFD) is
///   emitted at once. The buffer never holds more than the 3 bytes of an unfinished character,
///   and the equality with a full decode holds for every id sequence, garbage included:
///   `from_utf8_lossy` decides each character from its own bytes only.
/// - **window** (any other decoder, e.g. Metaspace/SentencePiece): the prefix/read-offset
///   technique of TGI and vLLM: decode `ids[prefix..read]` (already emitted, kept as left
///   context because such decoders depend on the previous token) and `ids[prefix..]`; the
///   difference is new text, emitted only when it does not end in U+FFFD. After
///   [`MAX_PENDING_IDS`] ids without a clean end the window is flushed anyway, which keeps the
///   cost bounded but can differ from a full decode around that point.
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    skip_special_tokens: bool,
    mode: Mode,
}

enum Mode {
    /// Bytes of an unfinished UTF-8 character (at most 3).
    Bytes(Vec<u8>),
    Window {
        prefix_offset: usize,
        read_offset: usize,
    },
}

impl IncrementalDecoder {
    /// Creates a decoder for one generation stream.
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        let mode = match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => Mode::Bytes(Vec::new()),
            _ => Mode::Window {
                prefix_offset: 0,
                read_offset: 0,
            },
        };
        Self {
            tokenizer,
            ids: Vec::new(),
            skip_special_tokens,
            mode,
        }
    }

    /// Adds one generated id; returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, DetokError> {
        self.ids.push(id);
        match &mut self.mode {
            Mode::Bytes(pending) => {
                if let Some(token) = token_text(&self.tokenizer, id, self.skip_special_tokens) {
                    push_token_bytes(pending, &token);
                }
                Ok(take_complete_chars(pending))
            }
            Mode::Window { .. } => self.push_window(),
        }
    }

    fn push_window(&mut self) -> Result<String, DetokError> {
        let (prefix_text, new_text) = self.decode_window()?;
        let Mode::Window {
            prefix_offset,
            read_offset,
        } = &mut self.mode
        else {
            return Ok(String::new());
        };
        let pending = self.ids.len() - *read_offset;
        let force = pending >= MAX_PENDING_IDS;
        if new_text.len() > prefix_text.len() && (!new_text.ends_with('\u{FFFD}') || force) {
            if let Some(piece) = new_suffix(&prefix_text, &new_text) {
                *prefix_offset = *read_offset;
                *read_offset = self.ids.len();
                return Ok(piece.to_owned());
            }
        }
        if force && new_text.len() <= prefix_text.len() {
            // Many ids that decode to nothing (e.g. skipped special tokens):
            // slide the window so it does not grow without bound.
            *prefix_offset = *read_offset;
            *read_offset = self.ids.len();
        }
        Ok(String::new())
    }

    /// Flushes whatever is still held back (may contain U+FFFD if the model
    /// produced invalid bytes — a full decode yields the same). Idempotent.
    pub fn finish(&mut self) -> Result<String, DetokError> {
        let len = self.ids.len();
        match &mut self.mode {
            Mode::Bytes(pending) => {
                let piece = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                Ok(piece)
            }
            Mode::Window { read_offset, .. } if *read_offset == len => Ok(String::new()),
            Mode::Window { .. } => {
                let (prefix_text, new_text) = self.decode_window()?;
                let piece = new_suffix(&prefix_text, &new_text)
                    .map(str::to_owned)
                    .unwrap_or_default();
                self.mode = Mode::Window {
                    prefix_offset: len,
                    read_offset: len,
                };
                Ok(piece)
            }
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Decodes `ids[prefix..read]` and `ids[prefix..]` (window mode).
    fn decode_window(&self) -> Result<(String, String), DetokError> {
        let (prefix_offset, read_offset) = match self.mode {
            Mode::Window {
                prefix_offset,
                read_offset,
            } => (prefix_offset, read_offset),
            Mode::Bytes(_) => (self.ids.len(), self.ids.len()),
        };
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, self.skip_special_tokens)
                .map_err(|e| DetokError::Decode {
                    ids: ids.to_vec(),
                    message: e.to_string(),
                })
        };
        let prefix = decode(&self.ids[prefix_offset..read_offset])?;
        let full = decode(&self.ids[prefix_offset..])?;
        Ok((prefix, full))
    }
}

/// The token string `Tokenizer::decode` hands its decoder for `id`: an added token's content
/// (`None` when it is special and skipped) or the model's token; `None` for an id outside the
/// vocabulary, which a full decode drops too.
fn token_text(tokenizer: &Tokenizer, id: u32, skip_special_tokens: bool) -> Option<String> {
    let token = tokenizer.id_to_token(id)?;
    let skipped = skip_special_tokens && tokenizer.get_added_vocabulary().is_special_token(&token);
    (!skipped).then_some(token)
}

/// Appends what the ByteLevel decoder makes of one token: the bytes its characters stand for
/// in the GPT-2 byte alphabet, or, when any character is outside that alphabet (added tokens
/// such as `<｜User｜>`), the token's own UTF-8 bytes.
fn push_token_bytes(buf: &mut Vec<u8>, token: &str) {
    let start = buf.len();
    for c in token.chars() {
        match byte_of_char(c) {
            Some(b) => buf.push(b),
            None => {
                buf.truncate(start);
                buf.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// The byte a character of the GPT-2 ByteLevel alphabet stands for: bytes `!`..=`~`,
/// 0xA1..=0xAC and 0xAE..=0xFF are their own code point; the other 68 bytes, in order, are
/// U+0100..=U+0143.
fn byte_of_char(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[Option<u8>; 0x144]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [None; 0x144];
        let mut next = 0x100;
        for b in 0..=255u8 {
            let own = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if own {
                usize::from(b)
            } else {
                next += 1;
                next - 1
            };
            t[cp] = Some(b);
        }
        t
    });
    table.get(c as usize).copied().flatten()
}

/// Takes every finished character off the front of `buf` (an invalid sequence becomes one
/// U+FFFD, as `String::from_utf8_lossy` does) and leaves the bytes of an unfinished one.
fn take_complete_chars(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are valid UTF-8: this never falls back.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let drop = buf.len() - keep;
    buf.drain(..drop);
    out
}

/// The part of `new_text` after the already-emitted `prefix_text`, or `None`
/// if that cut would not fall on a character boundary (hold back and retry).
fn new_suffix<'a>(prefix_text: &str, new_text: &'a str) -> Option<&'a str> {
    new_text.get(prefix_text.len()..)
}

/// Output of [`StopMatcher::push`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StopOutput {
    /// Text safe to emit now.
    pub text: String,
    /// A stop string matched; generation should end. Later pushes emit nothing.
    pub stopped: bool,
}

/// Stop strings matched on text across token boundaries.
///
/// Holds back only the longest suffix of the text that is a proper prefix of
/// some stop string, so streaming latency is minimal. When a stop string
/// completes, the text before the earliest match in the buffer is emitted
/// and the stop string itself is dropped (OpenAI semantics). Generation stops
/// as soon as any stop string is complete; a longer stop that might have
/// started even earlier is not waited for.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds the next decoded piece.
    pub fn push(&mut self, piece: &str) -> StopOutput {
        if self.stopped {
            return StopOutput {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        if self.stops.is_empty() {
            return StopOutput {
                text: std::mem::take(&mut self.held),
                stopped: false,
            };
        }
        let earliest = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(pos) = earliest {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(pos);
            self.stopped = true;
            return StopOutput {
                text,
                stopped: true,
            };
        }
        let keep_from = self.partial_match_start();
        let text = self.held[..keep_from].to_owned();
        self.held.replace_range(..keep_from, "");
        StopOutput {
            text,
            stopped: false,
        }
    }

    /// Flushes held-back text when generation ends without a stop.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Byte index where the longest suffix of `held` that is a proper prefix
    /// of some stop string begins (`held.len()` if there is none). Only char
    /// boundaries are considered, so a multi-byte character is never split.
    fn partial_match_start(&self) -> usize {
        let max_len = self.stops.iter().map(String::len).max().unwrap_or(0);
        let min_start = self.held.len().saturating_sub(max_len);
        for (i, _) in self.held.char_indices() {
            if i < min_start {
                continue;
            }
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                return i;
            }
        }
        self.held.len()
    }
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Reasoning and answer text produced by one [`ReasoningSplitter`] step.
#[derive(Default, Debug, PartialEq)]
pub struct Split {
    /// Text inside the `<think>` block (tags stripped).
    pub reasoning: String,
    /// Answer text after `</think>` (or all text if there was no reasoning).
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Output start: whitespace so far; a `<think>` here opens reasoning.
    Start,
    /// Inside the reasoning block.
    Reasoning,
    /// Answer text; `strip_newlines` while no non-newline char was seen after `</think>`.
    Content { strip_newlines: bool },
}

/// Reasoning split for R1 models: text before `</think>` is reasoning, after it the answer.
///
/// Tags may be split across pieces (`"</th"` + `"ink>"`); only a partial tag
/// prefix at the end of the text is held back, everything else streams
/// immediately. The result does not depend on how the text is chunked.
pub struct ReasoningSplitter {
    phase: Phase,
    pending: String,
}

impl ReasoningSplitter {
    /// `starts_in_reasoning`: the rendered prompt already opened `<think>` (the R1 template ends with "<think>\n").
    pub fn new(starts_in_reasoning: bool) -> Self {
        Self {
            phase: if starts_in_reasoning {
                Phase::Reasoning
            } else {
                Phase::Start
            },
            pending: String::new(),
        }
    }

    /// Feeds the next piece of model output.
    pub fn push(&mut self, piece: &str) -> Split {
        self.pending.push_str(piece);
        let mut out = Split::default();
        loop {
            match self.phase {
                Phase::Start => {
                    let trimmed = self.pending.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(THINK_OPEN) {
                        self.pending = rest.to_owned();
                        self.phase = Phase::Reasoning;
                        continue;
                    }
                    if THINK_OPEN.starts_with(trimmed) {
                        // Only whitespace and/or a partial `<think>` so far.
                        return out;
                    }
                    self.phase = Phase::Content {
                        strip_newlines: false,
                    };
                }
                Phase::Reasoning => {
                    if let Some(pos) = self.pending.find(THINK_CLOSE) {
                        out.reasoning.push_str(&self.pending[..pos]);
                        self.pending.replace_range(..pos + THINK_CLOSE.len(), "");
                        self.phase = Phase::Content {
                            strip_newlines: true,
                        };
                        continue;
                    }
                    let keep = partial_tag_start(&self.pending, THINK_CLOSE);
                    out.reasoning.push_str(&self.pending[..keep]);
                    self.pending.replace_range(..keep, "");
                    return out;
                }
                Phase::Content { strip_newlines } => {
                    let text = if strip_newlines {
                        self.pending.trim_start_matches(['\n', '\r'])
                    } else {
                        &self.pending
                    };
                    if !text.is_empty() {
                        out.content.push_str(text);
                        self.phase = Phase::Content {
                            strip_newlines: false,
                        };
                    }
                    self.pending.clear();
                    return out;
                }
            }
        }
    }

    /// Flushes held-back text at the end of generation (a dangling partial
    /// tag is ordinary text of the current section).
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.pending);
        match self.phase {
            Phase::Reasoning => Split {
                reasoning: rest,
                content: String::new(),
            },
            Phase::Start | Phase::Content { .. } => Split {
                reasoning: String::new(),
                content: rest,
            },
        }
    }

    /// Whether the stream is currently inside the reasoning block.
    pub fn in_reasoning(&self) -> bool {
        self.phase == Phase::Reasoning
    }
}

/// Byte index where the longest suffix of `text` that is a proper prefix of
/// `tag` starts (`text.len()` if none); char-boundary safe.
fn partial_tag_start(text: &str, tag: &str) -> usize {
    let min_start = text.len().saturating_sub(tag.len() - 1);
    text.char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i >= min_start)
        .find(|&i| tag.starts_with(&text[i..]))
        .unwrap_or(text.len())
}

/// True when a rendered prompt leaves the model inside a reasoning block (ends with `<think>` plus optional whitespace).
pub fn prompt_opens_reasoning(rendered_prompt: &str) -> bool {
    rendered_prompt.trim_end().ends_with(THINK_OPEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2 byte → char table (the ByteLevel alphabet), indexed by byte.
    fn byte_chars() -> Vec<char> {
        let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut chars: Vec<u32> = printable.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                printable.push(b);
                chars.push(256 + n);
                n += 1;
            }
        }
        let mut table = vec!['\0'; 256];
        for (b, c) in printable.iter().zip(chars) {
            table[*b as usize] = char::from_u32(c).expect("valid char");
        }
        table
    }

    const EOS: u32 = 256;
    const THINK: u32 = 257;

    /// Byte-level BPE with no merges: every byte is its own token, id = byte.
    /// Plus a special `<|eos|>` (256) and a non-special added `<think>` (257). Its decoder is
    /// ByteLevel (the decoder's bytes mode).
    fn byte_tokenizer() -> Arc<Tokenizer> {
        byte_tokenizer_with(
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": true,
                                               "trim_offsets": true, "use_regex": true}),
        )
    }

    /// The same tokenizer behind a `Sequence` decoder: the same text, through window mode.
    fn window_tokenizer() -> Arc<Tokenizer> {
        byte_tokenizer_with(serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
             "use_regex": true}]}))
    }

    fn both() -> [Arc<Tokenizer>; 2] {
        [byte_tokenizer(), window_tokenizer()]
    }

    fn byte_tokenizer_with(decoder: serde_json::Value) -> Arc<Tokenizer> {
        let table = byte_chars();
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        assert_eq!(alphabet.len(), 256);
        let vocab: serde_json::Map<String, serde_json::Value> = table
            .iter()
            .enumerate()
            .map(|(b, c)| {
                assert!(alphabet.contains(c));
                (c.to_string(), serde_json::json!(b))
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": EOS, "content": "<|eos|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": THINK, "content": "<think>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": false}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": decoder,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": []}
        });
        let tok: Tokenizer = json.to_string().parse().expect("test tokenizer parses");
        Arc::new(tok)
    }

    fn bytes_to_ids(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    /// Streams `ids`, checks the per-piece invariants, returns the pieces.
    fn stream(tok: &Arc<Tokenizer>, ids: &[u32], skip: bool) -> Vec<String> {
        let mut dec = IncrementalDecoder::new(tok.clone(), skip);
        let mut pieces = Vec::new();
        for &id in ids {
            pieces.push(dec.push(id).expect("push"));
        }
        pieces.push(dec.finish().expect("finish"));
        assert_eq!(dec.ids(), ids);
        let full = tok.decode(ids, skip).expect("decode");
        assert_eq!(pieces.concat(), full);
        pieces
    }

    #[test]
    fn tokenizer_really_splits_into_bytes() {
        let tok = byte_tokenizer();
        let enc = tok.encode("你好", false).expect("encode");
        assert_eq!(enc.get_ids(), bytes_to_ids("你好").as_slice());
        assert_eq!(enc.get_ids().len(), 6);
    }

    #[test]
    fn multibyte_chars_never_split() {
        for tok in both() {
            multibyte_chars_never_split_with(&tok);
        }
    }

    fn multibyte_chars_never_split_with(tok: &Arc<Tokenizer>) {
        let text = "Hi 你好，世界! 👋🏽 naïve — 数学题: 2+2=4 🎉";
        let ids = bytes_to_ids(text);
        let pieces = stream(tok, &ids, true);
        assert_eq!(pieces.concat(), text);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "piece {p:?} has U+FFFD");
        }
        // Each 3-byte CJK char arrives as exactly one piece after its last byte.
        let nonempty: Vec<&String> = pieces.iter().filter(|p| !p.is_empty()).collect();
        assert!(nonempty.iter().any(|p| p.as_str() == "你"));
        assert!(nonempty.iter().any(|p| p.as_str() == "👋"));
    }

    #[test]
    fn special_tokens_skipped_or_kept() {
        for tok in both() {
            let mut ids = vec![THINK];
            ids.extend(bytes_to_ids("想"));
            ids.push(EOS);
            let skipped = stream(&tok, &ids, true).concat();
            assert_eq!(skipped, "<think>想");
            let kept = stream(&tok, &ids, false).concat();
            assert_eq!(kept, "<think>想<|eos|>");
        }
    }

    #[test]
    fn invalid_bytes_flush_like_full_decode() {
        for tok in both() {
            invalid_bytes_flush_like_full_decode_with(&tok);
        }
    }

    fn invalid_bytes_flush_like_full_decode_with(tok: &Arc<Tokenizer>) {
        // A lone continuation byte, a truncated 3-byte sequence, then ASCII.
        let mut ids = vec![0x80, b'a' as u32, 0xE4, 0xB8];
        let pieces = stream(tok, &ids, true);
        assert!(pieces.concat().contains('\u{FFFD}'));
        // A long run of garbage stays bounded and still matches full decode.
        ids = std::iter::repeat_n(0x80u32, 40).collect();
        ids.extend(bytes_to_ids("ok 好"));
        stream(tok, &ids, true);
        // Many skipped special tokens do not break anything either.
        let mut specials = vec![EOS; 40];
        specials.extend(bytes_to_ids("好"));
        assert_eq!(stream(tok, &specials, true).concat(), "好");
    }

    #[test]
    fn decode_window_stays_small() {
        let text = "长文本 long text ".repeat(200);
        let mut dec = IncrementalDecoder::new(window_tokenizer(), true);
        for id in bytes_to_ids(&text) {
            dec.push(id).expect("push");
            // Only the undecided tail plus one emitted chunk of context.
            let Mode::Window { prefix_offset, .. } = dec.mode else {
                panic!("a Sequence decoder takes window mode");
            };
            assert!(dec.ids.len() - prefix_offset <= 8);
        }
        let mut dec = IncrementalDecoder::new(byte_tokenizer(), true);
        for id in bytes_to_ids(&text) {
            dec.push(id).expect("push");
            let Mode::Bytes(pending) = &dec.mode else {
                panic!("a ByteLevel decoder takes bytes mode");
            };
            assert!(pending.len() <= 3, "held {} bytes", pending.len());
        }
    }

    /// The fuzz target's find (`scripts/abuse --only fuzz`): id 915 of the tiny Qwen2 fixture
    /// ends inside a multi-byte character, so no prefix of 20 × 915 decodes cleanly; window
    /// mode's forced flush after 16 ids emitted a U+FFFD that a full decode does not have.
    #[test]
    fn a_long_run_of_ids_that_never_end_a_character_matches_full_decode() {
        let tok = fixture_tokenizer();
        let ids = vec![915; 20];
        let full = tok.decode(&ids, true).expect("decode");
        assert!(
            full.chars().filter(|c| *c != '\u{FFFD}').count() >= 18,
            "the case still needs multi-byte text, got {full:?}"
        );
        assert_eq!(stream(&tok, &ids, true).concat(), full);
    }

    /// Random id sequences over the fixture's real byte-level BPE vocabulary, biased toward
    /// ids whose bytes do not form whole characters: pieces always concatenate to a full
    /// decode, with and without skipping special tokens.
    #[test]
    fn random_ids_on_the_fixture_tokenizer_match_full_decode() {
        use rand::{Rng, SeedableRng};
        let tok = fixture_tokenizer();
        let vocab = tok.get_vocab_size(true) as u32;
        let partial: Vec<u32> = (0..vocab)
            .filter(|&id| {
                tok.decode(&[id], false)
                    .is_ok_and(|s| s.contains('\u{FFFD}'))
            })
            .collect();
        assert!(partial.len() > 10, "fixture has byte-fragment tokens");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..300 {
            let len = rng.random_range(1..80);
            let ids: Vec<u32> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.6) {
                        partial[rng.random_range(0..partial.len())]
                    } else {
                        rng.random_range(0..vocab)
                    }
                })
                .collect();
            stream(&tok, &ids, case % 2 == 0);
        }
    }

    fn fixture_tokenizer() -> Arc<Tokenizer> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-qwen2-genai/tokenizer.json");
        let tok = Tokenizer::from_file(&dir).expect("fixture tokenizer");
        assert!(matches!(
            tok.get_decoder(),
            Some(DecoderWrapper::ByteLevel(_))
        ));
        Arc::new(tok)
    }

    #[test]
    fn finish_is_idempotent() {
        for tok in both() {
            let mut dec = IncrementalDecoder::new(tok, true);
            let mut out = String::new();
            for id in bytes_to_ids("a好").into_iter().take(3) {
                out += &dec.push(id).expect("push");
            }
            assert_eq!(out, "a");
            assert_eq!(dec.finish().expect("finish"), "\u{FFFD}");
            assert_eq!(dec.finish().expect("finish"), "");
        }
    }

    fn run_stops(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run_stops(&["STOP"], &["hello ST", "O", "P world"]),
            ("hello ".to_string(), true)
        );
        // Chinese stop string split mid-string; pieces are whole chars.
        assert_eq!(
            run_stops(&["结束了"], &["好的", "结", "束", "了吗"]),
            ("好的".to_string(), true)
        );
    }

    #[test]
    fn stop_holds_back_only_partial_prefixes() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abc S").text, "abc ");
        assert_eq!(m.push("x").text, "Sx");
        let mut m = StopMatcher::new(vec!["数学".into()]);
        let o = m.push("这是数");
        assert_eq!((o.text.as_str(), o.stopped), ("这是", false));
        assert_eq!(m.finish(), "数");
    }

    #[test]
    fn earliest_of_several_stops() {
        assert_eq!(
            run_stops(&["world", "lo"], &["hello world"]),
            ("hel".to_string(), true)
        );
        assert_eq!(
            run_stops(&["b", "xyz"], &["a", "xyzb"]),
            ("a".to_string(), true)
        );
    }

    #[test]
    fn stop_at_very_start_and_after_stop() {
        let mut m = StopMatcher::new(vec!["</s>".into(), String::new()]);
        let o = m.push("</s>more");
        assert_eq!(
            o,
            StopOutput {
                text: String::new(),
                stopped: true
            }
        );
        assert!(m.push("x").stopped);
        assert_eq!(m.push("x").text, "");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn no_stops_passes_through_and_finish_flushes() {
        assert_eq!(run_stops(&[], &["a", "b"]), ("ab".to_string(), false));
        assert_eq!(run_stops(&[""], &["a", "b"]), ("ab".to_string(), false));
        assert_eq!(
            run_stops(&["STOP"], &["end ST"]),
            ("end ST".to_string(), false)
        );
    }

    fn split_all(starts: bool, pieces: &[&str]) -> Split {
        let mut s = ReasoningSplitter::new(starts);
        let mut acc = Split::default();
        for p in pieces {
            let o = s.push(p);
            acc.reasoning.push_str(&o.reasoning);
            acc.content.push_str(&o.content);
        }
        let o = s.finish();
        acc.reasoning.push_str(&o.reasoning);
        acc.content.push_str(&o.content);
        acc
    }

    fn split(reasoning: &str, content: &str) -> Split {
        Split {
            reasoning: reasoning.into(),
            content: content.into(),
        }
    }

    #[test]
    fn reasoning_prompt_opened() {
        assert_eq!(
            split_all(true, &["Let me think.", "</th", "ink>\n\n", "The answer"]),
            split("Let me think.", "The answer")
        );
    }

    #[test]
    fn reasoning_opened_by_model() {
        assert_eq!(
            split_all(false, &["\n<th", "ink>\nplan", "</think>\n\nok"]),
            split("\nplan", "ok")
        );
    }

    #[test]
    fn no_think_is_all_content() {
        assert_eq!(
            split_all(false, &["Just ", "an answer <think> here"]),
            split("", "Just an answer <think> here")
        );
        // A partial `<th` that turns out not to be a tag is content.
        assert_eq!(split_all(false, &["<th", "ree>"]), split("", "<three>"));
        assert_eq!(split_all(false, &["<thi"]), split("", "<thi"));
    }

    #[test]
    fn think_after_close_stays_content() {
        assert_eq!(
            split_all(true, &["r</think>a <think>b</think>c"]),
            split("r", "a <think>b</think>c")
        );
    }

    #[test]
    fn split_partial_tags_only_hold_tag_prefixes() {
        let mut s = ReasoningSplitter::new(true);
        assert!(s.in_reasoning());
        assert_eq!(s.push("思考 a<b </t"), split("思考 a<b ", ""));
        assert_eq!(s.push("x"), split("</tx", ""));
        assert_eq!(s.push("</think>"), split("", ""));
        assert!(!s.in_reasoning());
        assert_eq!(s.push("\n"), split("", ""));
        assert_eq!(s.push("\n答"), split("", "答"));
        assert_eq!(s.push("\n"), split("", "\n"));
        // Unterminated reasoning: dangling partial tag is flushed as reasoning.
        let mut s = ReasoningSplitter::new(true);
        assert_eq!(s.push("hmm</thin"), split("hmm", ""));
        assert_eq!(s.finish(), split("</thin", ""));
    }

    #[test]
    fn split_is_independent_of_chunking() {
        let text = "  <think>\n推理：2+2 </thx>=4\n</think>\n\n答案是 4 <think>不是</think>";
        let expected = split("\n推理：2+2 </thx>=4\n", "答案是 4 <think>不是</think>");
        let chars: Vec<&str> = text
            .char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect();
        assert_eq!(split_all(false, &[text]), expected);
        assert_eq!(split_all(false, &chars), expected);
        for size in 2..6 {
            let chunks: Vec<String> = chars.chunks(size).map(|c| c.concat()).collect();
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            assert_eq!(split_all(false, &refs), expected, "chunk size {size}");
        }
    }

    #[test]
    fn prompt_opens_reasoning_detects_trailing_think() {
        assert!(prompt_opens_reasoning("<｜Assistant｜><think>\n"));
        assert!(prompt_opens_reasoning("x<think>"));
        assert!(!prompt_opens_reasoning("<｜Assistant｜>"));
        assert!(!prompt_opens_reasoning("<think>done</think>\n"));
    }
}
