//! OpenAI wire format: request validation into engine requests, and response / stream chunk
//! JSON.
//!
//! Requests are parsed into a `serde_json::Map` first and every key is checked against the
//! route's list of supported parameters, so a parameter this server does not implement is a
//! 400 that names it instead of being silently ignored (a client relying on e.g. `tools`
//! must find out). Values are then read one by one, each error naming its parameter.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::engine::generate::Prompt;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::{FinishReason, GenerateOutput, GenerateRequest, TokenLogprob};

/// Parameters of `POST /v1/chat/completions`.
pub const CHAT_PARAMS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "n",
    "stream",
    "stream_options",
    "user",
    "max_reasoning_tokens",
    "knowledge",
];

/// Parameters of `POST /v1/completions`.
pub const COMPLETION_PARAMS: &[&str] = &[
    "model",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "n",
    "stream",
    "stream_options",
    "user",
    "max_reasoning_tokens",
    "echo",
];

/// Most choices per request; each is a sequence in the batch.
pub const MAX_N: u64 = 16;
/// Most stop strings per request.
pub const MAX_STOP: usize = 16;
/// Most alternatives per token (chat `top_logprobs`).
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Most alternatives per token (legacy completions `logprobs`).
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub model: String,
    /// The engine request of choice 0; choice `i` uses seed `seed + i`.
    pub request: GenerateRequest,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Retrieval from the knowledge base (chat only), see `rag`.
    pub knowledge: Option<super::rag::Knowledge>,
}

impl Parsed {
    /// The engine request of choice `i`.
    pub fn request_for(&self, i: usize) -> GenerateRequest {
        let mut r = self.request.clone();
        r.sampling.seed = self.request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        r
    }
}

/// A request body that must be a JSON object whose keys are all in `allowed` (400 naming the
/// first other key, or saying what is wrong with the body).
pub fn object_body(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::unknown_param(k));
    }
    Ok(map)
}

/// Parse and validate a request body.
pub fn parse(kind: Kind, body: &[u8]) -> Result<Parsed, ApiError> {
    let map = object_body(
        body,
        match kind {
            Kind::Chat => CHAT_PARAMS,
            Kind::Completion => COMPLETION_PARAMS,
        },
    )?;

    let model = match get(&map, "model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ApiError::invalid_param("model", "must be a string")),
        None => {
            return Err(ApiError::invalid_param(
                "model",
                "you must provide a model parameter",
            ))
        }
    };
    let prompt = match kind {
        Kind::Chat => Prompt::Messages(messages(&map)?),
        Kind::Completion => completion_prompt(&map)?,
    };
    if let Kind::Completion = kind {
        if boolean(&map, "echo")? == Some(true) {
            return Err(ApiError::invalid_param(
                "echo",
                "echo is not supported; the prompt is not repeated in the output",
            ));
        }
    }

    let mut sampling = SamplingParams::r1_defaults();
    if let Some(t) = number(&map, "temperature", 0.0, 2.0)? {
        sampling.temperature = t;
    }
    if let Some(p) = number(&map, "top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid_param("top_p", "must be in (0, 1]"));
        }
        sampling.top_p = p;
    }
    if let Some(k) = integer(&map, "top_k", 0, u64::from(u32::MAX))? {
        sampling.top_k = k as usize;
    }
    if let Some(p) = number(&map, "min_p", 0.0, 1.0)? {
        sampling.min_p = p;
    }
    if let Some(p) = number(&map, "presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p;
    }
    if let Some(p) = number(&map, "frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = p;
    }
    if let Some(p) = number(&map, "repetition_penalty", 0.0, 10.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                "must be greater than 0",
            ));
        }
        sampling.repetition_penalty = p;
    }
    sampling.seed = integer(&map, "seed", 0, u64::MAX)?;
    sampling.logit_bias = logit_bias(&map)?;

    let max_tokens = match kind {
        Kind::Chat => {
            let a = integer(&map, "max_tokens", 1, u64::from(u32::MAX))?;
            let b = integer(&map, "max_completion_tokens", 1, u64::from(u32::MAX))?;
            match (a, b) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::invalid_param(
                        "max_tokens",
                        "set max_completion_tokens or max_tokens, not both",
                    ))
                }
                (a, b) => b.or(a),
            }
        }
        Kind::Completion => integer(&map, "max_tokens", 1, u64::from(u32::MAX))?,
    };

    let logprobs = match kind {
        Kind::Chat => {
            let on = boolean(&map, "logprobs")?.unwrap_or(false);
            let top = integer(&map, "top_logprobs", 0, MAX_TOP_LOGPROBS)?;
            match (on, top) {
                (false, Some(_)) => {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        "top_logprobs requires logprobs: true",
                    ))
                }
                (true, top) => Some(top.unwrap_or(0) as usize),
                (false, None) => None,
            }
        }
        Kind::Completion => {
            integer(&map, "logprobs", 0, MAX_COMPLETION_LOGPROBS)?.map(|k| k as usize)
        }
    };

    let n = integer(&map, "n", 1, MAX_N)?.unwrap_or(1) as usize;
    let stream = boolean(&map, "stream")?.unwrap_or(false);
    let include_usage = stream_options(&map, stream)?;
    if let Some(v) = get(&map, "user") {
        if !v.is_string() {
            return Err(ApiError::invalid_param("user", "must be a string"));
        }
    }
    let max_reasoning_tokens =
        integer(&map, "max_reasoning_tokens", 0, u64::from(u32::MAX))?.map(|v| v as usize);
    let knowledge = get(&map, "knowledge")
        .map(super::rag::parse_knowledge)
        .transpose()?;

    Ok(Parsed {
        kind,
        model,
        request: GenerateRequest {
            prompt,
            max_tokens: max_tokens.map(|v| v as usize),
            sampling,
            stop: stops(&map)?,
            max_reasoning_tokens,
            min_tokens: 0,
            logprobs,
        },
        n,
        stream,
        include_usage,
        knowledge,
    })
}

