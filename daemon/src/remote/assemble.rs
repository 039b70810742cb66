//! Whole assistant turns from an upstream's answer: the agent loop needs the complete text,
//! reasoning and tool calls of a turn before it can run the tools, whether the upstream
//! streamed it or not.

use serde::Serialize;
use serde_json::{json, Value};

/// Token counts of a response.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

/// `usage` of a response or chunk (`prompt_tokens`, `completion_tokens`,
/// `completion_tokens_details.reasoning_tokens`), if present and not null. Servers send
/// `"usage": null` on every chunk but the last; a missing count reads as 0.
pub fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: n("/prompt_tokens"),
        completion_tokens: n("/completion_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    })
}

/// One assistant turn put together.
#[derive(Debug, Default)]
pub struct Assembled {
    pub content: String,
    pub reasoning: String,
    /// OpenAI `tool_calls` entries: `{"id", "type", "function": {"name", "arguments"}}`, in
    /// the order of their stream `index`. An id the upstream never sent is left empty.
    pub tool_calls: Vec<Value>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The stream `index` of each entry of `tool_calls`.
    tool_index: Vec<u64>,
}

impl Assembled {
    /// Add one `chat.completion.chunk` (choice `index` 0 only): content, reasoning
    /// (`reasoning_content`, or `reasoning` as some servers name it), tool calls merged by
    /// their `index` as the OpenAI SDK does (id, type and name from the first delta that has
    /// them, `arguments` appended), finish_reason, usage (the last one seen).
    pub fn push(&mut self, chunk: &Value) {
        if let Some(u) = usage_of(chunk) {
            self.usage = Some(u);
        }
        let Some(choice) = first_choice(chunk) else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(c) = delta.get("content").and_then(Value::as_str) {
                self.content.push_str(c);
            }
            if let Some(r) = reasoning_of(delta) {
                self.reasoning.push_str(r);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.merge_call(call);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_string());
        }
    }

    /// The same from a whole (non-streaming) `chat.completion` body.
    pub fn from_response(v: &Value) -> Assembled {
        let mut a = Assembled {
            usage: usage_of(v),
            ..Assembled::default()
        };
        let Some(choice) = first_choice(v) else {
            return a;
        };
        if let Some(m) = choice.get("message") {
            match m.get("content") {
                Some(Value::String(s)) => a.content = s.clone(),
                // Content parts: their text, in order.
                Some(Value::Array(parts)) => {
                    a.content = parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect();
                }
                _ => {}
            }
            if let Some(r) = reasoning_of(m) {
                a.reasoning = r.to_string();
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    a.merge_call(call);
                }
            }
        }
        a.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        a
    }

    /// Merge one tool-call delta. Without an `index` (some servers leave it out), a delta
    /// with a new id starts a call and one without continues the last.
    fn merge_call(&mut self, delta: &Value) {
        let id = delta
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let index = match delta.get("index").and_then(Value::as_u64) {
            Some(i) => i,
            None => {
                let last = self.tool_index.last().copied();
                let last_id = self
                    .tool_calls
                    .last()
                    .and_then(|c| c.get("id"))
                    .and_then(Value::as_str);
                match (last, id) {
                    (Some(l), Some(id))
                        if last_id != Some(id) && !last_id.unwrap_or("").is_empty() =>
                    {
                        l + 1
                    }
                    (Some(l), _) => l,
                    (None, _) => 0,
                }
            }
        };
        let pos = match self.tool_index.iter().position(|&i| i == index) {
            Some(p) => p,
            None => {
                let ty = delta
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .unwrap_or("function");
                self.tool_index.push(index);
                self.tool_calls.push(json!({
                    "id": "",
                    "type": ty,
                    "function": {"name": "", "arguments": ""},
                }));
                self.tool_calls.len() - 1
            }
        };
        let call = &mut self.tool_calls[pos];
        let set_first = |slot: &mut Value, new: Option<&str>| {
            if let (Some(n), Some("")) = (new, slot.as_str()) {
                *slot = Value::String(n.to_string());
            }
        };
        set_first(&mut call["id"], id);
        let f = delta.get("function");
        set_first(
            &mut call["function"]["name"],
            f.and_then(|f| f.get("name")).and_then(Value::as_str),
        );
        if let Some(args) = f.and_then(|f| f.get("arguments")) {
            let piece = match args {
                Value::String(s) => s.clone(),
                // Some servers send the arguments as an object rather than its JSON text.
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if let Value::String(acc) = &mut call["function"]["arguments"] {
                acc.push_str(&piece);
            }
        }
    }
}

