//! Response bodies: finish reasons, usage, logprobs, whole responses and stream chunks.

use super::*;

pub fn chat_finish_reason(r: FinishReason, tool_calls: bool) -> &'static str {
    match r {
        FinishReason::Stop if tool_calls => "tool_calls",
        r => finish_reason(r),
    }
}

pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // A cancelled request has no client left to read this.
        FinishReason::Cancelled => "cancelled",
    }
}

/// `usage` of a response: the prompt counted once, completions summed over the choices.
pub(super) fn usage_of(prompt_tokens: usize, outs: &[&GenerateOutput]) -> Usage {
    let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
    let reasoning: usize = outs.iter().map(|o| o.reasoning_tokens).sum();
    Usage {
        prompt_tokens,
        completion_tokens: completion,
        total_tokens: prompt_tokens + completion,
        completion_tokens_details: CompletionTokensDetails {
            reasoning_tokens: reasoning,
        },
    }
}

/// `usage` of a response as JSON.
pub fn usage(prompt_tokens: usize, outs: &[&GenerateOutput]) -> Value {
    wire::value(&usage_of(prompt_tokens, outs))
}

/// `-inf` is not JSON; OpenAI reports -9999 for "impossible".
pub(super) fn finite(x: f32) -> f64 {
    if x.is_finite() {
        f64::from(x)
    } else {
        -9999.0
    }
}

pub(super) fn chat_logprobs_of(list: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |token: &str, lp: f32| TopLogprob {
        token: token.to_string(),
        logprob: finite(lp),
        bytes: token.as_bytes().to_vec(),
    };
    ChatLogprobs {
        content: list
            .iter()
            .map(|l| {
                let e = entry(&l.token, l.logprob);
                super::wire::chat::TokenLogprob {
                    token: e.token,
                    logprob: e.logprob,
                    bytes: e.bytes,
                    top_logprobs: l.top.iter().map(|(_, t, lp)| entry(t, *lp)).collect(),
                }
            })
            .collect(),
        refusal: None,
    }
}

/// Chat `logprobs.content` entries.
pub fn chat_logprobs(list: &[TokenLogprob]) -> Value {
    wire::value(&chat_logprobs_of(list))
}

pub(super) fn completion_logprobs_of(
    list: &[TokenLogprob],
    mut offset: usize,
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs {
        tokens: Vec::with_capacity(list.len()),
        token_logprobs: Vec::with_capacity(list.len()),
        top_logprobs: Vec::with_capacity(list.len()),
        text_offset: Vec::with_capacity(list.len()),
    };
    for l in list {
        lp.tokens.push(l.token.clone());
        lp.token_logprobs.push(finite(l.logprob));
        lp.top_logprobs.push(
            l.top
                .iter()
                .map(|(_, t, p)| (t.clone(), finite(*p)))
                .collect(),
        );
        lp.text_offset.push(offset);
        offset += l.token.len();
    }
    lp
}

/// Legacy completions `logprobs` object; `offset` is the text offset of the first token.
pub fn completion_logprobs(list: &[TokenLogprob], offset: usize) -> Value {
    wire::value(&completion_logprobs_of(list, offset))
}

/// A whole (non-streamed) response. `outs[i]` is choice `i`.
pub fn response(p: &Parsed, id: &str, created: u64, outs: &[GenerateOutput]) -> Value {
    let prompt_tokens = outs.first().map_or(0, |o| o.prompt_tokens);
    let refs: Vec<&GenerateOutput> = outs.iter().collect();
    let usage = usage_of(prompt_tokens, &refs);
    let chat_choice = |(i, o): (usize, &GenerateOutput)| {
        let (content, calls) = match &p.tool_parsing {
            Some(t) => super::super::tools::split(t, &o.text),
            None => (Some(o.text.clone()), Vec::new()),
        };
        ChatChoice {
            index: i,
            finish_reason: chat_finish_reason(o.finish_reason, !calls.is_empty()),
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls: (!calls.is_empty()).then_some(calls),
                reasoning_content: o.reasoning.clone(),
                reasoning: o.reasoning.clone(),
            },
            logprobs: o.logprobs.as_deref().map(chat_logprobs_of),
        }
    };
    let completion_choice = |(i, o): (usize, &GenerateOutput)| CompletionChoice {
        index: i,
        text: completion_text(o),
        logprobs: o.logprobs.as_deref().map(|l| completion_logprobs_of(l, 0)),
        finish_reason: finish_reason(o.finish_reason),
    };
    let choices = outs.iter().enumerate();
    match p.kind {
        Kind::Chat => whole(p, id, created, choices.map(chat_choice).collect(), usage),
        Kind::Completion => whole(
            p,
            id,
            created,
            choices.map(completion_choice).collect(),
            usage,
        ),
    }
}

