"""Agents end to end: admin API and CLI, the server-side tool loop on the tiny fixture model,
scope intersection, the step trace (streamed and whole), step limit, tool timeout and cancel on
disconnect.

The random fixture model never writes a tool call of its own. The daemon serves a copy of it
whose chat template renders tools (Hermes `<tool_call>` syntax) and whose added tokens 1548-1551
(unused by that template) decode to complete calls followed by `#END#`. A request that forces
one of them with `logit_bias` and stops at `#END#` makes the model call that tool on every turn,
deterministically; the daemon's own tool-call reader, loop and tools do the rest. Forced
`tool_choice` (constrained decoding) drives the first turn where the arguments don't matter.
"""
import json
import shutil
import subprocess
import time

import httpx
import pytest

from conftest import BIN, ROOT
from test_api import MODEL, QWEN, Server, err

END = "#END#"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}</call>{% endfor %}"
    "{% else %}{{ (m.content or '')[:300] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if tools %}<|im_start|>system\nCall with <tool_call>\n{\"name\": …, \"arguments\": …}\n"
    "</tool_call>{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "<|im_start|>assistant\n")


def call_text(name, arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>{END}"


def agent_model(tmp_path_factory, calls):
    """The fixture copied with the tool template; `calls` maps token id -> (tool, arguments)."""
    model = tmp_path_factory.mktemp("agent-model") / MODEL
    shutil.copytree(QWEN, model)
    (model / "chat_template.jinja").write_text(TEMPLATE)
    tok = json.loads((model / "tokenizer.json").read_text())
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    for token, (name, args) in calls.items():
        text = call_text(name, args)
        added = next(a for a in tok["added_tokens"] if a["id"] == token)
        assert not added["special"]
        added["content"] = text
        cfg["added_tokens_decoder"][str(token)]["content"] = text
    (model / "tokenizer.json").write_text(json.dumps(tok))
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


def force(token):
    """Request fields that make every turn write the call of `token`."""
    return {"logit_bias": {str(token): 100}, "stop": [END], "max_tokens": 8}


TIME, KB_VPN, MISSING = 1548, 1549, 1550
HR_DOC = "Parental leave is sixteen weeks at full pay. Ask the HR office for the form."
PUBLIC_DOC = "The VPN gateway is vpn.example.test; install the client from the intranet."


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    model = agent_model(tmp_path_factory, {
        TIME: ("current_time", {}),
        KB_VPN: ("kb_search", {"query": "leave VPN"}),
        MISSING: ("no_such_tool", {}),
    })
    s = Server(tmp_path_factory.mktemp("agents") / "state", model=model,
               config="[agents]\ntool_timeout_s = 2\nresult_chars = 400\n")
    s.wait_ready()
    s.admin = s.key("admin", "admin")
    yield s
    s.stop()


def api(s, method, path, key=None, headers=None, **kw):
    h = {"Authorization": f"Bearer {key or s.admin}", **(headers or {})}
    return s.http.request(method, path, headers=h, **kw)


def make_agent(s, **fields):
    r = api(s, "POST", "/v1/admin/agents", json=fields)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def kb(srv):
    deadline = time.time() + 120
    while api(srv, "GET", "/v1/kb/collections").status_code == 503 and time.time() < deadline:
        time.sleep(0.2)
    for coll, name, text in [("hr", "parental.md", HR_DOC), ("public", "vpn.md", PUBLIC_DOC)]:
        assert api(srv, "POST", "/v1/kb/collections", json={"name": coll}).status_code == 201
        r = api(srv, "POST", f"/v1/kb/collections/{coll}/documents", params={"filename": name},
                content=text.encode(), headers={"Content-Type": "text/markdown"})
        assert r.status_code == 201, r.text


def chat(s, key, model, stream=False, **body):
    b = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
    if stream:
        b["stream"] = True
        with s.http.stream("POST", "/v1/chat/completions", json=b,
                           headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200, r.read()
            events = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        return events
    r = s.http.post("/v1/chat/completions", json=b, headers={"Authorization": f"Bearer {key}"})
    return r


def test_admin_api_and_cli_manage_agents(srv):
    a = make_agent(srv, name="helper", description="General helper", tools=["current_time"])
    assert a["max_steps"] == 6 and a["model"] is None and a["tools"] == ["current_time"]
    assert api(srv, "POST", "/v1/admin/agents", json={"name": "helper"}).status_code == 409
    e = err(api(srv, "POST", "/v1/admin/agents", json={"name": "x", "tools": ["rm"]}), 400)
    assert e["param"] == "tools" and "unknown tool" in e["message"], e
    e = err(api(srv, "PATCH", "/v1/admin/agents/helper", json={"max_steps": 0}), 400)
    assert e["param"] == "max_steps", e
    r = api(srv, "PATCH", "/v1/admin/agents/helper", json={"max_steps": 2, "temperature": 0.5})
    assert r.status_code == 200 and r.json()["max_steps"] == 2, r.text
    assert api(srv, "GET", "/v1/admin/agents/nobody").status_code == 404
    chat_key = srv.key("plain", "chat")
    assert api(srv, "GET", "/v1/admin/agents", key=chat_key).status_code == 403
    # The CLI goes through the running daemon's socket and sees the same agents.
    cli = [str(BIN), "agents", "--dev", "--state-dir", str(srv.state)]
    p = subprocess.run(cli + ["list"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0 and "helper" in p.stdout and "current_time" in p.stdout, p
    p = subprocess.run(cli + ["update", "helper", "--tool", "kb_search", "--collection", "public"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    shown = api(srv, "GET", "/v1/admin/agents/helper").json()
    assert shown["tools"] == ["current_time", "kb_search"] and shown["collections"] == ["public"]
    p = subprocess.run(cli + ["create", "bad", "--max-steps", "40"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode != 0 and "max_steps" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert api(srv, "DELETE", "/v1/admin/agents/helper").json()["deleted"] is True
    assert api(srv, "GET", "/v1/admin/agents/helper").status_code == 404


def test_agents_are_models_for_keys_with_their_scope(srv):
    make_agent(srv, name="desk", description="IT desk", tools=["current_time"])
    make_agent(srv, name="other", tools=[])
    only = srv.key("desk-user", "agent:desk")
    every = srv.key("all-agents", "agent:*,chat")
    ids = lambda k: [m["id"] for m in api(srv, "GET", "/v1/models", key=k).json()["data"]]
    assert "agent:desk" in ids(only) and "agent:other" not in ids(only)
    assert {"agent:desk", "agent:other", MODEL} <= set(ids(every))
    assert api(srv, "GET", "/v1/models/agent:desk", key=only).json()["description"] == "IT desk"
    assert api(srv, "GET", "/v1/models/agent:other", key=only).status_code == 404
    # An agent-only key chats with its agent, not with the plain model or another agent.
    assert chat(srv, only, "agent:desk", max_tokens=4).status_code == 200
    assert err(chat(srv, only, MODEL, max_tokens=4), 403)["message"]
    assert err(chat(srv, only, "agent:other", max_tokens=4), 403)
    assert err(chat(srv, every, "agent:nobody", max_tokens=4), 404)["code"] == "model_not_found"
    e = err(chat(srv, every, "agent:desk", tools=[{"type": "function", "function": {"name": "f"}}]), 400)
    assert e["param"] == "tools", e
    r = srv.http.post("/v1/completions", json={"model": "agent:desk", "prompt": "x"},
                      headers={"Authorization": f"Bearer {every}"})
    assert err(r, 400)["param"] == "model"


def test_forced_first_call_runs_the_tool_and_the_trace_is_in_the_answer(srv):
    make_agent(srv, name="clock", tools=["current_time"], instructions="Tell the time.")
    key = srv.key("clock-user", "agent:clock")
    tc = {"type": "function", "function": {"name": "current_time"}}
    r = chat(srv, key, "agent:clock", tool_choice=tc, max_tokens=80, seed=3)
    assert r.status_code == 200, r.text
    v = r.json()
    steps = v["agent"]["steps"]
    assert [s["tool"] for s in steps] == ["current_time"], steps
    s = steps[0]
    assert s["status"] == "ok" and s["step"] == 1 and s["arguments"] == {}
    year = time.gmtime().tm_year
    assert str(year) in s["summary"] and isinstance(s["duration_ms"], int), s
    assert v["model"] == "agent:clock" and v["choices"][0]["finish_reason"] in ("stop", "length")
    assert v["agent"]["tools"] == ["current_time"]
    # Two model turns: the forced call, then an answer (tool_choice applies to the first).
    assert v["usage"]["prompt_tokens"] > 0 and "stopped" not in v["agent"]


def test_stream_carries_running_and_finished_steps_and_matches_the_whole_answer(srv):
    make_agent(srv, name="looper", tools=["current_time"], max_steps=2)
    key = srv.key("looper-user", "agent:looper")
    events = chat(srv, key, "agent:looper", stream=True, seed=1, **force(TIME))
    steps = [e["agent_step"] for e in events if "agent_step" in e]
    # The step limit: two rounds of calls, each reported running then ok.
    assert [(s["step"], s["status"]) for s in steps] == [(1, "running"), (1, "ok"),
                                                         (2, "running"), (2, "ok")], steps
    assert steps[0]["call"] == steps[1]["call"] != steps[2]["call"]
    for e in events:
        if "agent_step" in e:  # what the SDK sees: one choice with an empty delta
            assert e["choices"][0]["delta"] == {} and e["choices"][0]["finish_reason"] is None
    last = events[-1]
    assert last["agent"]["stopped"] == "max_steps" and last["choices"][0]["finish_reason"] == "stop"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    # After the limit the model answers without tools: its call text is plain content.
    assert "<tool_call>" in text and "current_time" in text
    whole = chat(srv, key, "agent:looper", seed=1, **force(TIME)).json()
    assert whole["choices"][0]["message"]["content"] == text
    assert [s["status"] for s in whole["agent"]["steps"]] == ["ok", "ok"]


def test_the_official_sdk_reads_an_agent_stream(srv):
    key = srv.key("sdk-user", "agent:looper")
    c = srv.client(key)
    text = ""
    for chunk in c.chat.completions.create(model="agent:looper", messages=[{"role": "user", "content": "hi"}],
                                           stream=True, extra_body=force(TIME)):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert "current_time" in text
    whole = c.chat.completions.create(model="agent:looper", messages=[{"role": "user", "content": "hi"}],
                                      extra_body=force(TIME))
    assert whole.choices[0].message.content == text
    assert [s["tool"] for s in whole.model_extra["agent"]["steps"]] == ["current_time"] * 2


def test_kb_search_gets_only_what_the_caller_may_read(srv, kb):
    make_agent(srv, name="hrdesk", tools=["kb_search"], collections=["hr", "public"], max_steps=1)
    both = srv.key("reads-both", "agent:hrdesk,kb:read:hr,kb:read:public")
    public = srv.key("reads-public", "agent:hrdesk,kb:read:public")
    none = srv.key("reads-nothing", "agent:hrdesk")
    colls = lambda v: {c["collection"] for c in v["citations"]}
    v = chat(srv, both, "agent:hrdesk", **force(KB_VPN)).json()
    assert colls(v) == {"hr", "public"}, v
    step = v["agent"]["steps"][0]
    assert step["status"] == "ok" and step["citations"] and step["arguments"] == {"query": "leave VPN"}
    assert [c["index"] for c in v["citations"]] == list(range(1, len(v["citations"]) + 1))
    v = chat(srv, public, "agent:hrdesk", **force(KB_VPN)).json()
    assert colls(v) == {"public"}, v
    assert not any("Parental" in c["text"] for c in v["citations"])
    # No collection in common: kb_search is not offered, so the call names no tool it has.
    v = chat(srv, none, "agent:hrdesk", **force(KB_VPN)).json()
    assert v["agent"]["tools"] == [] and v["citations"] == [] and v["agent"]["steps"] == [], v


def test_a_call_of_an_unknown_tool_is_an_error_step(srv):
    make_agent(srv, name="confused", tools=["current_time"], max_steps=1)
    key = srv.key("confused-user", "agent:confused")
    v = chat(srv, key, "agent:confused", **force(MISSING)).json()
    # The tool-call reader only passes calls of offered tools: the text stays content.
    assert v["agent"]["steps"] == [] and "no_such_tool" in v["choices"][0]["message"]["content"]


def test_disconnect_cancels_the_run(srv):
    make_agent(srv, name="busy", tools=["current_time"], max_steps=16)
    key = srv.key("busy-user", "agent:busy")
    before = srv.metric("edgeseek_client_disconnects_total")
    body = {"model": "agent:busy", "messages": [{"role": "user", "content": "x"}], "stream": True,
            **force(TIME)}
    with srv.http.stream("POST", "/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}"}) as r:
        for line in r.iter_lines():
            if '"agent_step"' in line and '"ok"' in line:
                break
    deadline = time.time() + 10
    while time.time() < deadline and srv.metric("edgeseek_client_disconnects_total") == before:
        time.sleep(0.1)
    assert srv.metric("edgeseek_client_disconnects_total") > before
    # Nothing of the run is left in the engine.
    deadline = time.time() + 10
    while time.time() < deadline and srv.metric("edgeseek_active_sequences") > 0:
        time.sleep(0.1)
    assert srv.metric("edgeseek_active_sequences") == 0