/// The choice with `index` 0 (a choice without an index counts as 0).
fn first_choice(v: &Value) -> Option<&Value> {
    v.get("choices")?
        .as_array()?
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
}

fn reasoning_of(v: &Value) -> Option<&str> {
    v.get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| v.get("reasoning").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": null}], "usage": null})
    }

    #[test]
    fn tool_call_deltas_split_across_chunks_merge_by_index() {
        let mut a = Assembled::default();
        a.push(&chunk(
            json!({"role": "assistant", "reasoning_content": "想一想"}),
        ));
        a.push(&chunk(json!({"reasoning": ", then act"})));
        a.push(&chunk(json!({"content": "Let me look."})));
        a.push(&chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "kb_search", "arguments": ""}}]})));
        a.push(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"query\": \"中"}}]}),
        ));
        a.push(&chunk(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "web_search", "arguments": "{\"q\""}}]})));
        a.push(&chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "ignored", "arguments": "文\"}"}}, {"index": 1, "id": "call_x", "function": {"arguments": ": 1}"}}]})));
        // Another choice is not this turn.
        a.push(&json!({"choices": [{"index": 1, "delta": {"content": "other"}}]}));
        a.push(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
        a.push(&json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 7}}}));

        assert_eq!(a.content, "Let me look.");
        assert_eq!(a.reasoning, "想一想, then act");
        assert_eq!(
            a.tool_calls,
            vec![
                json!({"id": "call_a", "type": "function", "function": {"name": "kb_search", "arguments": "{\"query\": \"中文\"}"}}),
                json!({"id": "call_b", "type": "function", "function": {"name": "web_search", "arguments": "{\"q\": 1}"}}),
            ]
        );
        assert_eq!(a.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            a.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 30,
                reasoning_tokens: 7
            })
        );
    }

    #[test]
    fn deltas_without_an_index_follow_their_ids() {
        let mut a = Assembled::default();
        a.push(&chunk(
            json!({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]}),
        ));
        a.push(&chunk(
            json!({"tool_calls": [{"function": {"arguments": "}"}}]}),
        ));
        a.push(&chunk(
            json!({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": {"x": 1}}}]}),
        ));
        let args: Vec<&str> = a
            .tool_calls
            .iter()
            .map(|c| c["function"]["arguments"].as_str().unwrap())
            .collect();
        assert_eq!(args, ["{}", "{\"x\":1}"]);
        assert_eq!(a.tool_calls[1]["id"], "c2");
    }

    #[test]
    fn a_whole_response() {
        let v = json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "答案", "reasoning_content": "因为",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
            }}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}
        });
        let a = Assembled::from_response(&v);
        assert_eq!((a.content.as_str(), a.reasoning.as_str()), ("答案", "因为"));
        assert_eq!(
            a.tool_calls,
            vec![
                json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}})
            ]
        );
        assert_eq!(a.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            a.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                reasoning_tokens: 0
            })
        );
        let parts = json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]});
        assert_eq!(Assembled::from_response(&parts).content, "ab");
    }

    #[test]
    fn usage_with_and_without_details() {
        assert_eq!(
            usage_of(
                &json!({"usage": {"prompt_tokens": 5, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}}})
            ),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9,
                reasoning_tokens: 4
            })
        );
        assert_eq!(
            usage_of(
                &json!({"usage": {"prompt_tokens": 5, "completion_tokens": 9, "completion_tokens_details": null}})
            ),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9,
                reasoning_tokens: 0
            })
        );
        assert_eq!(usage_of(&json!({"usage": null})), None);
        assert_eq!(usage_of(&json!({"choices": []})), None);
    }
}
