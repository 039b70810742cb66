//! OpenAI wire format: request validation into engine requests, and response / stream chunk
//! bodies. The bodies themselves are the types of [`wire::chat`](super::wire::chat).
//!
//! Requests are deserialized into types that deny unknown fields, so a parameter this server
//! does not implement is a 400 that names it instead of being silently ignored (a client
//! relying on e.g. `tools` must find out). Values are then checked one by one, each error
//! naming its parameter.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::tools::{ToolParsing, ToolRequest};
use super::wire::chat::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionRequest, ChatDelta, ChatLogprobs,
    ChatMessage as WireMessage, CompletionChoice, CompletionChunkChoice, CompletionLogprobs,
    CompletionRequest, CompletionTokensDetails, Content, PromptInput, Response, ResponseFormat,
    Stop, StreamChunk, StreamOptions, ToolCallDelta, ToolCallParam, TopLogprob, Usage,
};
use super::wire::{self, top};
use crate::engine::generate::Prompt;
use crate::engine::grammar::Grammar;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::{FinishReason, GenerateOutput, GenerateRequest, TokenLogprob};

mod body;
pub use body::*;

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
    /// Web search (`web_search`, chat only), see `rag`.
    pub web: Option<super::rag::WebParam>,
    /// `tools` and how they are used (chat only), see `tools`.
    pub tools: Option<ToolRequest>,
    /// How calls are read from the output; set once the model's template is known
    /// ([`tools::resolve`](super::tools::resolve)). `None`: the output is all content.
    pub tool_parsing: Option<ToolParsing>,
    /// `response_format` (chat only): the grammar of the answer, compiled for the model
    /// once it is known.
    pub response_format: Option<Grammar>,
}

impl Parsed {
    /// The engine request of choice `i`.
    pub fn request_for(&self, i: usize) -> GenerateRequest {
        let mut r = self.request.clone();
        r.sampling.seed = self.request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        r
    }
}

/// The parameters both routes share, moved out of either request type.
struct Common {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    min_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_reasoning_tokens: Option<u64>,
}

macro_rules! common {
    ($r:expr) => {
        Common {
            temperature: $r.temperature,
            top_p: $r.top_p,
            top_k: $r.top_k,
            min_p: $r.min_p,
            seed: $r.seed,
            stop: $r.stop,
            presence_penalty: $r.presence_penalty,
            frequency_penalty: $r.frequency_penalty,
            repetition_penalty: $r.repetition_penalty,
            logit_bias: $r.logit_bias,
            n: $r.n,
            stream: $r.stream,
            stream_options: $r.stream_options,
            max_reasoning_tokens: $r.max_reasoning_tokens,
        }
    };
}

/// The 400 for a value of the wrong JSON type at `path`, worded per parameter.
fn type_error(kind: Kind, path: &str) -> ApiError {
    let key = top(path);
    let msg = match key {
        "model" | "user" => "must be a string".to_string(),
        "temperature" | "top_p" | "min_p" | "presence_penalty" | "frequency_penalty"
        | "repetition_penalty" => format!("`{key}` must be a number"),
        "logprobs" if kind == Kind::Chat => format!("`{key}` must be a boolean"),
        "stream" | "echo" => format!("`{key}` must be a boolean"),
        "top_k"
        | "seed"
        | "max_tokens"
        | "max_completion_tokens"
        | "top_logprobs"
        | "n"
        | "max_reasoning_tokens"
        | "logprobs" => {
            format!("`{key}` must be a non-negative integer")
        }
        "stop" => "stop must be a string or an array of strings".to_string(),
        "logit_bias" => "logit_bias must map token ids to biases (numbers in -100..100)".into(),
        "stream_options" if path == "stream_options" => {
            "stream_options must be an object".to_string()
        }
        "stream_options" => {
            return ApiError::invalid_param(
                "stream_options.include_usage",
                "include_usage must be a boolean",
            )
        }
        "knowledge" => return super::rag::knowledge_type_error(path),
        "web_search" => return super::rag::web_type_error(),
        "tools" | "tool_choice" | "parallel_tool_calls" => return super::tools::type_error(path),
        "response_format" => {
            "response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}".into()
        }
        "messages" => return message_type_error(path),
        "prompt" => {
            "prompt must be a string, an array with one string, or an array of token ids".into()
        }
        _ => "invalid value".to_string(),
    };
    ApiError::invalid_param(key, msg)
}

