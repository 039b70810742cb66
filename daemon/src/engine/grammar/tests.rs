use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

const EOS: u32 = 1536;

fn tokenizer() -> Arc<Tokenizer> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny-qwen2-genai/tokenizer.json"
    );
    Arc::new(Tokenizer::from_file(path).expect("fixture tokenizer"))
}

/// The fixture's logits are 1552 wide; pad a little as real models do.
fn grammars() -> Grammars {
    Grammars::new(tokenizer(), 1600, &[EOS])
}

/// Walk the grammar with uniformly random allowed ids (what a random model does under the
/// mask) until EOS or `limit` ids; the text produced.
fn random_walk(g: &Grammars, grammar: &Grammar, seed: u64, limit: usize) -> Option<String> {
    let tok = tokenizer();
    let mut c = g.compile(grammar).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for _ in 0..limit {
        let mut logits = vec![0f32; 1600];
        c.apply(&mut logits).unwrap();
        let allowed: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        assert!(!allowed.is_empty(), "a mask that allows nothing");
        // Padding ids past the tokenizer never pass.
        assert!(allowed.iter().all(|&i| i < 1552 || i == EOS));
        // Prefer ending once the grammar allows it, so walks finish.
        let id = if allowed.contains(&EOS) && rng.random_bool(0.5) {
            EOS
        } else {
            allowed[rng.random_range(0..allowed.len())]
        };
        if id == EOS {
            return Some(tok.decode(&ids, false).unwrap());
        }
        c.commit(id).unwrap();
        ids.push(id);
        if c.is_finished() {
            return Some(tok.decode(&ids, false).unwrap());
        }
    }
    None
}

fn nested_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "code": {"type": "string", "maxLength": 4}},
                "required": ["code"],
                "additionalProperties": false
            }
        },
        "required": ["city", "unit", "where"],
        "additionalProperties": false
    })
}

/// The checks of `nested_schema`, written out.
fn check_nested(v: &Value) {
    let o = v.as_object().expect("an object");
    for k in o.keys() {
        assert!(
            ["city", "unit", "days", "tags", "where"].contains(&k.as_str()),
            "{k}"
        );
    }
    assert!(o["city"].as_str().unwrap().chars().count() <= 12);
    assert!(["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap()));
    if let Some(d) = o.get("days") {
        let d = d.as_i64().expect("integer days");
        assert!((1..=7).contains(&d));
    }
    if let Some(t) = o.get("tags") {
        let t = t.as_array().unwrap();
        assert!(t.len() <= 3 && t.iter().all(Value::is_boolean));
    }
    let w = o["where"].as_object().unwrap();
    assert!(w["code"].as_str().unwrap().chars().count() <= 4);
    assert!(w.keys().all(|k| k == "lat" || k == "code"));
    if let Some(l) = w.get("lat") {
        assert!((-90.0..=90.0).contains(&l.as_f64().expect("a number")));
    }
}

#[test]
fn random_walks_under_a_schema_are_valid_json_of_that_schema() {
    let g = grammars();
    let grammar = Grammar::JsonSchema(nested_schema());
    let mut finished = 0;
    for seed in 0..40 {
        let Some(text) = random_walk(&g, &grammar, seed, 400) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        check_nested(&v);
        finished += 1;
    }
    // Numbers and strings are bounded, so nearly every walk completes.
    assert!(finished >= 30, "{finished} of 40 walks finished");
}

#[test]
fn json_object_allows_any_object_and_nothing_else() {
    let g = grammars();
    let grammar = Grammar::JsonSchema(json!({"type": "object"}));
    let mut finished = 0;
    for seed in 0..20 {
        if let Some(text) = random_walk(&g, &grammar, seed, 300) {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v.is_object(), "{text}");
            finished += 1;
        }
    }
    assert!(finished > 0);
}

#[test]
fn a_lark_grammar_with_an_embedded_schema() {
    let g = grammars();
    let lark = r#"
start: "<tool_call>\n" call "\n</tool_call>"
call: %json {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object", "properties": {"city": {"enum": ["Oslo", "Paris"]}}, "required": ["city"], "additionalProperties": false}}, "required": ["name", "arguments"], "additionalProperties": false}
"#;
    let grammar = Grammar::Lark(lark.into());
    for seed in 0..10 {
        let text = random_walk(&g, &grammar, seed, 300).expect("the call completes");
        let body = text
            .strip_prefix("<tool_call>\n")
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("{text}"));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["name"], "get_weather");
        assert!(v["arguments"]["city"] == "Oslo" || v["arguments"]["city"] == "Paris");
    }
}

#[test]
fn unenforceable_grammars_are_errors_with_a_cause() {
    let g = grammars();
    let remote = json!({"$ref": "https://example.com/schema.json"});
    let e = g.compile(&Grammar::JsonSchema(remote)).unwrap_err();
    assert!(!e.0.is_empty());
    let e = g
        .compile(&Grammar::JsonSchema(json!({"type": "no-such-type"})))
        .unwrap_err();
    assert!(!e.0.is_empty());
    let e = g.compile(&Grammar::Lark("start: (".into())).unwrap_err();
    assert!(!e.0.is_empty());
}

