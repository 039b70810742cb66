//! OpenAI tool calling on `/v1/chat/completions`: checking `tools` / `tool_choice` /
//! `parallel_tool_calls`, and turning the model's own call syntax (see
//! [`engine::toolcall`](crate::engine::toolcall)) into `message.tool_calls` and streamed
//! `delta.tool_calls`.
//!
//! `tool_choice: "required"` or a named function forces calls with constrained decoding (a
//! grammar of the model's own call syntax, see
//! [`engine::toolcall::grammar`](crate::engine::toolcall::grammar)): the answer is calls whose
//! arguments follow each function's `parameters`. With `tool_choice: "auto"` and a `strict`
//! function the model may answer in text, but a call it opens is constrained from its opening
//! marker on (the strict functions' arguments follow their schemas). `tool_choice: "none"` still shows the tools to the model (so the prompt,
//! and its cached prefix, stays the same across turns) but does not read calls from the
//! output: whatever the model writes is content.

use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::wire::chat::{FunctionCall, FunctionDelta, Tool, ToolCall, ToolCallDelta};
use crate::engine::template::{ChatTemplate, OrderedJson};
use crate::engine::toolcall::grammar::{call_grammar, trigger, CallMode, ToolSpec};
use crate::engine::toolcall::{Piece, ToolCallParser, ToolFormat};

/// Most tools per request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// Whether calls are read from the output, and whether they are forced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    None,
    /// One call or more (of any tool).
    Required,
    /// One call of this tool.
    Named(String),
}

/// The validated tool parameters of a request.
#[derive(Clone, Debug)]
pub struct ToolRequest {
    /// The `tools` list as the client wrote it (key order kept), for the chat template.
    pub tools: OrderedJson,
    pub names: Vec<String>,
    /// Each function's `parameters` schema, for forced calls.
    pub specs: Vec<ToolSpec>,
    /// Each function's `strict`.
    pub strict: Vec<bool>,
    pub choice: Choice,
    pub parallel: bool,
}