/// Type errors inside `messages`, named down to the message's field.
fn message_type_error(path: &str) -> ApiError {
    let Some(rest) = path.strip_prefix("messages[") else {
        return ApiError::invalid_param("messages", "messages must be an array");
    };
    let Some((i, field)) = rest.split_once(']') else {
        return ApiError::invalid_param("messages", "messages must be an array");
    };
    let at = |k: &str| format!("messages[{i}].{k}");
    match field.trim_start_matches('.').split(['.', '[']).next() {
        Some("role") => ApiError::invalid_param(&at("role"), "role must be a string"),
        Some("content") => ApiError::invalid_param(
            &at("content"),
            "content must be a string or an array of text parts",
        ),
        Some("tool_calls") => ApiError::invalid_param(
            &at("tool_calls"),
            "tool_calls must be a list of {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}} with string arguments",
        ),
        _ => ApiError::invalid_param(&format!("messages[{i}]"), "must be an object"),
    }
}

/// Parse and validate a request body.
pub fn parse(kind: Kind, body: &[u8]) -> Result<Parsed, ApiError> {
    let invalid = |p: &str| type_error(kind, p);
    let (model, common, prompt, max_tokens, logprobs, knowledge, web, tools, response_format) =
        match kind {
            Kind::Chat => {
                let r: ChatCompletionRequest = wire::parse(body, invalid)?;
                let model = wire::model_name(r.model)?;
                let messages = messages(r.messages)?;
                let logprobs = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
                    (false, Some(_)) => {
                        return Err(ApiError::invalid_param(
                            "top_logprobs",
                            "top_logprobs requires logprobs: true",
                        ))
                    }
                    (true, top) => Some(range(
                        "top_logprobs",
                        top.unwrap_or(0),
                        0,
                        MAX_TOP_LOGPROBS,
                    )?),
                    (false, None) => None,
                };
                let max_tokens = match (r.max_tokens, r.max_completion_tokens) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(ApiError::invalid_param(
                            "max_tokens",
                            "set max_completion_tokens or max_tokens, not both",
                        ))
                    }
                    (a, b) => b.or(a),
                };
                let knowledge = r.knowledge.map(super::rag::knowledge).transpose()?;
                let web = r
                    .web_search
                    .map(super::rag::web_param)
                    .transpose()?
                    .flatten();
                let tools =
                    super::tools::validate(r.tools, r.tool_choice, r.parallel_tool_calls, body)?;
                let response_format = r
                    .response_format
                    .map(response_format)
                    .transpose()?
                    .flatten();
                let max_tokens = opt_range(
                    if r.max_completion_tokens.is_some() {
                        "max_completion_tokens"
                    } else {
                        "max_tokens"
                    },
                    max_tokens,
                    1,
                    u64::from(u32::MAX),
                )?;
                let c = common!(r);
                (
                    model,
                    c,
                    Prompt::Messages(messages),
                    max_tokens,
                    logprobs,
                    knowledge,
                    web,
                    tools,
                    response_format,
                )
            }
            Kind::Completion => {
                let r: CompletionRequest = wire::parse(body, invalid)?;
                let model = wire::model_name(r.model)?;
                let prompt = completion_prompt(r.prompt)?;
                if r.echo == Some(true) {
                    return Err(ApiError::invalid_param(
                        "echo",
                        "echo is not supported; the prompt is not repeated in the output",
                    ));
                }
                let logprobs = opt_range("logprobs", r.logprobs, 0, MAX_COMPLETION_LOGPROBS)?;
                let max_tokens = opt_range("max_tokens", r.max_tokens, 1, u64::from(u32::MAX))?;
                (
                    model,
                    common!(r),
                    prompt,
                    max_tokens,
                    logprobs,
                    None,
                    None,
                    None,
                    None,
                )
            }
        };
    let c = common;

    let mut sampling = SamplingParams::r1_defaults();
    if let Some(t) = number("temperature", c.temperature, 0.0, 2.0)? {
        sampling.temperature = t;
    }
    if let Some(p) = number("top_p", c.top_p, 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid_param("top_p", "must be in (0, 1]"));
        }
        sampling.top_p = p;
    }
    if let Some(k) = opt_range("top_k", c.top_k, 0, u64::from(u32::MAX))? {
        sampling.top_k = k;
    }
    if let Some(p) = number("min_p", c.min_p, 0.0, 1.0)? {
        sampling.min_p = p;
    }
    if let Some(p) = number("presence_penalty", c.presence_penalty, -2.0, 2.0)? {
        sampling.presence_penalty = p;
    }
    if let Some(p) = number("frequency_penalty", c.frequency_penalty, -2.0, 2.0)? {
        sampling.frequency_penalty = p;
    }
    if let Some(p) = number("repetition_penalty", c.repetition_penalty, 0.0, 10.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                "must be greater than 0",
            ));
        }
        sampling.repetition_penalty = p;
    }
    sampling.seed = c.seed;
    sampling.logit_bias = logit_bias(c.logit_bias)?;

    let n = opt_range("n", c.n, 1, MAX_N)?.unwrap_or(1);
    let stream = c.stream.unwrap_or(false);
    let include_usage = stream_options(c.stream_options, stream)?;
    let max_reasoning_tokens = opt_range(
        "max_reasoning_tokens",
        c.max_reasoning_tokens,
        0,
        u64::from(u32::MAX),
    )?;

    Ok(Parsed {
        kind,
        model,
        request: GenerateRequest {
            prompt,
            max_tokens,
            sampling,
            stop: stops(c.stop)?,
            max_reasoning_tokens,
            min_tokens: 0,
            logprobs,
            tools: tools.as_ref().map(|t| t.tools.clone()),
            // Compiled against the model once it is known (`chat::inference`).
            constraint: None,
        },
        n,
        stream,
        include_usage,
        knowledge,
        web,
        tools,
        tool_parsing: None,
        response_format,
    })
}

