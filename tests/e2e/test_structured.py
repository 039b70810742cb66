"""Structured outputs and forced tool calls on the random-weight fixtures.

A random model writes schema-valid JSON only if the constraint is real: every answer here is
checked against its schema, for many seeds, whole and streamed.
"""
import json
import shutil

import openai
import pytest

# The fixture model served over HTTPS, a chat key and an SDK client (module-scoped: this
# module gets its own daemon).
from test_api import MODEL, QWEN, ROOT, Server, chat, client, err, key, post, server  # noqa: F401

# Reasoning is cut after one token (the fixture's template opens <think>): the constraint
# starts with the answer.
R1 = {"extra_body": {"max_reasoning_tokens": 1}}

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"code": {"type": "string", "maxLength": 4},
                           "lat": {"type": "number", "minimum": -90, "maximum": 90}},
            "required": ["code"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "unit", "where"],
    "additionalProperties": False,
}


def check_schema(v):
    """SCHEMA's rules, written out."""
    assert isinstance(v, dict) and set(v) <= {"city", "unit", "days", "flags", "where"}, v
    assert isinstance(v["city"], str) and len(v["city"]) <= 10
    assert v["unit"] in ("celsius", "fahrenheit")
    if "days" in v:
        assert isinstance(v["days"], int) and 1 <= v["days"] <= 7
    if "flags" in v:
        assert len(v["flags"]) <= 3 and all(isinstance(b, bool) for b in v["flags"])
    w = v["where"]
    assert set(w) <= {"code", "lat"} and isinstance(w["code"], str) and len(w["code"]) <= 4
    if "lat" in w:
        assert isinstance(w["lat"], (int, float)) and -90 <= w["lat"] <= 90


def fmt(schema):
    return {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}


def test_json_schema_answers_validate_for_many_seeds(client):
    done = 0
    for seed in range(10):
        r = chat(client, response_format=fmt(SCHEMA), max_tokens=300, seed=seed, **R1)
        c = r.choices[0]
        if c.finish_reason == "length":
            continue
        assert c.finish_reason == "stop", c
        check_schema(json.loads(c.message.content))
        done += 1
    assert done >= 7, f"only {done} of 10 answers finished"


def test_without_the_constraint_the_fixture_writes_no_json(client):
    # The control: the same requests unconstrained are not JSON at all.
    for seed in range(3):
        text = chat(client, max_tokens=40, seed=seed, **R1).choices[0].message.content
        with pytest.raises(ValueError):
            json.loads(text)


def test_json_object_and_streaming_equal_the_whole_answer(client):
    kw = dict(response_format={"type": "json_object"}, max_tokens=200, seed=4, temperature=1.0, **R1)
    whole = chat(client, **kw).choices[0]
    if whole.finish_reason == "stop":
        assert isinstance(json.loads(whole.message.content), dict)
    chunks = list(chat(client, stream=True, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_several_choices_each_follow_the_schema(client):
    r = chat(client, response_format=fmt(SCHEMA), max_tokens=300, seed=11, n=3, **R1)
    for c in r.choices:
        if c.finish_reason == "stop":
            check_schema(json.loads(c.message.content))


@pytest.mark.parametrize("response_format,param,words", [
    (fmt({"$ref": "https://example.com/schema.json"}), "response_format", "cannot be enforced"),
    (fmt({"type": "no-such-type"}), "response_format", "cannot be enforced"),
    ({"type": "json_schema"}, "response_format", "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
     "response_format.json_schema.name", "name"),
    ({"type": "yaml"}, "response_format", "not supported"),
    ({"type": "json_object", "json_schema": {"name": "x"}}, "response_format", "only with"),
])
def test_unenforceable_or_malformed_formats_are_400(server, key, response_format, param, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": response_format}
    e = err(post(server, key, json.dumps(body)), 400)
    assert e["param"] == param and words in e["message"], e


# --- forced tool calls ----------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object",
                       "properties": {"city": {"enum": ["Oslo", "Paris", "北京"]},
                                      "unit": {"enum": ["c", "f"]}},
                       "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "parameters": {
            "type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}},
            "required": ["zone"], "additionalProperties": False}}},
]


def check_call(call):
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert args["city"] in ("Oslo", "Paris", "北京") and set(args) <= {"city", "unit"}
    else:
        assert call.function.name == "get_time" and len(args["zone"]) <= 6 and set(args) == {"zone"}
    assert call.id.startswith("call_") and call.type == "function"


def tool_model(tmp_path_factory, name, template):
    model = tmp_path_factory.mktemp(name) / MODEL
    shutil.copytree(QWEN, model)
    (model / "chat_template.jinja").write_text(template)
    s = Server(tmp_path_factory.mktemp(name + "-state") / "state", model=model)
    s.wait_ready()
    return s


