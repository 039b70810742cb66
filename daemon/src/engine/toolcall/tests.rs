use super::*;

const R1_TEMPLATE: &str = include_str!("../../../../scripts/fixtures/deepseek-r1-distill.jinja");

fn names() -> Vec<String> {
    vec!["get_weather".into(), "get_time".into()]
}

fn whole(format: ToolFormat, text: &str) -> Parsed {
    parse(format, &names(), text)
}

/// Feed `text` cut at the given char counts (cycled), as a stream.
fn streamed(format: ToolFormat, text: &str, sizes: &[usize]) -> (Vec<Piece>, Parsed) {
    let mut p = ToolCallParser::new(format, names());
    let chars: Vec<char> = text.chars().collect();
    let mut pieces = Vec::new();
    let (mut i, mut k) = (0, 0);
    while i < chars.len() {
        let n = sizes[k % sizes.len()].max(1);
        let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
        pieces.extend(p.push(&piece));
        i += n;
        k += 1;
    }
    pieces.extend(p.finish());
    let parsed = collect(pieces.clone());
    (pieces, parsed)
}

fn call(name: &str, args: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: args.into(),
    }
}

const DS_ONE: &str = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
const DS_TWO: &str = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
const HERMES_TWO: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
const LLAMA_TWO: &str = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"{x}\\\"\"}}; {\"name\": \"get_time\", \"parameters\": {}}";

/// Every case the stream tests replay: valid, mixed and malformed output of each format.
fn corpus() -> Vec<(ToolFormat, String)> {
    use ToolFormat::*;
    let mut v: Vec<(ToolFormat, String)> = vec![
        (DeepSeek, DS_ONE.into()),
        (DeepSeek, DS_TWO.into()),
        (DeepSeek, format!("Let me check.\n\n{DS_TWO}")),
        (DeepSeek, format!("{DS_ONE}\nDone.")),
        (DeepSeek, DS_ONE.replace("get_weather", "launch")),
        (DeepSeek, DS_ONE.replace("\"北京\"}", "\"北京\"")),
        (DeepSeek, DS_ONE[..DS_ONE.len() - 40].to_string()),
        (DeepSeek, "<｜tool▁calls▁begin｜>just text".into()),
        (DeepSeek, "plain answer, no call \n".into()),
        (Hermes, HERMES_TWO.into()),
        (Hermes, format!("I will look it up: {HERMES_TWO}\n")),
        (Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 1}".into()),
        (Hermes, "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>".into()),
        (Hermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": {]}</tool_call> tail".into()),
        (Hermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}</tool_call>".into()),
        (Hermes, "a <tool_ call> b < c".into()),
        (LlamaJson, LLAMA_TWO.into()),
        (LlamaJson, format!("  {LLAMA_TWO}")),
        (LlamaJson, format!("<|python_tag|>{LLAMA_TWO}")),
        (LlamaJson, format!("Sure. <|python_tag|>{LLAMA_TWO}")),
        (LlamaJson, "{\"answer\": 42}".into()),
        (LlamaJson, "{\"name\": \"get_time\", \"parameters\": {".into()),
        (LlamaJson, "The set {1, 2} is small.".into()),
    ];
    for bare in hermes_bare_calls().into_iter().chain(hermes_bare_content()) {
        v.push((Hermes, bare.to_string()));
    }
    v.push((Hermes, "emoji 🎉 then <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"東京🗼\"}}</tool_call>".into()));
    v
}

#[test]
fn detects_the_format_from_the_template() {
    assert_eq!(ToolFormat::detect(R1_TEMPLATE), Some(ToolFormat::DeepSeek));
    assert_eq!(
        ToolFormat::detect("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>\n"),
        Some(ToolFormat::Hermes)
    );
    assert_eq!(
        ToolFormat::detect("{{- '<|start_header_id|>ipython<|end_header_id|>' }}"),
        Some(ToolFormat::LlamaJson)
    );
    assert_eq!(ToolFormat::detect("{{ messages[0].content }}"), None);
}

