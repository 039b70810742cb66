//! One request from messages to tokens and text.
//!
//! Pipeline per generated token:
//! `runner (logits) → sampler → detok (UTF-8-safe piece) → stop strings → reasoning split`.
//! Stop strings are matched on the raw text before the reasoning split, so a stop string is
//! honoured wherever the model writes it. The reasoning budget is enforced by *forcing* the
//! closing tag: after N reasoning tokens the tokens of `\n</think>\n\n` are appended to the
//! sequence and fed to the model in one step, so the answer that follows is conditioned on a
//! properly closed reasoning block.

use std::sync::Arc;

use serde::Serialize;
use tokenizers::Tokenizer;

use super::detok::{
    prompt_opens_reasoning, IncrementalDecoder, ReasoningSplitter, Split, StopMatcher,
};
use super::grammar::{Constraint, MaskStats};
use super::model::ModelSpec;
use super::runner::RunError;
use super::sampler::{top_logprobs, Sampler, SamplingParams};
use super::template::{ChatMessage, ChatTemplate, OrderedJson};
use super::Engine;

/// The closing tag forced when the reasoning budget runs out.
const FORCED_THINK_END: &str = "\n</think>\n\n";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {context} tokens")]
    ContextTooLong {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameter `{param}`: {message}")]
    InvalidParam { param: String, message: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("constrained decoding: {0}")]
    Constraint(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Longest stop string accepted, bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Chat messages, rendered through the model's chat template.
    Messages(Vec<ChatMessage>),
    /// Raw text, tokenized as is (legacy completions).
    Text(String),
    /// Token ids fed as is (benchmarks, callers that tokenized already).
    Ids(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// After this many reasoning tokens, `</think>` is forced.
    pub max_reasoning_tokens: Option<usize>,
    /// EOS cannot end the sequence before this many tokens (its logits are masked), so
    /// benchmarks generate exactly `max_tokens`. 0 = off.
    pub min_tokens: usize,
    /// Report each sampled token's log-probability with this many most likely alternatives
    /// (OpenAI `logprobs` / `top_logprobs`); `None` = off (no extra work per token).
    pub logprobs: Option<usize>,
    /// Chat only: the tool definitions (OpenAI `tools` list) given to the chat template.
    pub tools: Option<OrderedJson>,
    /// The answer must follow this grammar (`response_format`, forced tool calls): masks
    /// the logits from the first answer token, after the reasoning block of R1 models.
    pub constraint: Option<Constraint>,
}

impl GenerateRequest {
    /// Greedy decoding of exactly `tokens` tokens (EOS masked until then): what benchmarks
    /// and exactness tests need to compare equal amounts of work.
    pub fn greedy_exact(prompt: Prompt, tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            max_tokens: Some(tokens),
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            max_reasoning_tokens: None,
            min_tokens: tokens,
            logprobs: None,
            tools: None,
            constraint: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// A streamed piece of text, or (with `GenerateRequest::logprobs`) a sampled token's
/// log-probability, sent as soon as the token is sampled — before the text it produces,
/// which the detokenizer and stop matcher may hold back for a few tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StreamEvent<'a> {
    Reasoning(&'a str),
    Content(&'a str),
    Logprob(&'a TokenLogprob),
}

/// One sampled token's log-probability under the raw model distribution, with the most
/// likely alternatives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    /// The token decoded on its own (a partial UTF-8 sequence decodes lossily).
    pub token: String,
    pub logprob: f32,
    /// `(id, decoded token, logprob)`, most likely first.
    pub top: Vec<(u32, String, f32)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerateOutput {
    /// Generated ids (EOS excluded; forced `</think>` ids included).
    pub token_ids: Vec<u32>,
    /// The answer (text after the reasoning block, stop string removed).
    pub text: String,
    /// Reasoning text for models with a `</think>` token, else `None`.
    pub reasoning: Option<String>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
    /// Per sampled token (forced `</think>` ids have none), when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// With a constraint: where its mask time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskStats>,
}

/// The rendered and tokenized prompt.
pub struct PreparedPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub opens_reasoning: bool,
}

/// A checked request: its prompt ids and how many tokens it may generate.
pub struct Plan {
    pub prompt: PreparedPrompt,
    pub max_tokens: usize,
}

/// Render (for chat, with `tools` if any) and tokenize a prompt. The DeepSeek template emits
/// BOS itself, so the text is encoded without adding special tokens again.
pub fn prepare_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    prompt: &Prompt,
    tools: Option<&OrderedJson>,
) -> Result<PreparedPrompt, GenerateError> {
    if tools.is_some() && !template.uses_tools() {
        // The template would drop them: the model would never learn of the tools.
        return Err(GenerateError::InvalidParam {
            param: "tools".into(),
            message: "this model's chat template does not support tools".into(),
        });
    }
    let text = match prompt {
        Prompt::Messages(m) => template
            .render_with_tools(m, tools, true)
            .map_err(|e| GenerateError::Template(e.to_string()))?,
        Prompt::Text(t) => t.clone(),
        Prompt::Ids(ids) => {
            if ids.is_empty() {
                return Err(GenerateError::EmptyPrompt);
            }
            return Ok(PreparedPrompt {
                text: String::new(),
                ids: ids.clone(),
                opens_reasoning: false,
            });
        }
    };
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
    let ids = enc.get_ids().to_vec();
    if ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let opens_reasoning = prompt_opens_reasoning(&text);
    Ok(PreparedPrompt {
        text,
        ids,
        opens_reasoning,
    })
}

/// Check a request against the model and tokenize it. `token_limit` caps prompt +
/// generated tokens below the context (the scheduler passes its KV budget) when the request
/// sets no `max_tokens`; an explicit `max_tokens` over the context is an error, never
/// silently truncated.
pub fn plan_request(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    spec: &ModelSpec,
    req: &GenerateRequest,
    token_limit: Option<usize>,
) -> Result<Plan, GenerateError> {
    req.sampling
        .validate(spec.vocab_size)
        .map_err(|e| GenerateError::InvalidParam {
            param: e.param.to_string(),
            message: e.to_string(),
        })?;
    // The stop matcher compares held-back text against every stop string after each token:
    // bounded strings keep that work per token small on the scheduler thread.
    if let Some(s) = req.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(GenerateError::InvalidParam {
            param: "stop".into(),
            message: format!(
                "stop strings are limited to {MAX_STOP_BYTES} bytes (got one of {})",
                s.len()
            ),
        });
    }
    let prompt = prepare_prompt(tokenizer, template, &req.prompt, req.tools.as_ref())?;
    if let Some(&bad) = prompt
        .ids
        .iter()
        .find(|&&id| id as usize >= spec.vocab_size)
    {
        return Err(GenerateError::InvalidParam {
            param: "prompt".into(),
            message: format!("token id {bad} is outside the vocabulary"),
        });
    }
    let context = spec.context_length;
    let n_prompt = prompt.ids.len();
    let max_tokens = match req.max_tokens {
        Some(m) => m,
        None => context
            .min(token_limit.unwrap_or(context))
            .saturating_sub(n_prompt),
    };
    if max_tokens == 0 || n_prompt + max_tokens > context {
        return Err(GenerateError::ContextTooLong {
            prompt: n_prompt,
            max_tokens,
            context,
        });
    }
    Ok(Plan { prompt, max_tokens })
}

/// What a sequence needs next after a sampled token.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Feed these ids to the model (the sampled one, plus forced `</think>` ids).
    Feed(Vec<u32>),
    /// The sequence is over.
    Finished(FinishReason),
}

/// The per-token text pipeline of one sequence:
/// `sampler → IncrementalDecoder → StopMatcher → ReasoningSplitter → reasoning budget`.
/// Both the single-stream [`Engine::generate`] and the batching scheduler drive it, one
/// logits row at a time, so a sequence produces the same ids and text on either path.
pub struct Sequence {
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    splitter: ReasoningSplitter,
    forced_end: Vec<u32>,
    max_reasoning_tokens: Option<usize>,
    max_tokens: usize,
    min_tokens: usize,
    eos_ids: Vec<u32>,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    reasoning: String,
    reasoning_tokens: usize,
    reasoning_model: bool,
    stopped_by_string: bool,
    logprobs: Option<(usize, Vec<TokenLogprob>)>,
    constraint: Option<Constraint>,
    /// The end of the answer so far, while the constraint waits for its trigger.
    trigger_window: String,
    tokenizer: Arc<Tokenizer>,
}

impl Sequence {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        spec: &ModelSpec,
        req: &GenerateRequest,
        plan: Plan,
    ) -> Result<Sequence, GenerateError> {
        let reasoning_model = tokenizer.token_to_id("</think>").is_some();
        let forced_end: Vec<u32> = match req.max_reasoning_tokens {
            Some(_) if reasoning_model => tokenizer
                .encode(FORCED_THINK_END, false)
                .map_err(|e| GenerateError::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec(),
            _ => Vec::new(),
        };
        Ok(Sequence {
            sampler: Sampler::new(req.sampling.clone()),
            decoder: IncrementalDecoder::new(tokenizer.clone(), true),
            logprobs: req.logprobs.map(|k| (k, Vec::new())),
            constraint: req.constraint.clone(),
            trigger_window: String::new(),
            tokenizer,
            stops: StopMatcher::new(req.stop.clone()),
            splitter: ReasoningSplitter::new(reasoning_model && plan.prompt.opens_reasoning),
            forced_end,
            max_reasoning_tokens: req.max_reasoning_tokens,
            max_tokens: plan.max_tokens,
            min_tokens: req.min_tokens,
            eos_ids: spec.eos_ids.clone(),
            prompt_ids: plan.prompt.ids,
            generated: Vec::new(),
            text: String::new(),
            reasoning: String::new(),
            reasoning_tokens: 0,
            reasoning_model,
            stopped_by_string: false,
        })
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated.len()
    }

    /// Prompt plus the most tokens this sequence may generate: what its KV cache can grow to.
    pub fn max_len(&self) -> usize {
        self.prompt_ids.len() + self.max_tokens
    }

    /// The grammar that masks the next token, if one applies to it: none while the model
    /// reasons (R1 models think freely; the constraint starts with the answer).
    fn active_constraint(&mut self) -> Option<&mut Constraint> {
        if self.splitter.in_reasoning() {
            return None;
        }
        self.constraint.as_mut().filter(|c| c.trigger().is_none())
    }

    /// A dormant constraint watches the answer text for its trigger and wakes on it. If the
    /// text already left the grammar, the constraint is dropped: the answer is then read as
    /// the model wrote it (a malformed call comes back as content).
    fn watch_trigger(&mut self, answer_piece: &str) {
        let Some(c) = self.constraint.as_mut() else {
            return;
        };
        let Some(trigger) = c.trigger() else {
            return;
        };
        self.trigger_window.push_str(answer_piece);
        if let Some(at) = self.trigger_window.find(trigger) {
            let from = self.trigger_window.split_off(at);
            self.trigger_window.clear();
            match c.wake(&from) {
                Ok(()) => tracing::debug!("optional tool call opened; constrained from here"),
                Err(e) => {
                    tracing::debug!(error = %e, "optional tool call left its grammar; unconstrained");
                    self.constraint = None;
                }
            }
            return;
        }
        // Keep only what could still be the start of the trigger.
        let keep = trigger.len().saturating_sub(1);
        if self.trigger_window.len() > keep {
            let mut cut = self.trigger_window.len() - keep;
            while !self.trigger_window.is_char_boundary(cut) {
                cut += 1;
            }
            self.trigger_window.drain(..cut);
        }
    }

    /// Compute the grammar mask for the next token ahead of its logits (the scheduler calls
    /// this on a second thread while the forward pass runs). No-op without a constraint.
    pub fn prepare_mask(&mut self) {
        if let Some(c) = self.active_constraint() {
            c.prepare();
        }
    }

    /// Whether the sequence has a grammar at all (dormant or waiting for the answer counts):
    /// the scheduler then offers [`Sequence::prepare_mask`] a thread, which may find nothing
    /// to do yet.
    pub fn is_constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// Sample the next token from `logits` (the last position's row) and run it through the
    /// text pipeline. `on_event` returning `false` cancels.
    pub fn advance(
        &mut self,
        logits: &mut [f32],
        on_event: &mut dyn FnMut(StreamEvent<'_>) -> bool,
    ) -> Result<Next, GenerateError> {
        if self.generated.len() >= self.max_tokens {
            return Ok(Next::Finished(FinishReason::Length));
        }
        if self.generated.len() < self.min_tokens {
            for &id in &self.eos_ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let constrained = match self.active_constraint() {
            Some(c) => {
                c.apply(logits)
                    .map_err(|e| GenerateError::Constraint(e.to_string()))?;
                true
            }
            None => false,
        };
        let sampled = self
            .sampler
            .sample(logits, &self.prompt_ids, &self.generated);
        if self.eos_ids.contains(&sampled.token) {
            return Ok(Next::Finished(FinishReason::Stop));
        }
        let mut grammar_done = false;
        if constrained {
            if let Some(c) = self.constraint.as_mut() {
                c.commit(sampled.token)
                    .map_err(|e| GenerateError::Constraint(e.to_string()))?;
                grammar_done = c.is_finished();
            }
        }
        if let Some((k, list)) = self.logprobs.as_mut() {
            let decode = |id: u32| self.tokenizer.decode(&[id], false).unwrap_or_default();
            let entry = TokenLogprob {
                token_id: sampled.token,
                token: decode(sampled.token),
                logprob: sampled.logprob,
                top: top_logprobs(logits, *k)
                    .into_iter()
                    .map(|(id, lp)| (id, decode(id), lp))
                    .collect(),
            };
            if !on_event(StreamEvent::Logprob(&entry)) {
                return Ok(Next::Finished(FinishReason::Cancelled));
            }
            list.push(entry);
        }
        let mut step = vec![sampled.token];
        if self.splitter.in_reasoning() {
            self.reasoning_tokens += 1;
            if let Some(budget) = self.max_reasoning_tokens {
                if self.reasoning_tokens >= budget && !self.forced_end.is_empty() {
                    step.extend_from_slice(&self.forced_end);
                }
            }
        }
        // Never run past max_tokens, even with forced ids.
        step.truncate(self.max_tokens - self.generated.len());
        for &id in &step {
            self.generated.push(id);
            let piece = self
                .decoder
                .push(id)
                .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
            if !self.splitter.in_reasoning() {
                self.watch_trigger(&piece);
            }
            let out = self.stops.push(&piece);
            let split = self.splitter.push(&out.text);
            if !self.emit(split, on_event) {
                return Ok(Next::Finished(FinishReason::Cancelled));
            }
            if out.stopped {
                self.stopped_by_string = true;
                return Ok(Next::Finished(FinishReason::Stop));
            }
        }
        if grammar_done {
            // Nothing but EOS could follow: end here instead of spending a step on it.
            return Ok(Next::Finished(FinishReason::Stop));
        }
        if self.generated.len() >= self.max_tokens {
            return Ok(Next::Finished(FinishReason::Length));
        }
        Ok(Next::Feed(step))
    }

    fn emit(&mut self, split: Split, on_event: &mut dyn FnMut(StreamEvent<'_>) -> bool) -> bool {
        let mut go_on = true;
        if !split.reasoning.is_empty() {
            self.reasoning.push_str(&split.reasoning);
            go_on &= on_event(StreamEvent::Reasoning(&split.reasoning));
        }
        if !split.content.is_empty() {
            self.text.push_str(&split.content);
            go_on &= on_event(StreamEvent::Content(&split.content));
        }
        go_on
    }

    /// Flush the text held back (partial UTF-8, possible stop-string prefixes) and build
    /// the output.
    pub fn finish(
        mut self,
        mut finish: FinishReason,
        on_event: &mut dyn FnMut(StreamEvent<'_>) -> bool,
    ) -> Result<GenerateOutput, GenerateError> {
        if finish != FinishReason::Cancelled {
            let tail = self
                .decoder
                .finish()
                .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
            let mut rest = String::new();
            if finish == FinishReason::Stop && !self.stopped_by_string {
                // EOS: flush everything held back for a possible stop string.
                let out = self.stops.push(&tail);
                rest.push_str(&out.text);
                if !out.stopped {
                    rest.push_str(&self.stops.finish());
                }
            } else if finish == FinishReason::Length {
                let out = self.stops.push(&tail);
                rest.push_str(&out.text);
                if out.stopped {
                    finish = FinishReason::Stop;
                } else {
                    rest.push_str(&self.stops.finish());
                }
            }
            let mut split = self.splitter.push(&rest);
            let end = self.splitter.finish();
            split.reasoning.push_str(&end.reasoning);
            split.content.push_str(&end.content);
            self.emit(split, on_event);
        }
        Ok(GenerateOutput {
            completion_tokens: self.generated.len(),
            prompt_tokens: self.prompt_ids.len(),
            token_ids: self.generated,
            text: self.text,
            reasoning: self.reasoning_model.then_some(self.reasoning),
            finish_reason: finish,
            reasoning_tokens: self.reasoning_tokens,
            logprobs: self.logprobs.map(|(_, list)| list),
            mask: self.constraint.as_ref().map(Constraint::stats),
        })
    }
}

impl Engine {
    /// Render (for chat) and tokenize a prompt.
    pub fn prepare(&self, prompt: &Prompt) -> Result<PreparedPrompt, GenerateError> {
        prepare_prompt(&self.tokenizer, &self.template, prompt, None)
    }

    /// Whether this model separates reasoning from the answer (has a `</think>` token).
    pub fn has_reasoning(&self) -> bool {
        self.tokenizer.token_to_id("</think>").is_some()
    }

    /// Generate for one request on the calling thread (batch of one, whole-prompt prefill).
    /// `on_event` receives text as it becomes final; returning `false` cancels.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(StreamEvent<'_>) -> bool,
    ) -> Result<GenerateOutput, GenerateError> {
        let plan = plan_request(
            &self.tokenizer,
            &self.template,
            &self.runner.spec,
            req,
            None,
        )?;
        let mut kv = self.runner.new_sequence()?;
        let mut logits = self.runner.forward(&mut kv, &plan.prompt.ids)?;
        let mut seq = Sequence::new(self.tokenizer.clone(), &self.runner.spec, req, plan)?;
        loop {
            match seq.advance(&mut logits, on_event)? {
                Next::Feed(ids) => logits = self.runner.forward(&mut kv, &ids)?,
                Next::Finished(reason) => return seq.finish(reason, on_event),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-qwen2-genai/tokenizer.json"
        );
        Tokenizer::from_file(path).expect("fixture tokenizer")
    }

    fn tools() -> OrderedJson {
        serde_json::from_str(r#"[{"type":"function","function":{"name":"get_time"}}]"#).unwrap()
    }

    #[test]
    fn tools_need_a_template_that_renders_them() {
        let prompt = Prompt::Messages(vec![ChatMessage::new("user", "hi")]);
        let r1 = ChatTemplate::from_source(
            include_str!("../../../scripts/fixtures/deepseek-r1-distill.jinja"),
            None,
            None,
        )
        .unwrap();
        match prepare_prompt(&tokenizer(), &r1, &prompt, Some(&tools())) {
            Err(GenerateError::InvalidParam { param, .. }) => assert_eq!(param, "tools"),
            other => panic!("{:?}", other.map(|p| p.text)),
        }
        assert!(prepare_prompt(&tokenizer(), &r1, &prompt, None).is_ok());
        let hermes = ChatTemplate::from_source(
            include_str!("../../../scripts/fixtures/hermes-tools.jinja"),
            None,
            None,
        )
        .unwrap();
        let p = prepare_prompt(&tokenizer(), &hermes, &prompt, Some(&tools())).unwrap();
        assert!(p
            .text
            .contains(r#"{"type": "function", "function": {"name": "get_time"}}"#));
        let plain = prepare_prompt(&tokenizer(), &hermes, &prompt, None).unwrap();
        assert!(!plain.text.contains("get_time"));
    }
}
