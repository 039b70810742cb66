//! Grammars that make a model write tool calls in its own format: forced calls for
//! `tool_choice: "required"` or a named function, their arguments valid under each
//! function's `parameters` schema; and, for `strict` tools under `tool_choice: "auto"`, the
//! same grammar held back until the model opens a call itself ([`trigger`]).
//!
//! The grammars are Lark in llguidance's dialect; each call's JSON is an embedded `%json`
//! schema (the function name as a `const`, the arguments as the function's `parameters`)
//! laid out as `json.dumps` writes it, which is what the chat templates show the models.

use serde_json::{json, Value};

use super::{
    ToolFormat, DS_CALLS_BEGIN, DS_CALLS_END, DS_CALL_BEGIN, DS_CALL_END, DS_SEP, HERMES_BEGIN,
    HERMES_END,
};
use crate::engine::grammar::compact;

/// One function the model may call.
#[derive(Clone, Debug)]
pub struct ToolSpec {
    pub name: String,
    /// Its `parameters` JSON schema (`None`: any object).
    pub parameters: Option<Value>,
}

/// What the grammar demands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallMode {
    /// At least one call of any tool (`tool_choice: "required"`).
    Required { parallel: bool },
    /// One call of this tool.
    Named(String),
    /// Calls the model may make: the grammar of `Required`, applied from the format's
    /// opening marker on (see [`trigger`]).
    Optional { parallel: bool },
}

/// The text that opens the calls of `format`: where an optional-call grammar starts.
/// `None` for Llama's bare JSON, which cannot be told from a JSON answer while written.
pub fn trigger(format: ToolFormat) -> Option<&'static str> {
    match format {
        ToolFormat::Hermes => Some(HERMES_BEGIN),
        ToolFormat::DeepSeek => Some(DS_CALLS_BEGIN),
        ToolFormat::LlamaJson => None,
    }
}

/// The arguments' schema of `t`.
fn arguments_schema(t: &ToolSpec) -> Value {
    t.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}))
}

/// The JSON of one call as the format writes it: `{"name": N, <args_key>: ARGS}`, any of
/// `tools`.
fn call_object(tools: &[&ToolSpec], args_key: &str) -> Value {
    let one = |t: &&ToolSpec| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, args_key: arguments_schema(t)},
            "required": ["name", args_key],
            "additionalProperties": false
        })
    };
    match tools {
        [t] => one(t),
        many => json!({"anyOf": many.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// A Lark string literal for `s`.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `%json { … }` for `schema`, laid out compactly.
fn json_rule(schema: &Value) -> String {
    format!("%json {}", compact(schema))
}

/// The grammar for `tools` in `format` under `mode`, or why it cannot be built.
pub fn call_grammar(
    format: ToolFormat,
    tools: &[ToolSpec],
    mode: &CallMode,
) -> Result<String, String> {
    let (chosen, parallel): (Vec<&ToolSpec>, bool) = match mode {
        CallMode::Optional { .. } if trigger(format).is_none() => {
            return Err("strict tools with tool_choice \"auto\" are not supported for this \
                        model's tool format (bare JSON calls); use \"required\" or a named function"
                .into())
        }
        CallMode::Required { parallel } | CallMode::Optional { parallel } => {
            (tools.iter().collect(), *parallel)
        }
        CallMode::Named(name) => {
            let t = tools
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| format!("no tool named `{name}`"))?;
            (vec![t], false)
        }
    };
    if chosen.is_empty() {
        return Err("no tools".into());
    }
    let (call, sep) = match format {
        ToolFormat::Hermes => (
            format!(
                "call: {} {} {}\n",
                lit(&format!("{HERMES_BEGIN}\n")),
                json_rule(&call_object(&chosen, "arguments")),
                lit(&format!("\n{HERMES_END}"))
            ),
            "\"\\n\"",
        ),
        ToolFormat::DeepSeek => {
            // One alternative per tool: the name is plain text between the markers.
            let alts: Vec<String> = chosen
                .iter()
                .map(|t| {
                    format!(
                        "{} {}",
                        lit(&format!(
                            "{DS_CALL_BEGIN}function{DS_SEP}{}\n```json\n",
                            t.name
                        )),
                        json_rule(&arguments_schema(t))
                    )
                })
                .collect();
            let call = format!(
                "call: one {}\none: {}\n",
                lit(&format!("\n```{DS_CALL_END}")),
                alts.join("\n   | ")
            );
            let calls = if parallel {
                "call (\"\\n\" call)*"
            } else {
                "call"
            };
            let body = format!(
                "calls: {} {calls} {}\n{call}",
                lit(DS_CALLS_BEGIN),
                lit(DS_CALLS_END)
            );
            return Ok(format!("start: calls\n{body}"));
        }
        ToolFormat::LlamaJson => (
            format!("call: {}\n", json_rule(&call_object(&chosen, "parameters"))),
            "\"; \"",
        ),
    };
    let calls = if parallel {
        format!("calls: call ({sep} call)*\n")
    } else {
        "calls: call\n".to_string()
    };
    Ok(format!("start: calls\n{calls}{call}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            parameters: Some(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"]
            })),
        }
    }

    #[test]
    fn forced_hermes_call_embeds_the_name_and_the_schema() {
        let g = call_grammar(
            ToolFormat::Hermes,
            &[weather()],
            &CallMode::Required { parallel: true },
        )
        .unwrap();
        assert!(g.starts_with("start: calls\n"), "{g}");
        assert!(g.contains(r#"{"const":"get_weather"}"#), "{g}");
        assert!(g.contains(r#""required":["city"]"#), "{g}");
        assert!(g.contains(r#"call ("\n" call)*"#), "{g}");
    }

    #[test]
    fn a_named_tool_must_exist() {
        let e = call_grammar(
            ToolFormat::Hermes,
            &[weather()],
            &CallMode::Named("nope".into()),
        )
        .unwrap_err();
        assert!(e.contains("nope"));
    }
}