#[test]
fn clones_are_independent() {
    let g = grammars();
    let mut a = g
        .compile(&Grammar::JsonSchema(json!({"enum": ["yes", "no"]})))
        .unwrap();
    let tok = tokenizer();
    let quote = tok.encode("\"", false).unwrap().get_ids()[0];
    let b = a.clone();
    a.commit(quote).unwrap();
    let mut la = vec![0f32; 1600];
    let mut lb = vec![0f32; 1600];
    a.apply(&mut la).unwrap();
    let mut b = b;
    b.apply(&mut lb).unwrap();
    // b has not seen the quote: it still allows it; a, inside the string, does not.
    assert!(lb[quote as usize].is_finite());
    assert!(la[quote as usize].is_infinite());
}

/// Forced calls in each format: every random walk is a call the model's parser reads back,
/// with the forced name and arguments valid under the tool's schema.
#[test]
fn forced_tool_calls_parse_back_in_every_format() {
    use crate::engine::toolcall::grammar::{call_grammar, CallMode, ToolSpec};
    use crate::engine::toolcall::{parse, ToolFormat};
    let g = grammars();
    let tools = vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: Some(json!({
                "type": "object",
                "properties": {
                    "city": {"enum": ["Oslo", "Paris", "北京"]},
                    "unit": {"enum": ["c", "f"]}
                },
                "required": ["city"],
                "additionalProperties": false
            })),
        },
        ToolSpec {
            name: "get_time".into(),
            parameters: Some(json!({
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 8}},
                "required": ["zone"],
                "additionalProperties": false
            })),
        },
    ];
    let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
    for format in [
        ToolFormat::Hermes,
        ToolFormat::DeepSeek,
        ToolFormat::LlamaJson,
    ] {
        for mode in [
            CallMode::Required { parallel: true },
            CallMode::Named("get_time".into()),
        ] {
            let lark = call_grammar(format, &tools, &mode).unwrap();
            let grammar = Grammar::Lark(lark.clone());
            let mut calls_seen = 0;
            for seed in 0..12 {
                let Some(text) = random_walk(&g, &grammar, seed, 400) else {
                    continue;
                };
                let parsed = parse(format, &names, &text);
                assert!(
                    !parsed.calls.is_empty() && parsed.content.trim().is_empty(),
                    "{format:?} {mode:?}: {text:?} -> {parsed:?}"
                );
                for c in &parsed.calls {
                    let args: Value = serde_json::from_str(&c.arguments).unwrap();
                    match c.name.as_str() {
                        "get_weather" => {
                            assert!(mode != CallMode::Named("get_time".into()));
                            assert!(
                                ["Oslo", "Paris", "北京"].contains(&args["city"].as_str().unwrap())
                            );
                        }
                        "get_time" => {
                            assert!(args["zone"].as_str().unwrap().chars().count() <= 8)
                        }
                        other => panic!("{other}"),
                    }
                }
                calls_seen += parsed.calls.len();
            }
            assert!(
                calls_seen >= 6,
                "{format:?} {mode:?}: {calls_seen} calls\n{lark}"
            );
        }
    }
}

/// An optional-call constraint wakes on its trigger with the text the token wrote after it.
#[test]
fn a_dormant_constraint_wakes_on_its_trigger() {
    use crate::engine::toolcall::grammar::{call_grammar, trigger, CallMode, ToolSpec};
    use crate::engine::toolcall::ToolFormat;
    let g = grammars();
    let tools = [ToolSpec {
        name: "get_weather".into(),
        parameters: Some(json!({"type": "object", "properties": {"city": {"enum": ["Oslo"]}}})),
    }];
    let mode = CallMode::Optional { parallel: false };
    let lark = call_grammar(ToolFormat::Hermes, &tools, &mode).unwrap();
    let t = trigger(ToolFormat::Hermes).unwrap();
    let c = g.compile(&Grammar::Lark(lark)).unwrap().dormant_until(t);
    assert_eq!(c.trigger(), Some("<tool_call>"));
    let tok = tokenizer();
    let brace = tok.encode("{", false).unwrap().get_ids()[0];

    // The trigger and, from the same token, the newline the format puts after it.
    let mut awake = c.clone();
    awake.wake("<tool_call>\n").unwrap();
    assert_eq!(awake.trigger(), None);
    let mut logits = vec![0f32; 1600];
    awake.apply(&mut logits).unwrap();
    assert!(logits[brace as usize].is_finite());
    assert!(logits[EOS as usize].is_infinite());

    // Text after the trigger that the format does not allow: an error, never a silent pass.
    let mut off = c;
    assert!(off.wake("<tool_call> nope").is_err());
}