#[test]
fn deepseek_one_and_two_calls() {
    let p = whole(ToolFormat::DeepSeek, DS_ONE);
    assert_eq!(p.content, "");
    assert_eq!(p.calls, vec![call("get_weather", "{\"city\": \"北京\"}")]);
    let p = whole(ToolFormat::DeepSeek, DS_TWO);
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", "{\"city\": \"北京\"}"),
            call("get_time", "{}")
        ]
    );
    // The V3.1 form: name before the separator, bare JSON.
    let v31 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"tz\": \"UTC\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    assert_eq!(
        whole(ToolFormat::DeepSeek, v31).calls,
        vec![call("get_time", "{\"tz\": \"UTC\"}")]
    );
}

#[test]
fn hermes_two_calls_and_string_arguments() {
    let p = whole(ToolFormat::Hermes, HERMES_TWO);
    assert_eq!(p.content, "");
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", "{\"city\": \"Zürich\", \"days\": [1, 2]}"),
            call("get_time", "{}")
        ]
    );
    let p = whole(
        ToolFormat::Hermes,
        "<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}</tool_call>",
    );
    assert_eq!(p.calls, vec![call("get_time", "{\"tz\": \"UTC\"}")]);
    let p = whole(
        ToolFormat::Hermes,
        "<tool_call>{\"name\": \"get_time\"}</tool_call>",
    );
    assert_eq!(p.calls, vec![call("get_time", "{}")]);
}

#[test]
fn llama_json_bare_tagged_and_separated() {
    let expected = vec![
        call("get_weather", "{\"city\": \"{x}\\\"\"}"),
        call("get_time", "{}"),
    ];
    assert_eq!(whole(ToolFormat::LlamaJson, LLAMA_TWO).calls, expected);
    let tagged = whole(ToolFormat::LlamaJson, &format!("<|python_tag|>{LLAMA_TWO}"));
    assert_eq!((tagged.content.as_str(), tagged.calls), ("", expected));
    // JSON that is not a call, and braces in prose, are content.
    for text in ["{\"answer\": 42}", "The set {1, 2} is small."] {
        let p = whole(ToolFormat::LlamaJson, text);
        assert_eq!((p.content.as_str(), p.calls.len()), (text, 0));
    }
}

#[test]
fn text_before_a_call_stays_content_and_is_not_held_back() {
    let p = whole(ToolFormat::DeepSeek, &format!("Let me check.\n\n{DS_TWO}"));
    assert_eq!(p.content, "Let me check.");
    assert_eq!(p.calls.len(), 2);
    let p = whole(
        ToolFormat::LlamaJson,
        &format!("Sure. <|python_tag|>{LLAMA_TWO}"),
    );
    assert_eq!((p.content.as_str(), p.calls.len()), ("Sure.", 2));
    // Streaming: the text is returned when it arrives, before the call is complete.
    let mut s = ToolCallParser::new(ToolFormat::Hermes, names());
    assert_eq!(
        s.push("I will look it up. "),
        vec![Piece::Content("I will look it up.".into())]
    );
    assert_eq!(s.push("<tool_call>{\"name\": \"get_time\", "), vec![]);
    let rest = s.push("\"arguments\": {}}</tool_call>");
    assert_eq!(
        rest,
        vec![
            Piece::CallStart {
                index: 0,
                name: "get_time".into()
            },
            Piece::Arguments {
                index: 0,
                text: "{}".into()
            }
        ]
    );
    // Text after the calls is content again, without the whitespace around the calls.
    let p = whole(ToolFormat::DeepSeek, &format!("{DS_ONE}\nDone."));
    assert_eq!((p.content.as_str(), p.calls.len()), ("Done.", 1));
}

/// What Qwen2.5-Coder-1.5B-Instruct writes instead of `<tool_call>` blocks (greedy, its own
/// template, a get_weather tool): each is the whole answer and one call.
fn hermes_bare_calls() -> Vec<&'static str> {
    vec![
        "{{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}}",
        "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"上海\",\n    \"unit\": \"celsius\"\n  }\n}\n```",
        "  {\"name\": \"get_time\", \"arguments\": {}}\n",
        "```json\n{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}```",
    ]
}