/// A present, non-null value (`null` means "default", as in OpenAI's API).
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn number(map: &Map<String, Value>, key: &str, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    let Some(v) = get(map, key) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| ApiError::invalid_param(key, format!("`{key}` must be a number")))?;
    if !(f64::from(lo)..=f64::from(hi)).contains(&x) {
        return Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be between {lo} and {hi}, got {x}"),
        ));
    }
    Ok(Some(x as f32))
}

fn integer(map: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    let Some(v) = get(map, key) else {
        return Ok(None);
    };
    let x = v.as_u64().ok_or_else(|| {
        ApiError::invalid_param(key, format!("`{key}` must be a non-negative integer"))
    })?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be between {lo} and {hi}, got {x}"),
        ));
    }
    Ok(Some(x))
}

fn boolean(map: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be a boolean"),
        )),
    }
}

fn stops(map: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list = match get(map, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid_param("stop", "stop must be strings"))?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOP} stop strings"),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    Ok(list)
}

fn logit_bias(map: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = get(map, "logit_bias") else {
        return Ok(Vec::new());
    };
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid_param("logit_bias", "logit_bias must map token ids to biases")
    })?;
    obj.iter()
        .map(|(id, bias)| {
            let id: u32 = id.parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias key `{id}` is not a token id"),
                )
            })?;
            let b = bias
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "logit_bias",
                        format!("bias of token {id} must be a number in -100..100"),
                    )
                })?;
            Ok((id, b as f32))
        })
        .collect()
}

/// `stream_options.include_usage`; the object is only valid with `stream: true`.
fn stream_options(map: &Map<String, Value>, stream: bool) -> Result<bool, ApiError> {
    let Some(v) = get(map, "stream_options") else {
        return Ok(false);
    };
    if !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid_param("stream_options", "stream_options must be an object")
    })?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "include_usage") {
        return Err(ApiError::unknown_param(&format!("stream_options.{k}")));
    }
    Ok(boolean(obj, "include_usage")
        .map_err(|_| {
            ApiError::invalid_param(
                "stream_options.include_usage",
                "include_usage must be a boolean",
            )
        })?
        .unwrap_or(false))
}

/// Message keys passed to the chat template as they are (tool-aware templates read them).
const MESSAGE_PASSTHROUGH: &[&str] = &["name", "tool_calls", "tool_call_id"];
/// Message keys accepted and dropped: DeepSeek-R1 guidance is to not feed earlier reasoning
/// back into the conversation, and clients echo it from our own responses.
const MESSAGE_DROPPED: &[&str] = &["reasoning_content", "reasoning", "refusal"];

fn messages(map: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let arr = match get(map, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_param(
                "messages",
                "messages must not be empty",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "messages",
                "messages must be an array",
            ))
        }
        None => {
            return Err(ApiError::invalid_param(
                "messages",
                "you must provide messages",
            ))
        }
    };
    arr.iter().enumerate().map(|(i, m)| message(i, m)).collect()
}