/// `response_format`: the grammar the answer must follow, `None` for plain text.
fn response_format(f: ResponseFormat) -> Result<Option<Grammar>, ApiError> {
    let bad = |m: &str| ApiError::invalid_param("response_format", m);
    match (f.kind.as_deref(), f.json_schema) {
        (Some("text"), None) => Ok(None),
        (Some("json_object"), None) => Ok(Some(Grammar::JsonSchema(
            serde_json::json!({"type": "object"}),
        ))),
        (Some("json_schema"), Some(js)) => {
            let name = js.name.unwrap_or_default();
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema.name",
                    "the name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                ));
            }
            match js.schema {
                None => Ok(Some(Grammar::JsonSchema(serde_json::json!({})))),
                Some(s) if s.is_object() || s.is_boolean() => Ok(Some(Grammar::JsonSchema(s))),
                Some(_) => Err(ApiError::invalid_param(
                    "response_format.json_schema.schema",
                    "schema must be a JSON Schema object",
                )),
            }
        }
        (Some("json_schema"), None) => Err(bad(
            "type json_schema needs `json_schema`: {\"name\", \"schema\"}",
        )),
        (Some("text" | "json_object"), Some(_)) => {
            Err(bad("`json_schema` goes only with type json_schema"))
        }
        (Some(t), _) => Err(bad(&format!(
            "response_format type `{t}` is not supported; use text, json_object or json_schema"
        ))),
        (None, _) => Err(bad(
            "response_format needs a type: text, json_object or json_schema",
        )),
    }
}

fn number(key: &str, v: Option<f64>, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    let Some(x) = v else {
        return Ok(None);
    };
    if !(f64::from(lo)..=f64::from(hi)).contains(&x) {
        return Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be between {lo} and {hi}, got {x}"),
        ));
    }
    Ok(Some(x as f32))
}

fn range(key: &str, x: u64, lo: u64, hi: u64) -> Result<usize, ApiError> {
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::invalid_param(
            key,
            format!("`{key}` must be between {lo} and {hi}, got {x}"),
        ));
    }
    Ok(x as usize)
}

fn opt_range(key: &str, v: Option<u64>, lo: u64, hi: u64) -> Result<Option<usize>, ApiError> {
    v.map(|x| range(key, x, lo, hi)).transpose()
}

fn stops(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => return Ok(Vec::new()),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(l)) => l,
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