/// Tagless objects that are not calls: content, verbatim.
fn hermes_bare_content() -> Vec<&'static str> {
    vec![
        // An unknown function (the model invents one for a question the tools do not cover).
        "```json\n{\n  \"name\": \"multiply\",\n  \"arguments\": {\"a\": 17, \"b\": 23}\n}\n```",
        // Text after the object, or before it.
        "{\"name\": \"get_time\", \"arguments\": {}} is how you would call it.",
        "```json\n{\"name\": \"get_time\", \"arguments\": {}}\n```\nThat is the call.",
        "Call it like this: {\"name\": \"get_time\", \"arguments\": {}}",
        // Not a call object, an unclosed fence or object, other fences.
        "```json\n{\"city\": \"Paris\"}\n```",
        "```json\n{\"name\": \"get_time\", \"arguments\": {}}",
        "{\"name\": \"get_time\", \"arguments\": {",
        "```python\nprint({1: 2})\n```",
        "```json",
        "{{\"name\": \"get_time\"}} and {{more}}",
        "{{{\"name\": \"get_time\", \"arguments\": {}}}}",
    ]
}

#[test]
fn hermes_tagless_call_objects_are_calls_only_as_the_whole_answer() {
    let expected = [
        call(
            "get_weather",
            "{\"city\": \"Paris\", \"unit\": \"celsius\"}",
        ),
        call(
            "get_weather",
            "{\n    \"city\": \"上海\",\n    \"unit\": \"celsius\"\n  }",
        ),
        call("get_time", "{}"),
        call("get_time", "{\"tz\": \"UTC\"}"),
    ];
    for (text, want) in hermes_bare_calls().into_iter().zip(expected) {
        let p = whole(ToolFormat::Hermes, text);
        assert_eq!((p.content.as_str(), p.calls), ("", vec![want]), "{text}");
    }
    for text in hermes_bare_content() {
        let p = whole(ToolFormat::Hermes, text);
        assert_eq!((p.content.as_str(), p.calls.len()), (text, 0), "{text}");
    }
    // Tagged calls still win, and a fence is only a call in the Hermes format.
    let p = whole(ToolFormat::Hermes, HERMES_TWO);
    assert_eq!(p.calls.len(), 2);
    let text = hermes_bare_calls()[1];
    let p = whole(ToolFormat::DeepSeek, text);
    assert_eq!((p.content.as_str(), p.calls.len()), (text, 0));
}

#[test]
fn hermes_tagless_answers_that_are_not_calls_stream_before_the_end() {
    // A fence of another language, or text after the object, is content at once, not held
    // to the end of the answer.
    let mut p = ToolCallParser::new(ToolFormat::Hermes, names());
    let mut got = p.push("```");
    got.extend(p.push("python\nx = 1"));
    assert_eq!(collect(got).content, "```python\nx = 1");
    let mut p = ToolCallParser::new(ToolFormat::Hermes, names());
    let mut got = p.push("{\"name\": \"get_time\", \"arguments\": {}}");
    assert_eq!(got, vec![], "a possible call is held");
    got.extend(p.push(" is the call"));
    assert_eq!(
        collect(got).content,
        "{\"name\": \"get_time\", \"arguments\": {}} is the call"
    );
}

#[test]
fn malformed_output_is_content_verbatim() {
    for (format, text) in [
        // Unterminated call.
        (
            ToolFormat::DeepSeek,
            DS_ONE[..DS_ONE.len() - 40].to_string(),
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 1}".into(),
        ),
        (
            ToolFormat::LlamaJson,
            "{\"name\": \"get_time\", \"parameters\": {".into(),
        ),
        // Bad JSON.
        (
            ToolFormat::DeepSeek,
            DS_ONE.replace("\"北京\"}", "\"北京\""),
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_time\", \"arguments\": {]}</tool_call>".into(),
        ),
        // Unknown function.
        (
            ToolFormat::DeepSeek,
            DS_ONE.replace("get_weather", "launch"),
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>".into(),
        ),
        // Arguments that are not an object.
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_time\", \"arguments\": [1]}</tool_call>".into(),
        ),
        // A marker with no call.
        (
            ToolFormat::DeepSeek,
            "<｜tool▁calls▁begin｜>just text".into(),
        ),
    ] {
        let p = whole(format, &text);
        assert_eq!(p.calls, vec![], "{text}");
        assert_eq!(p.content, text, "{format:?}");
    }
}

