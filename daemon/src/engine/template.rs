//! Hugging Face chat templates rendered with minijinja.
//!
//! Models ship their prompt format as a Jinja2 template (`chat_template.jinja`
//! or `tokenizer_config.json`'s `chat_template`). A prompt that differs from
//! the training format by a single byte measurably degrades output, so this
//! module reproduces what `transformers` does when it renders one:
//!
//! * `trim_blocks = true`, `lstrip_blocks = true`, no trailing newline kept;
//! * loop controls (`{% break %}`, `{% continue %}`);
//! * `raise_exception(msg)` → [`TemplateError::Raised`] with the template's message;
//! * `tojson` with HF's semantics (no HTML escaping, non-ASCII kept, Python
//!   `json.dumps` separators, `indent`/`separators`/`sort_keys`/`ensure_ascii`);
//! * `strftime_now(fmt)`;
//! * Python string/dict methods via `minijinja_contrib::pycompat`;
//! * Python-style printing of booleans and none (`True`/`False`/`None`);
//! * lenient undefined values, like jinja2's default `Undefined`;
//! * `tools` (OpenAI function schemas) passed as HF's `apply_chat_template(tools=…)` does:
//!   the list as given, `none` without tools, objects keeping their keys in the order the
//!   client wrote them (Python dicts do, and templates print schemas with `tojson`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use super::toolcall::ToolFormat;

mod pycompat;
use pycompat::*;

/// Name under which the single template is registered in the environment.
const TEMPLATE_NAME: &str = "chat_template";
/// JSON nesting limit for `tojson`, so hostile input cannot overflow the stack.
const MAX_JSON_DEPTH: usize = 128;

/// One chat message as given by the OpenAI-style API. Unknown fields (e.g.
/// `tool_calls`, `name`, `tool_call_id`) are kept in `extra` and are visible
/// to the template, which is how HF passes them through.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// Text content; `None` for e.g. assistant messages that only carry tool calls.
    #[serde(default)]
    pub content: Option<String>,
    /// Every other field of the message, passed to the template verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// Convenience constructor for a plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            extra: serde_json::Map::new(),
        }
    }
}

/// Errors loading or rendering a chat template. Loading errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A model file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not valid JSON.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Neither `chat_template.jinja` nor a usable `chat_template` entry exists.
    #[error("no usable chat template in {}: {reason}", path.display())]
    Missing {
        /// The file that was expected to contain the template.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The template does not compile.
    #[error("chat template {origin} has a syntax error: {source}")]
    Syntax {
        /// Where the template came from (file path or `<inline>`).
        origin: String,
        /// minijinja's error (includes line information).
        source: Error,
    },
    /// The template called `raise_exception(message)`, typically to reject
    /// an unsupported conversation shape; the message is meant for the user.
    #[error("chat template rejected the conversation: {message}")]
    Raised {
        /// The template's message, verbatim.
        message: String,
    },
    /// Any other rendering failure.
    #[error("chat template {origin} failed to render: {source}")]
    Render {
        /// Where the template came from (file path or `<inline>`).
        origin: String,
        /// minijinja's error.
        source: Error,
    },
}

