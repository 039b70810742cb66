//! One request from messages to tokens and text.
//!
//! Pipeline per generated token:
//! `runner (logits) → sampler → detok (UTF-8-safe piece) → stop strings → reasoning split`.
//! Stop strings are matched on the raw text before the reasoning split, so a stop string is
//! honoured wherever the model writes it. The reasoning budget is enforced by *forcing* the
//! closing tag: after N reasoning tokens the tokens of `\n</think>\n\n` are appended to the
//! sequence and fed to the model in one step, so the answer that follows is conditioned on a
//! properly closed reasoning block.

use serde::Serialize;

use super::detok::{
    prompt_opens_reasoning, IncrementalDecoder, ReasoningSplitter, Split, StopMatcher,
};
use super::runner::RunError;
use super::sampler::{Sampler, SamplingParams};
use super::template::ChatMessage;
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
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Chat messages, rendered through the model's chat template.
    Messages(Vec<ChatMessage>),
    /// Raw text, tokenized as is (legacy completions).
    Text(String),
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// A streamed piece of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Reasoning(&'a str),
    Content(&'a str),
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
}

/// The rendered and tokenized prompt.
pub struct PreparedPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub opens_reasoning: bool,
}

impl Engine {
    /// Render (for chat) and tokenize a prompt. The DeepSeek template emits BOS itself, so
    /// the text is encoded without adding special tokens again.
    pub fn prepare(&self, prompt: &Prompt) -> Result<PreparedPrompt, GenerateError> {
        let text = match prompt {
            Prompt::Messages(m) => self
                .template
                .render(m, true)
                .map_err(|e| GenerateError::Template(e.to_string()))?,
            Prompt::Text(t) => t.clone(),
        };
        let enc = self
            .tokenizer
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

    /// Whether this model separates reasoning from the answer (has a `</think>` token).
    pub fn has_reasoning(&self) -> bool {
        self.tokenizer.token_to_id("</think>").is_some()
    }

    /// Generate for one request. `on_event` receives text as it becomes final; returning
    /// `false` cancels the generation.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(StreamEvent<'_>) -> bool,
    ) -> Result<GenerateOutput, GenerateError> {
        let spec = self.runner.spec.clone();
        req.sampling
            .validate(spec.vocab_size)
            .map_err(|e| GenerateError::InvalidParam {
                param: e.param.to_string(),
                message: e.to_string(),
            })?;
        let prompt = self.prepare(&req.prompt)?;
        let context = spec.context_length;
        let n_prompt = prompt.ids.len();
        let max_tokens = match req.max_tokens {
            Some(m) => m,
            None => context.saturating_sub(n_prompt),
        };
        if max_tokens == 0 || n_prompt + max_tokens > context {
            return Err(GenerateError::ContextTooLong {
                prompt: n_prompt,
                max_tokens,
                context,
            });
        }

        let reasoning_model = self.has_reasoning();
        let mut decoder = IncrementalDecoder::new(self.tokenizer.clone(), true);
        let mut stops = StopMatcher::new(req.stop.clone());
        let mut splitter = ReasoningSplitter::new(reasoning_model && prompt.opens_reasoning);
        let forced_end: Vec<u32> = match req.max_reasoning_tokens {
            Some(_) if reasoning_model => self
                .tokenizer
                .encode(FORCED_THINK_END, false)
                .map_err(|e| GenerateError::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec(),
            _ => Vec::new(),
        };

        let mut sampler = Sampler::new(req.sampling.clone());
        let mut seq = self.runner.new_sequence()?;
        let mut logits = self.runner.forward(&mut seq, &prompt.ids)?;
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut reasoning_tokens = 0usize;
        let mut finish = FinishReason::Length;
        let mut stopped_by_string = false;

        let mut emit = |split: Split, text: &mut String, reasoning: &mut String| -> bool {
            let mut go_on = true;
            if !split.reasoning.is_empty() {
                reasoning.push_str(&split.reasoning);
                go_on &= on_event(StreamEvent::Reasoning(&split.reasoning));
            }
            if !split.content.is_empty() {
                text.push_str(&split.content);
                go_on &= on_event(StreamEvent::Content(&split.content));
            }
            go_on
        };

        'outer: while generated.len() < max_tokens {
            let sampled = sampler.sample(&logits, &prompt.ids, &generated);
            if spec.eos_ids.contains(&sampled.token) {
                finish = FinishReason::Stop;
                break;
            }
            let in_reasoning = splitter.in_reasoning();
            let mut step = vec![sampled.token];
            if in_reasoning {
                reasoning_tokens += 1;
                if let Some(budget) = req.max_reasoning_tokens {
                    if reasoning_tokens >= budget && !forced_end.is_empty() {
                        step.extend_from_slice(&forced_end);
                    }
                }
            }
            // Never run past max_tokens, even with forced ids.
            step.truncate(max_tokens - generated.len());
            for &id in &step {
                generated.push(id);
                let piece = decoder
                    .push(id)
                    .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
                let out = stops.push(&piece);
                let split = splitter.push(&out.text);
                if !emit(split, &mut text, &mut reasoning) {
                    finish = FinishReason::Cancelled;
                    break 'outer;
                }
                if out.stopped {
                    finish = FinishReason::Stop;
                    stopped_by_string = true;
                    break 'outer;
                }
            }
            if generated.len() >= max_tokens {
                break;
            }
            logits = self.runner.forward(&mut seq, &step)?;
        }

        if finish != FinishReason::Cancelled {
            let tail = decoder
                .finish()
                .map_err(|e| GenerateError::Tokenizer(e.to_string()))?;
            let mut rest = String::new();
            if finish == FinishReason::Stop && !stopped_by_string {
                // EOS: flush everything held back for a possible stop string.
                let out = stops.push(&tail);
                rest.push_str(&out.text);
                if !out.stopped {
                    rest.push_str(&stops.finish());
                }
            } else if finish == FinishReason::Length {
                let out = stops.push(&tail);
                rest.push_str(&out.text);
                if out.stopped {
                    finish = FinishReason::Stop;
                } else {
                    rest.push_str(&stops.finish());
                }
            }
            let mut split = splitter.push(&rest);
            let end = splitter.finish();
            split.reasoning.push_str(&end.reasoning);
            split.content.push_str(&end.content);
            emit(split, &mut text, &mut reasoning);
        }

        Ok(GenerateOutput {
            completion_tokens: generated.len(),
            token_ids: generated,
            text,
            reasoning: reasoning_model.then_some(reasoning),
            finish_reason: finish,
            prompt_tokens: n_prompt,
            reasoning_tokens,
        })
    }
}