fn logit_bias(
    map: Option<std::collections::BTreeMap<String, f64>>,
) -> Result<Vec<(u32, f32)>, ApiError> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(id, b)| {
            let id: u32 = id.parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias key `{id}` is not a token id"),
                )
            })?;
            if !(-100.0..=100.0).contains(&b) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("bias of token {id} must be a number in -100..100"),
                ));
            }
            Ok((id, b as f32))
        })
        .collect()
}

/// `stream_options.include_usage`; the object is only valid with `stream: true`.
fn stream_options(o: Option<StreamOptions>, stream: bool) -> Result<bool, ApiError> {
    let Some(o) = o else {
        return Ok(false);
    };
    if !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(o.include_usage.unwrap_or(false))
}

fn messages(list: Option<Vec<WireMessage>>) -> Result<Vec<ChatMessage>, ApiError> {
    let empty = "messages must not be empty";
    wire::required("messages", list, Vec::is_empty, "messages", empty)?
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, m: WireMessage) -> Result<ChatMessage, ApiError> {
    let at = |k: &str| format!("messages[{i}].{k}");
    let role = match m.role.as_deref() {
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
    let content = match m.content {
        None => None,
        Some(Content::Text(s)) => Some(s),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
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
    };
    if m.tool_calls.is_some() && role != "assistant" {
        return Err(ApiError::invalid_param(
            &at("tool_calls"),
            "only assistant messages carry tool_calls",
        ));
    }
    let tool_calls = m
        .tool_calls
        .map(|list| tool_calls(&at("tool_calls"), list))
        .transpose()?;
    if content.is_none() && tool_calls.is_none() {
        return Err(ApiError::invalid_param(
            &at("content"),
            "content is required",
        ));
    }
    // Passed to the chat template as they are (tool-aware templates read them). Earlier
    // reasoning (`reasoning_content`, `reasoning`) and `refusal` are dropped: DeepSeek-R1
    // guidance is to not feed earlier reasoning back, and clients echo it from our answers.
    let mut extra = Map::new();
    for (k, v) in [
        ("name", m.name),
        ("tool_calls", tool_calls),
        ("tool_call_id", m.tool_call_id),
    ] {
        if let Some(v) = v {
            extra.insert(k.to_string(), v);
        }
    }
    Ok(ChatMessage {
        role: role.to_string(),
        content,
        extra,
    })
}

/// An assistant message's `tool_calls`, checked, as the chat template sees them (the OpenAI
/// shape, `arguments` a string).
fn tool_calls(at: &str, list: Vec<ToolCallParam>) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.into_iter().enumerate() {
        let at = |k: &str| format!("{at}[{j}].{k}");
        if c.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(ApiError::invalid_param(
                &at("type"),
                "only `function` tool calls are supported",
            ));
        }
        let Some(f) = c.function else {
            return Err(ApiError::invalid_param(
                &at("function"),
                "function is required",
            ));
        };
        let (Some(name), Some(arguments)) = (f.name, f.arguments) else {
            return Err(ApiError::invalid_param(
                &at("function"),
                "function needs a name and arguments (a JSON string)",
            ));
        };
        let mut call = Map::new();
        if let Some(id) = c.id {
            call.insert("id".into(), Value::String(id));
        }
        call.insert("type".into(), Value::String("function".into()));
        call.insert(
            "function".into(),
            serde_json::json!({"name": name, "arguments": arguments}),
        );
        out.push(Value::Object(call));
    }
    Ok(Value::Array(out))
}

fn completion_prompt(p: Option<PromptInput>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "prompt must be a string, an array with one string, or an array of token ids",
        )
    };
    match p {
        None => Err(ApiError::invalid_param(
            "prompt",
            "you must provide a prompt",
        )),
        Some(PromptInput::Text(s)) => Ok(Prompt::Text(s)),
        Some(PromptInput::Texts(mut a)) if a.len() == 1 => Ok(Prompt::Text(a.remove(0))),
        Some(PromptInput::Texts(a)) if a.len() > 1 => Err(ApiError::invalid_param(
            "prompt",
            "batched prompts are not supported; send one prompt per request (or use n)",
        )),
        Some(PromptInput::Texts(_)) => Err(bad()),
        Some(PromptInput::Ids(ids)) => ids
            .into_iter()
            .map(|x| u32::try_from(x).ok())
            .collect::<Option<Vec<u32>>>()
            .map(Prompt::Ids)
            .ok_or_else(bad),
    }
}