/// Marker carried as the source of the minijinja error raised by
/// `raise_exception`, so [`ChatTemplate::render`] can tell it apart from
/// genuine template bugs without parsing error strings.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A compiled chat template plus the special tokens it may reference.
/// `Send + Sync`: build once per model, share across requests.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// The template reads the `tools` variable (renders tool definitions).
    uses_tools: bool,
    /// The tool-call form the template teaches, from the markers it renders.
    tool_format: Option<ToolFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("uses_tools", &self.uses_tools)
            .field("tool_format", &self.tool_format)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Model dir: prefer `chat_template.jinja`; else `tokenizer_config.json`'s `chat_template` (a string, or a list of {name, template} → the one named "default"). bos/eos tokens from tokenizer_config.json (`bos_token`/`eos_token` may be a string or an object with "content"). Errors name the file.
    pub fn load(model_dir: &Path) -> Result<Self, TemplateError> {
        let config_path = model_dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(
                |source| TemplateError::Json {
                    path: config_path.clone(),
                    source,
                },
            )?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(TemplateError::Io {
                    path: config_path,
                    source,
                })
            }
        };

        let jinja_path = model_dir.join("chat_template.jinja");
        let (source, origin) = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => (text, jinja_path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(config) = config.as_ref() else {
                    return Err(TemplateError::Missing {
                        path: config_path,
                        reason: "neither chat_template.jinja nor tokenizer_config.json exists"
                            .into(),
                    });
                };
                let source =
                    template_from_config(config).map_err(|reason| TemplateError::Missing {
                        path: config_path.clone(),
                        reason,
                    })?;
                (source, config_path.display().to_string())
            }
            Err(source) => {
                return Err(TemplateError::Io {
                    path: jinja_path,
                    source,
                })
            }
        };

        let token = |key: &str| config.as_ref().and_then(|c| special_token(c, key));
        Self::build(source, origin, token("bos_token"), token("eos_token"))
    }

    /// Compiles a template from source (origin shown in errors: `<inline>`).
    pub fn from_source(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        Self::build(source.to_owned(), "<inline>".into(), bos_token, eos_token)
    }

    fn build(
        source: String,
        origin: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let tool_format = ToolFormat::detect(&source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|source| TemplateError::Syntax {
                origin: origin.clone(),
                source,
            })?;
        let uses_tools = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        Ok(Self {
            env,
            origin,
            bos_token,
            eos_token,
            uses_tools,
            tool_format,
        })
    }

    /// Whether the template renders tool definitions (reads `tools`). A template that does
    /// not would silently drop them, so requests with tools are refused for it.
    pub fn uses_tools(&self) -> bool {
        self.uses_tools
    }

    /// The tool-call form the model writes, when the template shows one.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// Renders the conversation. `add_generation_prompt` appends the
    /// assistant header so the model continues as the assistant.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`render`](Self::render) with the request's `tools` (the OpenAI list,
    /// `[{"type": "function", "function": {…}}]`); `None` renders as `none`, as in HF.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&OrderedJson>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let render_err = |source: Error| match raised_message(&source) {
            Some(message) => TemplateError::Raised { message },
            None => TemplateError::Render {
                origin: self.origin.clone(),
                source,
            },
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        // Like HF, absent special tokens are *undefined* (render as ""),
        // not `None` (which jinja2 would print as "None").
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            (
                "tools",
                tools.map_or(Value::from(()), OrderedJson::to_value),
            ),
        ];
        if let Some(bos) = &self.bos_token {
            ctx.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            ctx.push(("eos_token", Value::from(eos.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        template.render(ctx).map_err(render_err)
    }

    /// The BOS token text from `tokenizer_config.json`, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token text from `tokenizer_config.json`, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}

/// JSON that keeps object keys in the order they were written. serde_json's map (and
/// minijinja's) sort keys, which would print a tool schema through `tojson` differently from
/// what the client sent and HF renders.
#[derive(Clone, Debug, PartialEq)]
pub enum OrderedJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// The template value: objects become maps that enumerate their keys in order.
    pub fn to_value(&self) -> Value {
        match self {
            OrderedJson::Null => Value::from(()),
            OrderedJson::Bool(b) => Value::from(*b),
            OrderedJson::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    Value::from(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            OrderedJson::String(s) => Value::from(s.as_str()),
            OrderedJson::Array(items) => {
                Value::from(items.iter().map(OrderedJson::to_value).collect::<Vec<_>>())
            }
            OrderedJson::Object(entries) => Value::from_object(OrderedMap(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            )),
        }
    }

    /// The object's value at `key`.
    pub fn get(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_none<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<OrderedJson, D::Error> {
                OrderedJson::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<OrderedJson, E> {
                serde_json::Number::from_f64(n)
                    .map(OrderedJson::Number)
                    .ok_or_else(|| E::custom("number is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OrderedJson, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OrderedJson::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedJson, A::Error> {
                let mut entries: Vec<(String, OrderedJson)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, OrderedJson>()? {
                    // A repeated key keeps its first place and its last value, as in Python.
                    match entries.iter_mut().find(|(e, _)| *e == k) {
                        Some(slot) => slot.1 = v,
                        None => entries.push((k, v)),
                    }
                }
                Ok(OrderedJson::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A template map that enumerates its keys in insertion order.
#[derive(Debug)]
struct OrderedMap(Vec<(String, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .iter()
                .map(|(k, _)| Value::from(k.as_str()))
                .collect(),
        )
    }
}

/// Extracts the template source from a parsed `tokenizer_config.json`.
fn template_from_config(config: &serde_json::Value) -> Result<String, String> {
    match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "`chat_template` list has no entry named \"default\"".into()),
        Some(_) => Err("`chat_template` is neither a string nor a list".into()),
        None => Err("no `chat_template` key and no chat_template.jinja".into()),
    }
}

/// `bos_token` / `eos_token` as a string or an `AddedToken` object.
fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1_TEMPLATE: &str = include_str!("../../../scripts/fixtures/deepseek-r1-distill.jinja");
    const BOS: &str = "<｜begin▁of▁sentence｜>";
    const EOS: &str = "<｜end▁of▁sentence｜>";

    fn r1() -> ChatTemplate {
        ChatTemplate::from_source(R1_TEMPLATE, Some(BOS.into()), Some(EOS.into()))
            .expect("R1 template compiles")
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn render(t: &ChatTemplate, messages: &[ChatMessage], agp: bool) -> String {
        t.render(messages, agp).expect("renders")
    }

    #[test]
    fn template_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn r1_single_user_turn() {
        assert_eq!(
            render(&r1(), &[msg("user", "hi")], true),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"
        );
    }

    #[test]
    fn r1_system_prompt_bare_after_bos() {
        assert_eq!(
            render(
                &r1(),
                &[msg("system", "You are terse."), msg("user", "hi")],
                true
            ),
            "<｜begin▁of▁sentence｜>You are terse.<｜User｜>hi<｜Assistant｜><think>\n"
        );
    }

    #[test]
    fn r1_multi_turn_strips_earlier_reasoning() {
        let messages = [
            msg("user", "What is 2+2?"),
            msg("assistant", "<think>plan</think>\n\nThe answer"),
            msg("user", "Why?"),
        ];
        assert_eq!(
            render(&r1(), &messages, true),
            "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>\n\nThe answer\
             <｜end▁of▁sentence｜><｜User｜>Why?<｜Assistant｜><think>\n"
        );
    }

    #[test]
    fn r1_without_generation_prompt() {
        let messages = [
            msg("user", "What is 2+2?"),
            msg("assistant", "<think>plan</think>\n\nThe answer"),
        ];
        let out = render(&r1(), &messages, false);
        assert_eq!(
            out,
            "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>\n\nThe answer\
             <｜end▁of▁sentence｜>"
        );
        assert!(!out.ends_with("<｜Assistant｜>"));
    }

    /// Expected output produced by Python jinja2 3.1 with HF's settings
    /// (`scripts/fixtures/render_template_reference.py`, case `r1_tools`).
    #[test]
    fn r1_tool_calls_match_jinja2() {
        let assistant: ChatMessage = serde_json::from_value(serde_json::json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"北京\"}"}},
                {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        }))
        .expect("message json");
        let messages = [
            msg("system", "sys"),
            msg("user", "weather?"),
            assistant,
            msg("tool", "sunny"),
            msg("tool", "12:00"),
            msg("assistant", "It is sunny."),
            msg("user", "thanks"),
        ];
        let expected = "<｜begin▁of▁sentence｜>sys<｜User｜>weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>12:00<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is sunny.<｜end▁of▁sentence｜><｜User｜>thanks<｜Assistant｜><think>\n";
        assert_eq!(render(&r1(), &messages, true), expected);
    }

    const HERMES_TEMPLATE: &str = include_str!("../../../scripts/fixtures/hermes-tools.jinja");

    /// The tools of case `hermes_tools` in `scripts/fixtures/render_template_reference.py`,
    /// keys deliberately unsorted.
    const TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
   "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市"},
   "unit": {"type": "string", "enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1}},
   "required": ["city"]}}},
  {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
]"#;

    /// Expected output produced by Python jinja2 3.1 with HF's settings
    /// (`scripts/fixtures/render_template_reference.py`, case `hermes_tools`): tool schemas
    /// printed with their keys in the client's order, assistant `tool_calls`, `tool` turns.
    #[test]
    fn hermes_tools_match_jinja2() {
        let t = ChatTemplate::from_source(HERMES_TEMPLATE, None, None).expect("compiles");
        assert!(t.uses_tools());
        assert_eq!(t.tool_format(), Some(ToolFormat::Hermes));
        let tools: OrderedJson = serde_json::from_str(TOOLS).expect("tools json");
        let messages: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "weather in 北京?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"北京\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "thanks"}
        ]))
        .expect("messages json");
        let expected = "<|im_start|>system\nsys\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather for a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"城市\"}, \"unit\": {\"type\": \"string\", \"enum\": [\"c\", \"f\"]}, \"days\": {\"type\": \"integer\", \"minimum\": 1}}, \"required\": [\"city\"]}}}\n{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nweather in 北京?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"北京\\\"}\"}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{}\"}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n12:00\n</tool_response><|im_end|>\n<|im_start|>assistant\nIt is sunny.<|im_end|>\n<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            t.render_with_tools(&messages, Some(&tools), true)
                .expect("renders"),
            expected
        );
        // Without tools the template takes its plain branch (`tools` is none, as in HF).
        assert_eq!(render(&t, &[msg("user", "hi")], true), "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn tool_support_is_read_from_the_template() {
        assert!(!r1().uses_tools());
        assert_eq!(r1().tool_format(), Some(ToolFormat::DeepSeek));
        for (src, uses) in [
            (
                "{% if not tools is defined %}{% set tools = none %}{% endif %}{{ tools }}",
                true,
            ),
            (
                "{% for t in tools %}{{ t.function.name }}{% endfor %}",
                true,
            ),
            ("{% set tools = 1 %}{{ tools }}", false),
            ("{{ messages[0].content }}", false),
        ] {
            let t = ChatTemplate::from_source(src, None, None).expect("compiles");
            assert_eq!(t.uses_tools(), uses, "{src}");
        }
    }

    #[test]
    fn ordered_json_keeps_key_order_through_tojson_and_items() {
        let t = ChatTemplate::from_source(
            "{{ tools | tojson }}|{% for k, v in tools[0].items() %}{{ k }},{% endfor %}|{{ tools[0].b }}|{{ tools | length }}",
            None,
            None,
        )
        .expect("compiles");
        let tools: OrderedJson =
            serde_json::from_str(r#"[{"z": 1, "a": [true, null, 2.5], "b": "x"}]"#).unwrap();
        assert_eq!(
            t.render_with_tools(&[], Some(&tools), false).unwrap(),
            r#"[{"z": 1, "a": [true, null, 2.5], "b": "x"}]|z,a,b,|x|1"#
        );
    }

    const GENERIC: &str = "{% for message in messages %}
    {% if loop.index0 == 3 %}
        {% break %}
    {% endif %}
[{{ message.role | upper }}] {{ message.content.strip() }}{% if loop.last %} (last){% endif %}

{% endfor %}
{# comment #}
{% set first = messages[0] %}
meta={{ first.meta | tojson }}
pretty={{ first.meta | tojson(indent=2) }}
parts={{ first.content.split(',') | tojson }}
{% for k, v in first.meta.items() %}{{ k }}={{ v }};{% endfor %}

flags={{ first.content.startswith('  a') }},{{ first.get('missing', 'dflt') }},{{ first.content.replace('a', 'A').lstrip().rstrip() }}
{% if add_generation_prompt %}
ASSISTANT:
{% endif %}
";

    fn generic_messages() -> Vec<ChatMessage> {
        let first: ChatMessage = serde_json::from_value(serde_json::json!({
            "role": "user",
            "content": "  a,b <c> & 'd'  \n",
            "meta": {"a": true, "b": [1, 2.5, "ü\"\n<x>", null], "c": {}, "d": []}
        }))
        .expect("message json");
        vec![
            first,
            msg("assistant", "second"),
            msg("user", " third "),
            msg("user", "never rendered"),
        ]
    }

    /// Expected output produced by Python jinja2 3.1 with HF's settings
    /// (trim_blocks, lstrip_blocks, loopcontrols, HF's tojson); regenerate with
    /// `scripts/fixtures/render_template_reference.py` (case `generic`).
    #[test]
    fn generic_template_matches_jinja2() {
        let t = ChatTemplate::from_source(GENERIC, None, None).expect("compiles");
        let expected = "[USER] a,b <c> & 'd'\n[ASSISTANT] second\n[USER] third\nmeta={\"a\": true, \"b\": [1, 2.5, \"ü\\\"\\n<x>\", null], \"c\": {}, \"d\": []}\npretty={\n  \"a\": true,\n  \"b\": [\n    1,\n    2.5,\n    \"ü\\\"\\n<x>\",\n    null\n  ],\n  \"c\": {},\n  \"d\": []\n}\nparts=[\"  a\", \"b <c> & 'd'  \\n\"]\na=True;b=[1, 2.5, 'ü\"\\n<x>', None];c={};d=[];\nflags=True,dflt,A,b <c> & 'd'\nASSISTANT:\n";
        assert_eq!(render(&t, &generic_messages(), true), expected);
    }

    #[test]
    fn raise_exception_surfaces_message() {
        let t = ChatTemplate::from_source(
            "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('Tool role is not supported: ' ~ m.role) }}{% endif %}{{ m.content }}{% endfor %}",
            None,
            None,
        )
        .expect("compiles");
        assert_eq!(render(&t, &[msg("user", "ok")], false), "ok");
        match t.render(&[msg("tool", "x")], false) {
            Err(TemplateError::Raised { message }) => {
                assert_eq!(message, "Tool role is not supported: tool")
            }
            other => panic!("expected Raised, got {other:?}"),
        }
    }

    #[test]
    fn render_errors_are_not_raised() {
        let t = ChatTemplate::from_source("{{ messages[0].content + 1 }}", None, None)
            .expect("compiles");
        assert!(matches!(
            t.render(&[msg("user", "x")], false),
            Err(TemplateError::Render { .. })
        ));
    }

    #[test]
    fn lenient_undefined_like_jinja2() {
        let t = ChatTemplate::from_source(
            "[{{ nothing }}]{% for x in nothing %}x{% endfor %}{% if nothing %}y{% endif %}[{{ bos_token }}]",
            None,
            None,
        )
        .expect("compiles");
        assert_eq!(render(&t, &[], false), "[][]");
    }

    #[test]
    fn malformed_template_is_a_syntax_error() {
        let err = ChatTemplate::from_source("{% for m in messages %}{{ m }", None, None)
            .expect_err("must fail");
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("<inline>"));
    }

    #[test]
    fn tojson_kwargs_and_escaping() {
        let t = ChatTemplate::from_source(
            "{{ {'b': 1, 'a': 'é\u{1F600}'} | tojson(sort_keys=true, ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=[',', ':']) }}|{{ 1e20 | tojson }}|{{ 0.0001 | tojson }}|{{ 1.5e-7 | tojson }}",
            None,
            None,
        )
        .expect("compiles");
        assert_eq!(
            render(&t, &[], false),
            "{\"a\": \"\\u00e9\\ud83d\\ude00\", \"b\": 1}|[1,2]|1e+20|0.0001|1.5e-07"
        );
    }

    /// jinja2 prints `str()` of containers, bools and None (checked against
    /// Python: `["it's", 'a"b', 'x\ty', {'f': 1.5e-07, 'k': None}]|True|None`).
    #[test]
    fn printing_uses_python_reprs() {
        let t = ChatTemplate::from_source(
            r#"{{ ["it's", 'a"b', 'x\ty', {'f': 1.5e-7, 'k': none}] }}|{{ true }}|{{ none }}|{{ 'raw' }}|{{ 2 }}"#,
            None,
            None,
        )
        .expect("compiles");
        assert_eq!(
            render(&t, &[], false),
            r#"["it's", 'a"b', 'x\ty', {'f': 1.5e-07, 'k': None}]|True|None|raw|2"#
        );
    }

    #[test]
    fn python_float_repr_matches_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (123456789.0, "123456789.0"),
            (1e16, "1e+16"),
            (1.234e-5, "1.234e-05"),
            (9999999999999998.0, "9999999999999998.0"),
        ] {
            assert_eq!(python_float_repr(f), s);
        }
    }

    #[test]
    fn strftime_formats_utc() {
        // 2024-02-29 12:34:56 UTC (a Thursday, day 60).
        let t = 1_709_210_096;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %y %e %% %Q", t),
            "2024-02-29 12:34:56 Thu Thursday Feb February 060 12PM 24 29 % %Q"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime("%F %T", -1), "1969-12-31 23:59:59");
        // The template function is wired up and yields a plausible year.
        let tpl =
            ChatTemplate::from_source("{{ strftime_now('%Y') }}", None, None).expect("compiles");
        let year: i32 = render(&tpl, &[], false).parse().expect("year");
        assert!(year >= 2024);
    }

    #[test]
    fn load_prefers_jinja_file_and_reads_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::json!({
                "bos_token": {"__type": "AddedToken", "content": BOS},
                "eos_token": EOS,
                "chat_template": "from config"
            })
            .to_string(),
        )
        .expect("write");
        let t = ChatTemplate::load(dir.path()).expect("loads");
        assert_eq!(t.bos_token(), Some(BOS));
        assert_eq!(t.eos_token(), Some(EOS));
        assert_eq!(render(&t, &[], false), "from config");

        std::fs::write(dir.path().join("chat_template.jinja"), R1_TEMPLATE).expect("write");
        let t = ChatTemplate::load(dir.path()).expect("loads");
        assert_eq!(
            render(&t, &[msg("user", "hi")], true),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n"
        );
    }

    #[test]
    fn load_template_list_picks_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &path,
            serde_json::json!({"chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "default {{ eos_token }}"}
            ], "eos_token": "</s>"})
            .to_string(),
        )
        .expect("write");
        let t = ChatTemplate::load(dir.path()).expect("loads");
        assert_eq!(render(&t, &[], false), "default </s>");

        std::fs::write(
            &path,
            r#"{"chat_template": [{"name": "x", "template": "y"}]}"#,
        )
        .expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("no default");
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ChatTemplate::load(dir.path()).expect_err("empty dir");
        assert!(matches!(err, TemplateError::Missing { .. }));

        std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("bad json");
        assert!(matches!(err, TemplateError::Json { .. }));
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

        std::fs::write(dir.path().join("tokenizer_config.json"), "{}").expect("write");
        std::fs::write(dir.path().join("chat_template.jinja"), "{% if %}").expect("write");
        let err = ChatTemplate::load(dir.path()).expect_err("bad template");
        assert!(matches!(err, TemplateError::Syntax { .. }));
        assert!(err.to_string().contains("chat_template.jinja"), "{err}");
    }
}
