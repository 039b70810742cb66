//! Constrained decoding: a grammar (a JSON schema, or a Lark grammar for tool calls) turned
//! into a per-token mask of the ids that can still lead to a valid output, with llguidance.
//!
//! [`Grammars`] is built once per model from its tokenizer (the byte string of every id in a
//! token trie) and compiles requests' grammars into [`Constraint`]s. The API compiles before
//! a request is queued, so a grammar the engine cannot enforce is a 400, never an
//! unconstrained answer. A [`Constraint`] belongs to one sequence: the sampler masks the
//! logits with it, and every sampled id is committed to it.
//!
//! Masks are computed ahead where possible: the scheduler asks every constrained row for its
//! next mask ([`Constraint::prepare`]) on a second thread while the batched forward runs, so
//! the mask is usually ready when the logits are.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use tokenizers::Tokenizer;
use toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// What a request constrains its answer to.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// A JSON value valid under this JSON schema (`{"type": "object"}` for `json_object`).
    JsonSchema(serde_json::Value),
    /// A Lark grammar in llguidance's dialect (may embed `%json { … }` schemas).
    Lark(String),
}

/// Why a grammar cannot be enforced.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// The token side of llguidance for one model: its trie and tokenizer.
struct ModelTokens {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for ModelTokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Valid UTF-8 goes through the model's own tokenizer; anything else byte-greedily
        // through the trie (llguidance asks only for short literals).
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// Compiles grammars for one model. Cheap to create; the parser factory (which slices the
/// vocabulary for fast masks) is built on first use.
pub struct Grammars {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    eos_ids: Vec<u32>,
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab_size", &self.vocab_size)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl Grammars {
    /// `vocab_size` is the model's logits width (it may exceed the tokenizer's ids);
    /// `eos_ids` are the ids that end a sequence (allowed once the grammar is complete).
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, eos_ids: &[u32]) -> Grammars {
        Grammars {
            tokenizer,
            vocab_size,
            eos_ids: eos_ids.to_vec(),
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>, GrammarError> {
        self.factory
            .get_or_init(|| self.build_factory().map(Arc::new))
            .as_ref()
            .map_err(|e| GrammarError(format!("constrained decoding is unavailable: {e}")))
    }

    fn build_factory(&self) -> Result<ParserFactory, String> {
        let json = serde_json::to_value(&*self.tokenizer).map_err(|e| e.to_string())?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())?;
        // Ids past the tokenizer's (padding rows of the logits) spell nothing: never allowed.
        words.resize(self.vocab_size.max(words.len()), Vec::new());
        let first_eos = *self.eos_ids.first().ok_or("the model has no EOS id")?;
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&self.eos_ids);
        let env: toktrie::TokEnv = Arc::new(ModelTokens {
            trie,
            tokenizer: self.tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        // Grammar problems are returned to the caller; nothing goes to stderr.
        factory.quiet();
        Ok(factory)
    }

    /// Compile `grammar` into a fresh constraint, or say why it cannot be enforced.
    /// The id of the one token spelled exactly `text` (an added token such as `<tool_call>`),
    /// if the vocabulary has one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        };
        let parser = self
            .factory()?
            .create_parser(top)
            .map_err(|e| GrammarError(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError(e));
        }
        Ok(Constraint {
            matcher,
            mask: None,
            stats: MaskStats::default(),
            trigger: None,
        })
    }
}

/// `schema` with llguidance's layout options: no free whitespace between tokens (a model
/// could otherwise pad forever) and the separators `json.dumps` writes, `", "` and `": "`.
pub fn compact(schema: &serde_json::Value) -> serde_json::Value {
    let layout = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    });
    let mut s = match schema {
        serde_json::Value::Object(_) => schema.clone(),
        // `true` (anything) or `false` (nothing): the same, as an object.
        serde_json::Value::Bool(true) => serde_json::json!({}),
        other => serde_json::json!({ "allOf": [other] }),
    };
    if let Some(o) = s.as_object_mut() {
        o.insert("x-guidance".into(), layout);
    }
    s
}

/// Where a sequence's mask time went (`edgeseek generate --json`, `scripts/bench-constrained`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MaskStats {
    /// Masks applied (one per constrained token).
    pub masks: u64,
    /// Time computing masks, wherever it ran, microseconds.
    pub compute_us: u64,
    /// The part of it the sampler waited for (mask not ready when the logits were).
    pub wait_us: u64,
    /// Committing sampled ids to the grammar (on the engine thread), microseconds.
    pub commit_us: u64,
}

/// The grammar state of one sequence.
pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next id, computed ahead by [`Constraint::prepare`].
    mask: Option<Result<SimpleVob, String>>,
    stats: MaskStats,
    /// Dormant until the answer contains this text (optional tool calls): then the grammar
    /// is fed the text from it on, and masks from the next token.
    trigger: Option<String>,
}

impl Clone for Constraint {
    /// An independent copy in the same state (one per choice of a request).
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
            stats: self.stats,
            trigger: self.trigger.clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Compute the mask for the next id now, if it is not known yet.
    pub fn prepare(&mut self) {
        if self.mask.is_none() {
            let t = Instant::now();
            self.mask = Some(
                self.matcher
                    .compute_mask_or_eos()
                    .map_err(|e| e.to_string()),
            );
            self.stats.compute_us += t.elapsed().as_micros() as u64;
        }
    }

    /// Set every id the grammar does not allow next to -inf in `logits`.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let t = Instant::now();
        self.prepare();
        self.stats.wait_us += t.elapsed().as_micros() as u64;
        self.stats.masks += 1;
        let mask = match self.mask.as_ref() {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(GrammarError(e.clone())),
            None => return Err(GrammarError("no mask".into())),
        };
        for (id, l) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(id as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Record the id sampled (or forced) next; the next mask must be computed again.
    pub fn commit(&mut self, id: u32) -> Result<(), GrammarError> {
        let t = Instant::now();
        self.mask = None;
        let r = self
            .matcher
            .consume_token(id)
            .map_err(|e| GrammarError(e.to_string()));
        self.stats.commit_us += t.elapsed().as_micros() as u64;
        r
    }

    /// Apply nothing until the answer contains `trigger` (see [`Constraint::wake`]).
    pub fn dormant_until(mut self, trigger: &str) -> Self {
        self.trigger = Some(trigger.to_string());
        self
    }

    /// The text that wakes a dormant constraint; `None` once awake (or never dormant).
    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }

    /// Wake a dormant constraint with the answer text from the trigger on (the trigger and
    /// whatever the same token wrote after it): the grammar consumes those bytes, and masks
    /// from the next token. An error means the model's text already left the grammar.
    pub fn wake(&mut self, text: &str) -> Result<(), GrammarError> {
        self.trigger = None;
        self.mask = None;
        let env = self
            .matcher
            .tok_env()
            .map_err(|e| GrammarError(e.to_string()))?;
        // Any ids spelling these bytes will do: the grammar reads bytes.
        let ids = env.tok_trie().greedy_tokenize(text.as_bytes());
        self.matcher
            .consume_tokens(&ids)
            .map_err(|e| GrammarError(e.to_string()))
    }

    pub fn stats(&self) -> MaskStats {
        self.stats
    }

    /// The grammar is complete and allows nothing but the end of the sequence.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests;