/// How to read calls from this request's output, once the model is known.
#[derive(Clone, Debug)]
pub struct ToolParsing {
    pub format: ToolFormat,
    pub names: Vec<String>,
    pub parallel: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// The 400 for a value of the wrong JSON type inside the tool parameters.
pub fn type_error(path: &str) -> ApiError {
    match super::wire::top(path) {
        "tool_choice" => invalid(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
        ),
        "parallel_tool_calls" => invalid("parallel_tool_calls", "must be a boolean"),
        _ => invalid(
            path,
            "tools must be a list of {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}",
        ),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Check the tool parameters of a chat request. `body` is the raw request, read again for
/// `tools` so that the template sees the client's key order.
pub fn validate(
    tools: Option<Vec<Tool>>,
    tool_choice: Option<Value>,
    parallel: Option<bool>,
    body: &[u8],
) -> Result<Option<ToolRequest>, ApiError> {
    let choice = match &tool_choice {
        None => Choice::Auto,
        Some(Value::String(s)) if s == "auto" => Choice::Auto,
        Some(Value::String(s)) if s == "none" => Choice::None,
        Some(Value::String(s)) if s == "required" => Choice::Required,
        Some(Value::Object(o)) => {
            let name = match (o.get("type"), o.get("function").and_then(|f| f.get("name"))) {
                (Some(Value::String(t)), Some(Value::String(n))) if t == "function" => n.clone(),
                _ => return Err(type_error("tool_choice")),
            };
            Choice::Named(name)
        }
        Some(_) => return Err(type_error("tool_choice")),
    };
    let Some(tools) = tools else {
        if tool_choice.is_some() {
            return Err(invalid(
                "tool_choice",
                "tool_choice is only allowed when tools are given",
            ));
        }
        if parallel.is_some() {
            return Err(invalid(
                "parallel_tool_calls",
                "parallel_tool_calls is only allowed when tools are given",
            ));
        }
        return Ok(None);
    };
    if tools.is_empty() || tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("tools must list 1 to {MAX_TOOLS} functions"),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(tools.len());
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    let mut strict: Vec<bool> = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        let at = |k: &str| format!("tools[{i}].{k}");
        match t.kind.as_deref() {
            Some("function") => {}
            Some(k) => {
                return Err(invalid(
                    &at("type"),
                    format!("tool type `{k}` is not supported; only `function`"),
                ))
            }
            None => return Err(invalid(&at("type"), "type is required (`function`)")),
        }
        let Some(f) = t.function else {
            return Err(invalid(&at("function"), "function is required"));
        };
        let name = f.name.unwrap_or_default();
        if !valid_name(&name) {
            return Err(invalid(
                &at("function.name"),
                "the name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if names.contains(&name) {
            return Err(invalid(
                &at("function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(invalid(
                &at("function.parameters"),
                "parameters must be a JSON Schema object",
            ));
        }
        strict.push(f.strict == Some(true));
        specs.push(ToolSpec {
            name: name.clone(),
            parameters: f.parameters,
        });
        names.push(name);
    }
    if let Choice::Named(n) = &choice {
        if !names.contains(n) {
            return Err(invalid(
                "tool_choice",
                format!("tool_choice names `{n}`, which is not one of the tools"),
            ));
        }
    }
    #[derive(Deserialize)]
    struct Raw {
        tools: OrderedJson,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("tools could not be read: {e}")))?;
    Ok(Some(ToolRequest {
        tools: raw.tools,
        names,
        specs,
        strict,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// The grammar of this request's calls in `format`, and the text it starts from when the
/// calls are optional: forced calls (`tool_choice` `required` or a named function) follow
/// every function's schema from the first answer token; with `auto` and a `strict`
/// function, a call the model opens follows the grammar from its opening marker (the strict
/// functions' arguments their schemas, the others any object). `None`: unconstrained.
pub fn call_constraint(
    req: &ToolRequest,
    format: ToolFormat,
) -> Result<Option<(String, Option<&'static str>)>, ApiError> {
    let mode = match &req.choice {
        Choice::Required => CallMode::Required {
            parallel: req.parallel,
        },
        Choice::Named(n) => CallMode::Named(n.clone()),
        Choice::Auto if req.strict.contains(&true) => CallMode::Optional {
            parallel: req.parallel,
        },
        Choice::Auto | Choice::None => return Ok(None),
    };
    if let CallMode::Optional { .. } = mode {
        let specs: Vec<ToolSpec> = req
            .specs
            .iter()
            .zip(&req.strict)
            .map(|(t, &strict)| ToolSpec {
                name: t.name.clone(),
                parameters: if strict { t.parameters.clone() } else { None },
            })
            .collect();
        let at = req.strict.iter().position(|&s| s).unwrap_or(0);
        let lark = call_grammar(format, &specs, &mode)
            .map_err(|e| invalid(&format!("tools[{at}].function.strict"), e))?;
        return Ok(Some((lark, trigger(format))));
    }
    call_grammar(format, &req.specs, &mode)
        .map(|g| Some((g, None)))
        .map_err(|e| invalid("tool_choice", e))
}

/// How to read this request's calls from the output of a model with `template`: `None`
/// without tools or with `tool_choice: none`. A template that does not render tools, or
/// whose call syntax is not one this server reads, refuses the request (400 naming `tools`).
pub fn resolve(
    req: Option<&ToolRequest>,
    template: &ChatTemplate,
) -> Result<Option<ToolParsing>, ApiError> {
    let Some(req) = req else { return Ok(None) };
    if !template.uses_tools() {
        return Err(invalid(
            "tools",
            "this model's chat template does not support tools",
        ));
    }
    if req.choice == Choice::None {
        return Ok(None);
    }
    let Some(format) = template.tool_format() else {
        return Err(invalid(
            "tools",
            "this model's chat template renders tools, but its tool-call format is not one \
             this server can read (DeepSeek, Hermes/Qwen <tool_call>, Llama 3 JSON)",
        ));
    };
    Ok(Some(ToolParsing {
        format,
        names: req.names.clone(),
        parallel: req.parallel,
    }))
}

/// A new call id: `call_` and 24 random letters and digits.
pub fn call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// What one choice's answer adds to the response.
#[derive(Debug)]
pub enum Out {
    Content(String),
    Call(ToolCallDelta),
}

/// Reads one choice's answer for calls, piece by piece: what the stream sends and what the
/// whole response is assembled from.
pub struct ToolStream {
    parser: ToolCallParser,
    parallel: bool,
    /// Calls passed on (with `parallel_tool_calls: false`, at most one).
    calls: usize,
}

impl ToolStream {
    pub fn new(p: &ToolParsing) -> Self {
        ToolStream {
            parser: ToolCallParser::new(p.format, p.names.clone()),
            parallel: p.parallel,
            calls: 0,
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// The next piece of the answer text.
    pub fn push(&mut self, text: &str) -> Vec<Out> {
        let pieces = self.parser.push(text);
        self.map(pieces)
    }

    /// The answer is over.
    pub fn finish(&mut self) -> Vec<Out> {
        let pieces = self.parser.finish();
        self.map(pieces)
    }

    fn map(&mut self, pieces: Vec<Piece>) -> Vec<Out> {
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            match p {
                Piece::Content(t) => out.push(Out::Content(t)),
                // One call only: later calls are dropped, as the client asked for one.
                Piece::CallStart { index, .. } | Piece::Arguments { index, .. }
                    if !self.parallel && index > 0 => {}
                Piece::CallStart { index, name } => {
                    self.calls = index + 1;
                    out.push(Out::Call(ToolCallDelta {
                        index,
                        id: Some(call_id()),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        },
                    }));
                }
                Piece::Arguments { index, text } => out.push(Out::Call(ToolCallDelta {
                    index,
                    function: FunctionDelta {
                        name: None,
                        arguments: Some(text),
                    },
                    ..ToolCallDelta::default()
                })),
            }
        }
        out
    }
}

/// A whole answer as `message.content` (null when empty) and `message.tool_calls`, through
/// the same [`ToolStream`] the stream uses.
pub fn split(p: &ToolParsing, text: &str) -> (Option<String>, Vec<ToolCall>) {
    let mut s = ToolStream::new(p);
    let mut outs = s.push(text);
    outs.extend(s.finish());
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for o in outs {
        match o {
            Out::Content(t) => content.push_str(&t),
            Out::Call(d) => {
                if let (Some(id), Some(name)) = (d.id, d.function.name) {
                    calls.push(ToolCall {
                        id,
                        kind: "function",
                        function: FunctionCall {
                            name,
                            arguments: String::new(),
                        },
                    });
                }
                if let (Some(c), Some(a)) = (calls.get_mut(d.index), d.function.arguments) {
                    c.function.arguments.push_str(&a);
                }
            }
        }
    }
    ((!content.is_empty()).then_some(content), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_body(extra: &str) -> String {
        format!(
            r#"{{"tools":[{{"type":"function","function":{{"name":"get_weather","parameters":{{"type":"object"}}}}}}]{extra}}}"#
        )
    }

    fn check(body: &str) -> Result<Option<ToolRequest>, ApiError> {
        #[derive(Deserialize)]
        struct R {
            tools: Option<Vec<Tool>>,
            tool_choice: Option<Value>,
            parallel_tool_calls: Option<bool>,
        }
        let r: R = serde_json::from_str(body).unwrap();
        validate(
            r.tools,
            r.tool_choice,
            r.parallel_tool_calls,
            body.as_bytes(),
        )
    }

    #[test]
    fn every_tool_choice_is_read_and_bad_ones_named() {
        let r = check(&tools_body("")).unwrap().unwrap();
        assert_eq!((r.choice.clone(), r.parallel), (Choice::Auto, true));
        assert_eq!(r.names, vec!["get_weather"]);
        assert_eq!(r.specs.len(), 1);
        let r = check(&tools_body(
            r#","tool_choice":"none","parallel_tool_calls":false"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!((r.choice, r.parallel), (Choice::None, false));
        let r = check(&tools_body(r#","tool_choice":"required""#))
            .unwrap()
            .unwrap();
        assert_eq!(r.choice, Choice::Required);
        let named = r#","tool_choice":{"type":"function","function":{"name":"get_weather"}}"#;
        let r = check(&tools_body(named)).unwrap().unwrap();
        assert_eq!(r.choice, Choice::Named("get_weather".into()));
        for extra in [
            r#","tool_choice":"sometimes""#,
            r#","tool_choice":{"type":"function","function":{"name":"get_time"}}"#,
            r#","tool_choice":{"type":"function"}"#,
        ] {
            let e = check(&tools_body(extra)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"), "{extra}");
        }
        // strict is read per function.
        let strict = r#"{"tools":[{"type":"function","function":{"name":"f","strict":true}}]"#;
        let r = check(&format!("{strict}}}")).unwrap().unwrap();
        assert_eq!(r.strict, vec![true]);
        assert!(check(&format!(r#"{strict},"tool_choice":"required"}}"#)).is_ok());
        for (body, param) in [
            (r#"{"tools":[]}"#, "tools"),
            (
                r#"{"tools":[{"type":"retrieval","function":{"name":"f"}}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"a b"}}]}"#,
                "tools[0].function.name",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}]}"#,
                "tools[1].function.name",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"f","parameters":[]}}]}"#,
                "tools[0].function.parameters",
            ),
            (r#"{"tool_choice":"auto"}"#, "tool_choice"),
            (r#"{"parallel_tool_calls":true}"#, "parallel_tool_calls"),
        ] {
            let e = check(body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        assert!(check("{}").unwrap().is_none());
    }

    #[test]
    fn the_template_decides_whether_tools_work() {
        let req = check(&tools_body("")).unwrap();
        let r1 = ChatTemplate::from_source(
            include_str!("../../../scripts/fixtures/deepseek-r1-distill.jinja"),
            None,
            None,
        )
        .unwrap();
        let e = resolve(req.as_ref(), &r1).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        let hermes = ChatTemplate::from_source(
            include_str!("../../../scripts/fixtures/hermes-tools.jinja"),
            None,
            None,
        )
        .unwrap();
        let p = resolve(req.as_ref(), &hermes).unwrap().unwrap();
        assert_eq!(p.format, ToolFormat::Hermes);
        let none = check(&tools_body(r#","tool_choice":"none""#)).unwrap();
        assert!(resolve(none.as_ref(), &hermes).unwrap().is_none());
        let unknown = ChatTemplate::from_source("{{ tools }}", None, None).unwrap();
        assert_eq!(
            resolve(req.as_ref(), &unknown)
                .unwrap_err()
                .param
                .as_deref(),
            Some("tools")
        );
        assert!(resolve(None, &r1).unwrap().is_none());
        // The template gets the tools with the client's key order.
        let r = req.unwrap();
        let t = ChatTemplate::from_source("{{ tools[0] | tojson }}", None, None).unwrap();
        assert_eq!(
            t.render_with_tools(&[], Some(&r.tools), false).unwrap(),
            r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}"#
        );
    }

    fn parsing(parallel: bool) -> ToolParsing {
        ToolParsing {
            format: ToolFormat::Hermes,
            names: vec!["get_weather".into(), "get_time".into()],
            parallel,
        }
    }

    const TWO: &str = "Checking. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call><tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";

    #[test]
    fn split_gives_content_and_calls_with_fresh_ids() {
        let (content, calls) = split(&parsing(true), TWO);
        assert_eq!(content.as_deref(), Some("Checking."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, "{\"city\": \"Oslo\"}");
        assert_eq!(calls[1].function.arguments, "{}");
        for c in &calls {
            assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
        }
        assert_ne!(calls[0].id, calls[1].id);
        // One call only when parallel calls are off.
        let (_, calls) = split(&parsing(false), TWO);
        assert_eq!(calls.len(), 1);
        // No call: the text is the content, unchanged.
        let (content, calls) = split(&parsing(true), "just text ");
        assert_eq!((content.as_deref(), calls.len()), (Some("just text "), 0));
        let (content, _) = split(&parsing(true), TWO.trim_start_matches("Checking. "));
        assert_eq!(content, None);
    }
}