#[test]
fn a_bad_call_after_a_good_one_keeps_the_good_one() {
    let text = DS_TWO.replace("get_time", "launch");
    let p = whole(ToolFormat::DeepSeek, &text);
    assert_eq!(p.calls, vec![call("get_weather", "{\"city\": \"北京\"}")]);
    assert!(p.content.contains("launch"), "{}", p.content);
}

#[test]
fn answers_without_calls_are_unchanged() {
    for format in [
        ToolFormat::DeepSeek,
        ToolFormat::Hermes,
        ToolFormat::LlamaJson,
    ] {
        for text in ["plain answer\n\n", "  x < y and <tool", "<｜tool▁", "{"] {
            let (_, p) = streamed(format, text, &[1]);
            assert_eq!((p.content.as_str(), p.calls.len()), (text, 0), "{format:?}");
        }
    }
}

#[test]
fn utf8_and_markers_split_across_pieces() {
    // Split inside the fullwidth markers and inside multi-byte argument text.
    let mut s = ToolCallParser::new(ToolFormat::DeepSeek, names());
    let mut pieces = Vec::new();
    for piece in [
        "好的<｜tool▁",
        "calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北",
        "京\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    ] {
        pieces.extend(s.push(piece));
    }
    pieces.extend(s.finish());
    assert_eq!(
        pieces,
        vec![
            Piece::Content("好的".into()),
            Piece::CallStart {
                index: 0,
                name: "get_weather".into()
            },
            Piece::Arguments {
                index: 0,
                text: "{\"city\": \"北".into()
            },
            Piece::Arguments {
                index: 0,
                text: "京\"}".into()
            },
        ]
    );
}

#[test]
fn streamed_pieces_reassemble_to_the_whole_parse() {
    for (format, text) in corpus() {
        let expected = whole(format, &text);
        for sizes in [&[1][..], &[2], &[3, 1, 7], &[5, 11, 2], &[64]] {
            let (pieces, got) = streamed(format, &text, sizes);
            assert_eq!(got, expected, "{format:?} {sizes:?} {text}");
            // Each call's start comes before its arguments, with consecutive indexes.
            let mut started = 0;
            for p in &pieces {
                match p {
                    Piece::CallStart { index, .. } => {
                        assert_eq!(*index, started);
                        started += 1;
                    }
                    Piece::Arguments { index, .. } => assert!(*index < started),
                    Piece::Content(t) => assert!(!t.is_empty()),
                }
            }
        }
    }
}

#[test]
fn arguments_come_in_the_pieces_the_model_wrote() {
    let (pieces, p) = streamed(ToolFormat::Hermes, HERMES_TWO, &[4]);
    assert_eq!(p.calls.len(), 2);
    let arg_pieces = pieces
        .iter()
        .filter(|p| matches!(p, Piece::Arguments { index: 0, .. }))
        .count();
    assert!(arg_pieces > 3, "{pieces:?}");
}

#[test]
fn a_call_that_never_closes_is_content_at_the_end() {
    // Many small pieces after an opening marker: each is looked at once (the end marker and
    // the JSON brackets are searched incrementally), and the whole text comes back.
    for (format, open) in [
        (ToolFormat::Hermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"x\": \""),
        (ToolFormat::DeepSeek, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"x\": \""),
        (ToolFormat::LlamaJson, "{\"name\": \"get_time\", \"parameters\": {\"x\": \""),
    ] {
        let mut p = ToolCallParser::new(format, names());
        let mut pieces = p.push(open);
        for _ in 0..20_000 {
            pieces.extend(p.push("ab} "));
        }
        pieces.extend(p.finish());
        let text = format!("{open}{}", "ab} ".repeat(20_000));
        assert_eq!(collect(pieces), Parsed { content: text, calls: vec![] }, "{format:?}");
    }
}