fn message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let at = |k: &str| format!("messages[{i}].{k}");
    let obj = m
        .as_object()
        .ok_or_else(|| ApiError::invalid_param(&format!("messages[{i}]"), "must be an object"))?;
    let role = match obj.get("role").and_then(Value::as_str) {
        // OpenAI's newer name for the system role; chat templates only know `system`.
        Some("developer") => "system",
        Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
        Some(r) => {
            return Err(ApiError::invalid_param(
                &at("role"),
                format!("unknown role `{r}`"),
            ))
        }
        None => return Err(ApiError::invalid_param(&at("role"), "role is required")),
    };
    let content = match obj.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].content[{j}]"),
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            Some(text)
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                &at("content"),
                "content must be a string or an array of text parts",
            ))
        }
    };
    if content.is_none() && !(role == "assistant" && obj.contains_key("tool_calls")) {
        return Err(ApiError::invalid_param(
            &at("content"),
            "content is required",
        ));
    }
    let mut extra = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "role" | "content" => {}
            k if MESSAGE_PASSTHROUGH.contains(&k) => {
                extra.insert(k.to_string(), v.clone());
            }
            k if MESSAGE_DROPPED.contains(&k) => {}
            k => return Err(ApiError::unknown_param(&at(k))),
        }
    }
    Ok(ChatMessage {
        role: role.to_string(),
        content,
        extra,
    })
}

fn completion_prompt(map: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "prompt must be a string, an array with one string, or an array of token ids",
        )
    };
    match get(map, "prompt") {
        None => Err(ApiError::invalid_param(
            "prompt",
            "you must provide a prompt",
        )),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Prompt::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => a
            .iter()
            .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<Vec<u32>>>()
            .map(Prompt::Ids)
            .ok_or_else(bad),
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            Err(ApiError::invalid_param(
                "prompt",
                "batched prompts are not supported; send one prompt per request (or use n)",
            ))
        }
        Some(_) => Err(bad()),
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
pub fn usage(prompt_tokens: usize, outs: &[&GenerateOutput]) -> Value {
    let completion: usize = outs.iter().map(|o| o.completion_tokens).sum();
    let reasoning: usize = outs.iter().map(|o| o.reasoning_tokens).sum();
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    })
}

fn chat_logprob_entry(token: &str, logprob: f32) -> Value {
    json!({
        "token": token,
        "logprob": finite(logprob),
        "bytes": token.as_bytes(),
    })
}

/// `-inf` is not JSON; OpenAI reports -9999 for "impossible".
fn finite(x: f32) -> f64 {
    if x.is_finite() {
        f64::from(x)
    } else {
        -9999.0
    }
}

