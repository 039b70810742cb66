"""Tool calling with a real tool-capable model through the official `openai` SDK: the
get_weather round trip of tests/e2e/tools_eval.py, asserted (greedy, so each run of one
model gives the same answers). The round trips send tools_eval.SYSTEM_PROMPT first: without
it Qwen2.5-Coder-1.5B answers a tool result by calling the tool again (BENCHMARKS.md, "Tool
calling"), which says nothing about the server.

Runs only when EDGESEEK_TOOLS_MODEL names a model directory, e.g.

    EDGESEEK_TOOLS_MODEL=$(scripts/fetch-demo-model --qwen1.5b | tail -1) \\
    EDGESEEK_BIN=$PWD/target/release/edgeseek \\
        ~/.cache/edgeseek/test-venv/bin/python -m pytest -q tests/e2e/test_tools_sdk.py

The fixture models of the other e2e tests write no sensible calls, and the 1.5B model that
does is too large and slow for CI, so without the variable the whole module is reported as
skipped (one line saying why), never as a failure. `scripts/eval-tools` scores all 20
questions with the same code.
"""

import json
import os
from pathlib import Path

import pytest

MODEL_DIR = os.environ.get("EDGESEEK_TOOLS_MODEL")
if not MODEL_DIR:
    pytest.skip("EDGESEEK_TOOLS_MODEL is not set (a tool-capable model directory, e.g. "
                "scripts/fetch-demo-model --qwen1.5b); this module needs a real model",
                allow_module_level=True)

import httpx  # noqa: E402
import openai  # noqa: E402

import tools_eval  # noqa: E402
from test_api import Server  # noqa: E402

MODEL = Path(MODEL_DIR).resolve()
NAME = MODEL.name
BY_ID = {q[0]: q for q in tools_eval.QUESTIONS}
SYSTEM = tools_eval.SYSTEM_PROMPT


@pytest.fixture(scope="module")
def tools_client(tmp_path_factory):
    assert MODEL.is_dir(), f"EDGESEEK_TOOLS_MODEL={MODEL_DIR} is not a directory"
    s = Server(tmp_path_factory.mktemp("tools-sdk") / "state", model=MODEL)
    try:
        s.wait_ready(timeout=900)
        yield openai.OpenAI(base_url=s.url + "/v1", api_key=s.key("tools-sdk"), max_retries=0,
                            http_client=httpx.Client(verify=s.tls_context(), timeout=600))
    finally:
        s.stop()


def test_auto_calls_the_tool_and_the_answer_uses_its_result(tools_client):
    r = tools_eval.run_question(tools_client, NAME, BY_ID["paris"], sampling="greedy",
                                system=SYSTEM)
    first = r["answers"][0]
    assert first["finish_reason"] == "tool_calls" and first["tool_calls"], r
    assert r["problems"] == [], r
    args = json.loads(r["calls"][0]["arguments"])
    assert r["calls"][0]["name"] == "get_weather" and "paris" in args["city"].lower(), r
    assert r["choice_ok"] and r["roundtrip_ok"], r
    # The final answer is content only and quotes the 18 °C the tool returned.
    assert not r["answers"][-1]["tool_calls"] and "18" in r["answers"][-1]["content"], r


def test_auto_answers_directly_when_no_tool_is_needed(tools_client):
    r = tools_eval.run_question(tools_client, NAME, BY_ID["rainbow"], sampling="greedy")
    first = r["answers"][0]
    assert not first["tool_calls"] and first["finish_reason"] in ("stop", "length"), r
    assert r["choice_ok"] and r["problems"] == [], r
    assert "light" in first["content"].lower(), r


def test_chinese_question_calls_the_tool(tools_client):
    r = tools_eval.run_question(tools_client, NAME, BY_ID["shanghai-zh"], sampling="greedy",
                                system=SYSTEM)
    assert r["choice_ok"] and r["problems"] == [], r
    assert r["roundtrip_ok"], r


def test_streamed_calls_reassemble_to_the_whole_answer(tools_client):
    q = BY_ID["sydney"]
    whole = tools_eval.run_question(tools_client, NAME, q, sampling="greedy", stream=False,
                                    system=SYSTEM)
    streamed = tools_eval.run_question(tools_client, NAME, q, sampling="greedy", stream=True,
                                       system=SYSTEM)
    assert whole["calls"] and streamed["calls"] == whole["calls"], (whole, streamed)
    strip = [{k: v for k, v in a.items() if k != "tool_calls"} for a in whole["answers"]]
    assert [{k: v for k, v in a.items() if k != "tool_calls"} for a in streamed["answers"]] == strip
    assert streamed["problems"] == [], streamed


def test_tool_choice_none_returns_content_only(tools_client):
    r = tools_client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": BY_ID["paris"][4]}],
        tools=tools_eval.TOOLS, tool_choice="none", temperature=0, max_tokens=60)
    c = r.choices[0]
    assert not c.message.tool_calls and c.finish_reason in ("stop", "length"), c
    # What auto reads as a call (test above) is returned as the text the model wrote.
    assert tools_eval.CALL_TEXT.search(c.message.content), c