/// `finish_reason` of a chat choice: `tool_calls` when the answer ended with calls.
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
    fn nested_unknown_and_wrong_types_are_named_by_path() {
        for (extra, param, code) in [
            (
                r#""knowledge":{"collections":["hr"],"filter":1}"#,
                "knowledge.filter",
                "unknown_parameter",
            ),
            (
                r#""knowledge":{"collections":[1]}"#,
                "knowledge.collections",
                "invalid_value",
            ),
            (r#""knowledge":[]"#, "knowledge", "invalid_value"),
            (
                r#""stream":true,"stream_options":{"include_usage":1}"#,
                "stream_options.include_usage",
                "invalid_value",
            ),
            (r#""logit_bias":{"5":"x"}"#, "logit_bias", "invalid_value"),
            (
                r#""max_reasoning_tokens":1.5"#,
                "max_reasoning_tokens",
                "invalid_value",
            ),
        ] {
            let e = chat(&format!("{{{MSG},{extra}}}")).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e:?}");
            assert_eq!(e.code, Some(code), "{extra}");
        }
        for (body, param) in [
            (
                r#"{"model":"m","messages":[{"role":1,"content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (r#"{"model":"m","messages":[7]}"#, "messages[0]"),
            (r#"{"model":"m","messages":{}}"#, "messages"),
            (r#"{"model":7,"messages":[]}"#, "model"),
        ] {
            assert_eq!(
                chat(body).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
        // A name passed through to the template keeps its value, null included.
        let p = chat(r#"{"model":"m","messages":[{"role":"user","content":"x","name":null}]}"#)
            .unwrap();
        let Prompt::Messages(m) = p.request.prompt else {
            panic!()
        };
        assert_eq!(m[0].extra.get("name"), Some(&Value::Null));
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
    fn assistant_tool_calls_are_checked_and_passed_on() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"w?"},
            {"role":"assistant","tool_calls":[{"id":"call_1","type":"function",
              "function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}"#,
        )
        .unwrap();
        let Prompt::Messages(m) = p.request.prompt else {
            panic!()
        };
        assert_eq!(m[1].content, None);
        assert_eq!(
            m[1].extra["tool_calls"],
            serde_json::json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}])
        );
        assert_eq!(m[2].extra["tool_call_id"], "call_1");
        assert!(p.tools.is_none() && p.request.tools.is_none());
        for (msg, param) in [
            (
                r#"{"role":"user","content":"x","tool_calls":[]}"#,
                "messages[0].tool_calls",
            ),
            (
                r#"{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}"#,
                "messages[0].tool_calls[0].function",
            ),
            (
                r#"{"role":"assistant","tool_calls":[{"type":"code","function":{"name":"f","arguments":"{}"}}]}"#,
                "messages[0].tool_calls[0].type",
            ),
            (
                r#"{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":{}}}]}"#,
                "messages[0].tool_calls",
            ),
            (
                r#"{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}","x":1}}]}"#,
                "messages[0].tool_calls[0].function.x",
            ),
        ] {
            let e = chat(&format!(r#"{{"model":"m","messages":[{msg}]}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{msg}: {e:?}");
        }
    }

    #[test]
    fn tools_reach_the_engine_request() {
        let p = chat(&format!(
            r#"{{{MSG},"tools":[{{"type":"function","function":{{"name":"f","description":"d"}}}}],"tool_choice":"auto"}}"#
        ))
        .unwrap();
        let t = p.tools.as_ref().unwrap();
        assert_eq!(t.names, vec!["f"]);
        assert_eq!(p.request.tools.as_ref(), Some(&t.tools));
        assert!(matches!(
            &t.tools,
            crate::engine::template::OrderedJson::Array(a) if a.len() == 1
        ));
        assert!(
            p.tool_parsing.is_none(),
            "set only once the template is known"
        );
        let e = chat(&format!(r#"{{{MSG},"tools":{{}}}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        let e = chat(&format!(
            r#"{{{MSG},"tools":[{{"type":"function","function":{{"name":"f"}}}}],"tool_choice":5}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
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
            mask: None,
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
            Delta {
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
            Delta {
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