/// Chat `logprobs.content` entries.
pub fn chat_logprobs(list: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = list
        .iter()
        .map(|l| {
            let mut e = chat_logprob_entry(&l.token, l.logprob);
            e["top_logprobs"] = l
                .top
                .iter()
                .map(|(_, t, lp)| chat_logprob_entry(t, *lp))
                .collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Legacy completions `logprobs` object; `offset` is the text offset of the first token.
pub fn completion_logprobs(list: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for l in list {
        tokens.push(Value::from(l.token.clone()));
        lps.push(Value::from(finite(l.logprob)));
        let top: Map<String, Value> = l
            .top
            .iter()
            .map(|(_, t, lp)| (t.clone(), Value::from(finite(*lp))))
            .collect();
        tops.push(Value::Object(top));
        offsets.push(Value::from(offset));
        offset += l.token.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}

/// A whole (non-streamed) response. `outs[i]` is choice `i`.
pub fn response(p: &Parsed, id: &str, created: u64, outs: &[GenerateOutput]) -> Value {
    let prompt_tokens = outs.first().map_or(0, |o| o.prompt_tokens);
    let refs: Vec<&GenerateOutput> = outs.iter().collect();
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| match p.kind {
            Kind::Chat => {
                let mut message = json!({"role": "assistant", "content": o.text});
                if let Some(r) = &o.reasoning {
                    message["reasoning_content"] = Value::from(r.clone());
                    message["reasoning"] = Value::from(r.clone());
                }
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": o.logprobs.as_deref().map(chat_logprobs),
                    "finish_reason": finish_reason(o.finish_reason),
                })
            }
            Kind::Completion => json!({
                "index": i,
                "text": completion_text(o),
                "logprobs": o.logprobs.as_deref().map(|l| completion_logprobs(l, 0)),
                "finish_reason": finish_reason(o.finish_reason),
            }),
        })
        .collect();
    json!({
        "id": id,
        "object": match p.kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
        "created": created,
        "model": p.model,
        "choices": choices,
        "usage": usage(prompt_tokens, &refs),
    })
}

/// Completions return the generated text as written: reasoning (if the prompt opened one)
/// followed by the answer.
fn completion_text(o: &GenerateOutput) -> String {
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
}

impl Chunks<'_> {
    fn envelope(&self, choices: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": match self.parsed.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.parsed.model,
            "choices": choices,
        });
        if self.parsed.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage is requested.
            v["usage"] = Value::Null;
        }
        v
    }

    /// A chunk for choice `index`.
    pub fn delta(&self, index: usize, d: &Delta<'_>, text_offset: usize) -> Value {
        let has_lp = !d.logprobs.is_empty();
        let choice = match self.parsed.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if d.role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(c) = d.content {
                    delta.insert("content".into(), c.into());
                }
                if let Some(r) = d.reasoning {
                    delta.insert("reasoning_content".into(), r.into());
                    delta.insert("reasoning".into(), r.into());
                }
                json!({
                    "index": index,
                    "delta": delta,
                    "logprobs": if has_lp { chat_logprobs(d.logprobs) } else { Value::Null },
                    "finish_reason": d.finish.map(finish_reason),
                })
            }
            Kind::Completion => {
                let text = format!(
                    "{}{}",
                    d.reasoning.unwrap_or_default(),
                    d.content.unwrap_or_default()
                );
                json!({
                    "index": index,
                    "text": text,
                    "logprobs": if has_lp { completion_logprobs(d.logprobs, text_offset) } else { Value::Null },
                    "finish_reason": d.finish.map(finish_reason),
                })
            }
        };
        self.envelope(Value::Array(vec![choice]))
    }

    /// The final usage chunk (`stream_options.include_usage`): empty choices.
    pub fn usage(&self, prompt_tokens: usize, outs: &[&GenerateOutput]) -> Value {
        let mut v = self.envelope(Value::Array(Vec::new()));
        v["usage"] = usage(prompt_tokens, outs);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Parsed, ApiError> {
        parse(Kind::Chat, body.as_bytes())
    }

    const MSG: &str = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn minimal_chat_uses_r1_defaults() {
        let p = chat(&format!("{{{MSG}}}")).unwrap();
        assert_eq!(p.model, "m");
        assert_eq!((p.n, p.stream, p.include_usage), (1, false, false));
        assert_eq!(p.request.sampling.temperature, 0.6);
        assert_eq!(p.request.max_tokens, None);
        assert!(p.request.logprobs.is_none());
        match &p.request.prompt {
            Prompt::Messages(m) => assert_eq!(m[0].content.as_deref(), Some("hi")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_parameters_are_read() {
        let p = chat(&format!(
            r#"{{{MSG},"temperature":0,"top_p":0.5,"top_k":7,"min_p":0.1,"seed":42,
            "stop":["a","b"],"max_completion_tokens":9,"presence_penalty":1,"frequency_penalty":-1,
            "logit_bias":{{"5":-100}},"logprobs":true,"top_logprobs":3,"n":2,"stream":true,
            "stream_options":{{"include_usage":true}},"user":"u","max_reasoning_tokens":4}}"#
        ))
        .unwrap();
        let r = &p.request;
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(
            (r.sampling.top_p, r.sampling.top_k, r.sampling.min_p),
            (0.5, 7, 0.1)
        );
        assert_eq!(r.sampling.seed, Some(42));
        assert_eq!(r.stop, vec!["a", "b"]);
        assert_eq!(r.max_tokens, Some(9));
        assert_eq!(r.sampling.logit_bias, vec![(5, -100.0)]);
        assert_eq!(r.logprobs, Some(3));
        assert_eq!(r.max_reasoning_tokens, Some(4));
        assert_eq!((p.n, p.stream, p.include_usage), (2, true, true));
        assert_eq!(p.request_for(1).sampling.seed, Some(43));
    }

    #[test]
    fn unknown_parameters_are_named() {
        for (body, param) in [
            (format!(r#"{{{MSG},"tools":[]}}"#), "tools"),
            (
                format!(r#"{{{MSG},"response_format":{{}}}}"#),
                "response_format",
            ),
            (
                format!(r#"{{{MSG},"stream":true,"stream_options":{{"x":1}}}}"#),
                "stream_options.x",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi","foo":1}]}"#.into(),
                "messages[0].foo",
            ),
        ] {
            let e = chat(&body).unwrap_err();
            assert_eq!(e.status, hyper::StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (extra, param) in [
            (r#""temperature":3"#, "temperature"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""n":0"#, "n"),
            (r#""n":17"#, "n"),
            (r#""seed":-1"#, "seed"),
            (r#""stop":[1]"#, "stop"),
            (r#""stop":"""#, "stop"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":5,"max_completion_tokens":6"#, "max_tokens"),
            (r#""logit_bias":{"x":1}"#, "logit_bias"),
            (r#""logit_bias":{"1":200}"#, "logit_bias"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (
                r#""stream_options":{"include_usage":true}"#,
                "stream_options",
            ),
            (r#""stream":"yes""#, "stream"),
            (r#""user":5"#, "user"),
        ] {
            let e = chat(&format!("{{{MSG},{extra}}}")).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e:?}");
        }
    }

    #[test]
    fn malformed_bodies() {
        let e = parse(Kind::Chat, b"{not json").unwrap_err();
        assert!(e.param.is_none() && e.message.contains("JSON"), "{e:?}");
        let e = parse(Kind::Chat, b"[1]").unwrap_err();
        assert!(e.message.contains("object"));
        let e = parse(Kind::Chat, b"{\"model\":\"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e:?}");
        let e = chat(r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = chat(r#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = chat(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn message_forms() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"sys"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
            {"role":"assistant","content":"x","reasoning_content":"old thoughts"}]}"#,
        )
        .unwrap();
        let Prompt::Messages(m) = p.request.prompt else {
            panic!()
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content.as_deref(), Some("ab"));
        assert!(m[2].extra.is_empty());
        let e = chat(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
    }

    #[test]
    fn completion_prompts() {
        let c = |b: &str| parse(Kind::Completion, b.as_bytes());
        assert!(matches!(
            c(r#"{"model":"m","prompt":"hi"}"#).unwrap().request.prompt,
            Prompt::Text(ref t) if t == "hi"
        ));
        assert!(matches!(
            c(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap().request.prompt,
            Prompt::Ids(ref ids) if ids == &[1, 2, 3]
        ));
        assert_eq!(
            c(r#"{"model":"m","prompt":["a","b"]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            c(r#"{"model":"m","prompt":"a","echo":true}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("echo")
        );
        assert_eq!(
            c(r#"{"model":"m","prompt":"a","messages":[]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("messages")
        );
        let p = c(r#"{"model":"m","prompt":"a","logprobs":2}"#).unwrap();
        assert_eq!(p.request.logprobs, Some(2));
    }

    fn out(text: &str, reasoning: Option<&str>) -> GenerateOutput {
        GenerateOutput {
            token_ids: vec![1, 2],
            text: text.into(),
            reasoning: reasoning.map(str::to_string),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 5,
            completion_tokens: 2,
            reasoning_tokens: 1,
            logprobs: None,
        }
    }

    #[test]
    fn chat_response_shape() {
        let p = chat(&format!("{{{MSG},\"n\":2}}")).unwrap();
        let v = response(
            &p,
            "chatcmpl-1",
            7,
            &[out("a", Some("r")), out("b", Some(""))],
        );
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "a");
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "r");
        assert_eq!(v["choices"][0]["message"]["reasoning"], "r");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(v["usage"]["total_tokens"], 9);
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        let plain = response(&p, "x", 7, &[out("a", None)]);
        assert!(plain["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    #[test]
    fn stream_chunks() {
        let p = chat(&format!(
            "{{{MSG},\"stream\":true,\"stream_options\":{{\"include_usage\":true}}}}"
        ))
        .unwrap();
        let c = Chunks {
            parsed: &p,
            id: "id",
            created: 1,
        };
        let first = c.delta(
            0,
            &Delta {
                role: true,
                content: Some(""),
                ..Delta::default()
            },
            0,
        );
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let r = c.delta(
            0,
            &Delta {
                reasoning: Some("think"),
                ..Delta::default()
            },
            0,
        );
        assert_eq!(r["choices"][0]["delta"]["reasoning_content"], "think");
        assert!(r["choices"][0]["delta"].get("content").is_none());
        let o = out("a", None);
        let u = c.usage(5, &[&o]);
        assert_eq!(u["choices"].as_array().unwrap().len(), 0);
        assert_eq!(u["usage"]["total_tokens"], 7);
    }

    #[test]
    fn logprob_json() {
        let l = vec![TokenLogprob {
            token_id: 3,
            token: "hi".into(),
            logprob: -0.5,
            top: vec![(3, "hi".into(), -0.5), (4, "yo".into(), f32::NEG_INFINITY)],
        }];
        let c = chat_logprobs(&l);
        assert_eq!(c["content"][0]["token"], "hi");
        assert_eq!(c["content"][0]["top_logprobs"][1]["logprob"], -9999.0);
        let t = completion_logprobs(&l, 4);
        assert_eq!(t["text_offset"][0], 4);
        assert_eq!(t["top_logprobs"][0]["yo"], -9999.0);
    }
}