/// The body of a whole response around `choices`; its `object` names the kind.
pub(super) fn whole<C: serde::Serialize>(
    p: &Parsed,
    id: &str,
    created: u64,
    choices: Vec<C>,
    usage: Usage,
) -> Value {
    wire::value(&Response {
        id: id.to_string(),
        object: match p.kind {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        },
        created,
        model: p.model.clone(),
        choices,
        usage,
        citations: None,
    })
}

/// Completions return the generated text as written: reasoning (if the prompt opened one)
/// followed by the answer.
pub(super) fn completion_text(o: &GenerateOutput) -> String {
    match &o.reasoning {
        Some(r) if !r.is_empty() => format!("{r}{}", o.text),
        _ => o.text.clone(),
    }
}

/// Builds the `data:` payloads of one streamed response.
pub struct Chunks<'a> {
    pub parsed: &'a Parsed,
    pub id: &'a str,
    pub created: u64,
}

/// What one stream chunk carries for one choice.
#[derive(Default)]
pub struct Delta<'a> {
    pub role: bool,
    pub content: Option<&'a str>,
    pub reasoning: Option<&'a str>,
    pub logprobs: &'a [TokenLogprob],
    pub finish: Option<FinishReason>,
    /// Part of a tool call (chat).
    pub tool_call: Option<ToolCallDelta>,
    /// With `finish`: the answer made tool calls (`finish_reason: tool_calls`).
    pub made_tool_calls: bool,
}

impl Chunks<'_> {
    /// `usage` of a chunk: OpenAI sends `usage: null` on every chunk but the last when usage
    /// is requested, and no `usage` at all otherwise.
    fn usage_field(&self) -> Option<Option<Usage>> {
        self.parsed.include_usage.then_some(None)
    }

    /// The stream event around `choices`; its `object` names the kind of stream.
    fn chunk<C: serde::Serialize>(&self, choices: Vec<C>, usage: Option<Option<Usage>>) -> Value {
        wire::value(&StreamChunk {
            id: self.id.to_string(),
            object: match self.parsed.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            created: self.created,
            model: self.parsed.model.clone(),
            choices,
            usage,
            citations: None,
        })
    }

    /// A chunk for choice `index`.
    pub fn delta(&self, index: usize, d: Delta<'_>, text_offset: usize) -> Value {
        let has_lp = !d.logprobs.is_empty();
        match self.parsed.kind {
            Kind::Chat => {
                let choice = ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: d.role.then_some("assistant"),
                        content: d.content.map(str::to_string),
                        reasoning_content: d.reasoning.map(str::to_string),
                        reasoning: d.reasoning.map(str::to_string),
                        tool_calls: d.tool_call.map(|c| vec![c]),
                    },
                    logprobs: has_lp.then(|| chat_logprobs_of(d.logprobs)),
                    finish_reason: d.finish.map(|f| chat_finish_reason(f, d.made_tool_calls)),
                };
                self.chunk(vec![choice], self.usage_field())
            }
            Kind::Completion => {
                let choice = CompletionChunkChoice {
                    index,
                    text: format!(
                        "{}{}",
                        d.reasoning.unwrap_or_default(),
                        d.content.unwrap_or_default()
                    ),
                    logprobs: has_lp.then(|| completion_logprobs_of(d.logprobs, text_offset)),
                    finish_reason: d.finish.map(finish_reason),
                };
                self.chunk(vec![choice], self.usage_field())
            }
        }
    }

    /// The final usage chunk (`stream_options.include_usage`): empty choices.
    pub fn usage(&self, prompt_tokens: usize, outs: &[&GenerateOutput]) -> Value {
        let usage = Some(Some(usage_of(prompt_tokens, outs)));
        // Empty choices: the choice type only matters for the schema.
        self.chunk(Vec::<ChatChunkChoice>::new(), usage)
    }
}