@pytest.fixture(scope="module", params=["hermes", "deepseek"])
def tool_server(request, tmp_path_factory):
    if request.param == "hermes":
        # A short Hermes/Qwen-style template (the fixture's context is 512 tokens).
        template = (
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}<|im_end|>\n{% endfor %}"
            "{% if tools %}<|im_start|>system\nCall with <tool_call>\n{\"name\": …, \"arguments\": …}\n"
            "</tool_call>{% for t in tools %}{{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
            "<|im_start|>assistant\n")
    else:
        r1 = (ROOT / "scripts" / "fixtures" / "deepseek-r1-distill.jinja").read_text()
        anchor = "{{bos_token}}{{ns.system_prompt}}"
        template = r1.replace(anchor, anchor + "{% if tools %}{% for tool in tools %}"
                              "{{ tool.function.name }}{% endfor %}{% endif %}")
    s = tool_model(tmp_path_factory, "tools-" + request.param, template)
    yield s
    s.stop()


def test_required_and_named_calls_are_valid_whole_and_streamed(tool_server):
    c = tool_server.client(tool_server.key("forced"))
    calls = 0
    for seed in range(4):
        for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
            kw = dict(tools=TOOLS, tool_choice=choice, max_tokens=150, seed=seed, temperature=1.0, **R1)
            r = chat(c, **kw).choices[0]
            if r.finish_reason == "length":
                continue
            assert r.finish_reason == "tool_calls", r
            assert r.message.tool_calls and not (r.message.content or "").strip(), r.message
            for call in r.message.tool_calls:
                check_call(call)
                if choice != "required":
                    assert call.function.name == "get_time"
            calls += len(r.message.tool_calls)
            # The stream reassembles (as the SDK does) to the same calls.
            by_index = {}
            last = None
            for ch in chat(c, stream=True, **kw):
                if not ch.choices:
                    continue
                last = ch.choices[0].finish_reason or last
                for d in ch.choices[0].delta.tool_calls or []:
                    e = by_index.setdefault(d.index, {"name": "", "arguments": ""})
                    if d.function and d.function.name:
                        e["name"] += d.function.name
                    if d.function and d.function.arguments:
                        e["arguments"] += d.function.arguments
            assert last == "tool_calls"
            assert [by_index[i] for i in sorted(by_index)] == [
                {"name": t.function.name, "arguments": t.function.arguments}
                for t in r.message.tool_calls]
    assert calls >= 4, calls


def test_a_tool_turn_after_a_forced_call_renders(tool_server):
    c = tool_server.client(tool_server.key("turn"))
    first = chat(c, tools=TOOLS, tool_choice="required", max_tokens=150, seed=1, temperature=1.0, **R1)
    m = first.choices[0].message
    if not m.tool_calls:
        pytest.fail(f"no call: {first.choices[0]}")
    call = m.tool_calls[0]
    messages = [{"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r = chat(c, tools=TOOLS, messages=messages, tool_choice="none", max_tokens=4, seed=1)
    assert r.choices[0].finish_reason in ("stop", "length")


CALLS_BEGIN_ID = 1543  # <｜tool▁calls▁begin｜> in the fixture tokenizer (tests/fixtures/README.md)


@pytest.fixture(scope="module")
def deepseek_tools(tmp_path_factory):
    r1 = (ROOT / "scripts" / "fixtures" / "deepseek-r1-distill.jinja").read_text()
    anchor = "{{bos_token}}{{ns.system_prompt}}"
    s = tool_model(tmp_path_factory, "tools-optional", r1.replace(
        anchor, anchor + "{% if tools %}{% for tool in tools %}{{ tool.function.name }}{% endfor %}{% endif %}"))
    yield s.client(s.key("optional"))
    s.stop()


def test_auto_with_a_strict_tool_constrains_a_call_once_opened(deepseek_tools):
    # logit_bias makes the model open a call at once (the call-opening token); from there the
    # grammar holds: the call completes with valid arguments. Without strict the same request
    # writes the opening token over and over (test_api: it comes back as content).
    # Both strict: a free-form argument object would let the bias write the opening token
    # inside its strings forever. One call per answer.
    strict_tools = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    kw = dict(tools=strict_tools, tool_choice="auto", max_tokens=150, temperature=1.0,
              parallel_tool_calls=False, logit_bias={str(CALLS_BEGIN_ID): 100}, **R1)
    calls = 0
    for seed in range(5):
        r = chat(deepseek_tools, seed=seed, **kw).choices[0]
        if r.finish_reason == "length":
            continue
        assert r.finish_reason == "tool_calls" and r.message.tool_calls, r
        assert len(r.message.tool_calls) == 1
        check_call(r.message.tool_calls[0])
        calls += 1
    assert calls >= 3, calls
    free = chat(deepseek_tools, seed=0, **{**kw, "tools": TOOLS}).choices[0]
    assert not free.message.tool_calls and "<｜tool▁calls▁begin｜>" in free.message.content
