"""Remote models end to end: a downstream edgeseek forwarding chat, completions and embeddings
to REAL OpenAI-compatible upstreams (a second edgeseek, llama.cpp's llama-server), overflow from
a busy local model, data residency, the agent loop and retrieval on a remote model, the faults
(down, slow, garbage, dying mid-stream, client gone) and the secrets (the upstream's bearer
token) that must never come back out.

What proves a request reached an upstream or not is the upstream's own record: the second
edgeseek's audit log (with `[audit] include_content`, so it shows the body it received, under
the key the downstream holds), llama-server's task log (upstreams.LlamaServer.requests), the
garbage server's request lines. Answers through the downstream are compared with the
upstream's own answer to the same request, greedy (temperature 0), both deterministic.

The processes (see upstreams.py), started once for the module:
- `up`: edgeseek serving the tiny Qwen2 fixture (R1 template: it writes `reasoning_content`),
  a tool-calling copy of it (`tiny-qwen2-tools`, test_agents' template and call tokens) and
  the all-MiniLM embedder;
- `llama`: llama-server with SmolLM2-135M-Instruct and an API key;
- `slow`, `doomed`: two more llama-servers, for SIGSTOP and SIGKILL;
- `garbage`: a TCP server answering chat requests with non-HTTP bytes or non-JSON;
- `web`: the fixture web site behind a real SearXNG (webtools.py), for `web_search`;
- `down`: the downstream under test, its local model the tiny fixture with one batch slot and
  one queue place (so that overflow is easy to provoke), its log at debug level.
"""
import json
import os
import re
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, ROOT, error_line
from test_agents import agent_model, force
from test_api import MODEL, QWEN, Server
from upstreams import (EdgeseekUpstream, LlamaServer, downstream_config, edgeseek_upstream,
                       garbage_server, llama_server, metric, remote_section, write_secret)
from webtools import free_port, searxng, site

TOOLS_MODEL = "tiny-qwen2-tools"
EMBED_MODEL = "all-minilm-l6-v2"
KB_CALL = 1549  # the call token of the tools model: a kb_search call (test_agents.agent_model)
KB_QUERY = "quartermaster passphrase"

PUBLIC_PHRASE = "VIOLET-HERON-4471"
PUBLIC_DOC = (f"# Visitors\n\nThe quartermaster's passphrase is {PUBLIC_PHRASE}. Visitors collect "
              "their badge at the front desk before nine.\n")
HR_PHRASE = "BAND-C-61000"
HR_DOC = f"# Salaries\n\nSalary band C starts at {HR_PHRASE} euros a year; this is confidential.\n"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Oslo", "Paris"]}},
                   "required": ["city"], "additionalProperties": False}}}

# The remotes of the downstream whose health should settle at `up` (`gone` and `wrongkey`:
# `down`).
UP_REMOTES = ["hq", "hqtools", "hqembed", "llama", "slow", "doomed", "junk", "badjson",
              "nousage"]
WRONG_TOKEN = "wrong-" + secrets.token_hex(16)


# --------------------------------------------------------------------------------------------
# helpers


def hdr(key, rid=None):
    h = {"Authorization": f"Bearer {key}"}
    if rid:
        h["X-Request-Id"] = rid
    return h


def post(s, key, body, path="/v1/chat/completions", rid=None, timeout=60):
    return s.http.post(path, json=body, headers=hdr(key, rid), timeout=timeout)


def stream(s, key, body, path="/v1/chat/completions", rid=None, timeout=60):
    """(status, events, done): the parsed `data:` events of a streamed answer and whether it
    ended with `data: [DONE]` (the body of a refused request in `events`, status not 200)."""
    with s.http.stream("POST", path, json={**body, "stream": True}, headers=hdr(key, rid),
                       timeout=timeout) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()], False
        events, done = [], False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                assert not done, "an event after [DONE]"
                events.append(json.loads(line[6:]))
    return 200, events, done


def deltas(events):
    """Per chunk with a choice: (reasoning_content, content, finish_reason) as sent."""
    return [(e["choices"][0]["delta"].get("reasoning_content") or "",
             e["choices"][0]["delta"].get("content") or "",
             e["choices"][0].get("finish_reason"))
            for e in events if e.get("choices")]


def joined(events):
    """The streamed text: (reasoning, content)."""
    d = deltas(events)
    return "".join(r for r, _, _ in d), "".join(c for _, c, _ in d)


def streamed_calls(events):
    """Tool calls reassembled from stream deltas as the SDKs do: [{name, arguments}] by index."""
    by_index = {}
    for e in events:
        for d in (e.get("choices") or [{}])[0].get("delta", {}).get("tool_calls") or []:
            c = by_index.setdefault(d["index"], {"name": "", "arguments": ""})
            c["name"] += (d.get("function") or {}).get("name") or ""
            c["arguments"] += (d.get("function") or {}).get("arguments") or ""
    return [by_index[i] for i in sorted(by_index)]


def calls_of(message):
    return [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in message.get("tool_calls") or []]


def error_of(resp, status):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]


def assert_hides(text, *secrets_):
    """None of `secrets_` (upstream URLs, host:port, tokens) appears in `text`."""
    for s in secrets_:
        assert s not in text, f"{s!r} leaked in {text!r}"


def hides_upstream(url):
    """What an error must not show of an upstream at `url`: the URL, its host:port."""
    m = re.match(r"https?://([^/]+)", url)
    return [url, url.removesuffix("/v1"), m[1]]


def readyz(s):
    r = s.http.get("/readyz")
    assert r.status_code == 200, r.text
    return r.json()


def wait_remotes(s, want: dict, timeout=60.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = readyz(s).get("remotes", {})
        if all(got.get(k) == v for k, v in want.items()):
            return got
        time.sleep(0.2)
    raise AssertionError(f"remotes {got}, wanted {want}")


def audit_of(s, rid, timeout=10.0):
    """The downstream's audit record of request `rid` (written once its response was sent)."""
    deadline = time.monotonic() + timeout
    while True:
        p = subprocess.run([str(BIN), "audit", "--json", "--dev", "--state-dir", str(s.state)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        found = [json.loads(line) for line in p.stdout.splitlines()
                 if json.loads(line).get("request_id") == rid]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, (rid, found)
            return found[0]
        time.sleep(0.1)


def wait_for(pred, timeout=15.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# --------------------------------------------------------------------------------------------
# the upstreams and the downstream


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    model = agent_model(tmp_path_factory, {KB_CALL: ("kb_search", {"query": KB_QUERY})})
    tools = model.rename(model.parent / TOOLS_MODEL)
    with edgeseek_upstream(tmp_path_factory.mktemp("upstream") / "state", models=[QWEN, tools],
                           config="[audit]\ninclude_content = true\n") as u:
        # A key of its own for the direct calls the tests compare with (the downstream's key
        # is the one whose records count what reached it).
        u.direct = u.server.key("direct", "chat,embeddings")
        assert wait_for(lambda: EMBED_MODEL in {m["id"] for m in u.server.http.get(
            "/v1/models", headers=hdr(u.direct)).json()["data"]}, timeout=120), "no embedder"
        yield u


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    token = "llama-" + secrets.token_hex(16)
    d = tmp_path_factory.mktemp("llama")
    with llama_server(d, api_key=token) as s:
        s.key_file = write_secret(d / "llama.key", token)
        yield s


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("slow")) as s:
        yield s


@pytest.fixture(scope="module")
def doomed(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("doomed")) as s:
        yield s


@pytest.fixture(scope="module")
def garbage():
    with garbage_server() as g:
        yield g


@pytest.fixture(scope="module")
def web():
    """The fixture web site and a real SearXNG over it (webtools.py), for `web_search`."""
    with site() as st, searxng(st) as sx:
        yield st, sx


@pytest.fixture(scope="module")
def gone_url():
    """An upstream that is not there: a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture(scope="module")
def down(tmp_path_factory, up, llama, slow, doomed, garbage, gone_url, web):
    wrong = write_secret(tmp_path_factory.mktemp("wrong") / "wrong.key", WRONG_TOKEN)
    config = downstream_config(
        [
            remote_section("hq", up, health_interval_s=1),
            remote_section("hqtools", up, model=TOOLS_MODEL),
            remote_section("hqembed", up, model=EMBED_MODEL),
            remote_section("llama", llama, api_key_file=llama.key_file),
            # Probed once at start, then not again within the test: the fault is met by the
            # request, not by the health check.
            remote_section("slow", slow, first_byte_timeout_s=2, health_interval_s=300),
            remote_section("doomed", doomed, health_interval_s=300),
            remote_section("junk", url=garbage.junk_url, model=garbage.MODEL,
                           health_interval_s=300),
            remote_section("badjson", url=garbage.badjson_url, model=garbage.MODEL,
                           health_interval_s=300),
            remote_section("nousage", url=garbage.nousage_url, model=garbage.MODEL,
                           tokenizer=QWEN / "tokenizer.json", health_interval_s=300),
            remote_section("gone", url=gone_url, connect_timeout_s=1, health_interval_s=1),
            # llama-server with a token it does not accept.
            remote_section("wrongkey", llama, api_key_file=wrong, health_interval_s=1),
        ],
        overflow=[{"model": MODEL, "to": "hq", "max_wait_s": 0}],
        residency={"local_groups": ["legal"], "local_collections": ["hr"]},
        extra="[engine]\nmax_batch = 1\nmax_queue = 1\n[limits]\nkey_queue_share = 1\n"
              "[agents]\nresult_chars = 400\n"
              f'[web_search]\nsearxng_url = "{web[1]}"\ntop_n = 1\nfetch = 0\n')
    # The downstream logs at debug level: the check that the bearer token is never logged
    # means something only where everything is logged.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEEK_TEST_LOG", "debug")
        s = Server(tmp_path_factory.mktemp("downstream") / "state", model=QWEN, config=config)
    try:
        s.wait_ready()
        wait_remotes(s, {**{n: "up" for n in UP_REMOTES}, "gone": "down", "wrongkey": "down"})
        s.user = s.key("user", "chat,embeddings,web,kb:read:public,kb:read:hr")
        s.admin = s.key("admin", "admin")
        s.kb = s.key("kb-writer", "kb:write:*,chat")
        s.up, s.llama = up, llama
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def kb(down):
    assert wait_for(lambda: down.http.get("/v1/kb/collections", headers=hdr(down.kb))
                    .status_code == 200, timeout=120), "knowledge base not ready"
    for coll, name, text in [("public", "visitors.md", PUBLIC_DOC), ("hr", "salaries.md", HR_DOC)]:
        r = down.http.post("/v1/kb/collections", json={"name": coll}, headers=hdr(down.kb))
        assert r.status_code == 201, r.text
        r = down.http.post(f"/v1/kb/collections/{coll}/documents", params={"filename": name},
                           content=text.encode(), headers={**hdr(down.kb),
                                                           "Content-Type": "text/markdown"})
        assert r.status_code == 201, r.text


def direct(up: EdgeseekUpstream, body, path="/v1/chat/completions"):
    """The upstream edgeseek's own answer (its own key, its own model name)."""
    r = up.server.http.post(path, json=body, headers=hdr(up.direct), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def direct_stream(up: EdgeseekUpstream, body, path="/v1/chat/completions"):
    status, events, done = stream(up.server, up.direct, body, path)
    assert status == 200 and done, events
    return events


# --------------------------------------------------------------------------------------------
# listing, pass-through


def test_remote_models_are_listed_with_backend_remote(down):
    """/v1/models lists each remote model like a local one, marked `backend: remote`; the
    local model has no `backend` field."""
    r = down.http.get("/v1/models", headers=hdr(down.user))
    assert r.status_code == 200, r.text
    listed = {m["id"]: m for m in r.json()["data"]}
    for name in UP_REMOTES + ["gone", "wrongkey"]:
        assert name in listed, (name, list(listed))
        assert listed[name]["object"] == "model" and listed[name]["backend"] == "remote"
    assert MODEL in listed and "backend" not in listed[MODEL], listed[MODEL]
    one = down.http.get("/v1/models/hq", headers=hdr(down.user))
    assert one.status_code == 200 and one.json()["id"] == "hq", one.text
    assert one.json()["backend"] == "remote"


def test_greedy_chat_through_hq_is_the_upstreams_own_answer(down, up):
    """A chat to `hq` is the upstream's greedy answer to the same request, word for word
    (content and R1 reasoning_content), with the upstream's usage, under edgeseek's own id and
    the name `hq`; the upstream recorded it under the downstream's key (the api_key_file
    token), with its own model name and the client's messages, and no edgeseek extension."""
    body = {"messages": [{"role": "user", "content": "Tell me about the sea"}],
            "max_tokens": 16, "temperature": 0}
    want = direct(up, {**body, "model": MODEL})
    before = len(up.served())
    r = post(down, down.user, {**body, "model": "hq"}, rid="remote-chat-1")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "chat.completion" and got["model"] == "hq"
    # edgeseek's own id, as for a local model: chatcmpl-<request id>.
    assert got["id"] == f"chatcmpl-{r.headers['x-request-id']}" != want["id"]
    assert want["id"] not in r.text
    g, w = got["choices"][0], want["choices"][0]
    assert w["message"]["reasoning_content"], "the R1 fixture reasons first"
    assert g["message"]["content"] == w["message"]["content"]
    assert g["message"]["reasoning_content"] == w["message"]["reasoning_content"]
    assert g["finish_reason"] == w["finish_reason"]
    assert got["usage"] == want["usage"]
    # The upstream's own record of what it was sent.
    served = up.served_settled()
    assert len(served) == before + 1
    rec = served[-1]
    assert rec["status"] == 200 and rec["model"] == MODEL
    assert rec["content"]["model"] == MODEL
    assert rec["content"]["messages"] == body["messages"]
    assert rec["tokens_in"] == got["usage"]["prompt_tokens"]
    assert rec["tokens_out"] == got["usage"]["completion_tokens"]
    # The downstream's record: served by the remote model, not an overflow.
    mine = audit_of(down, "remote-chat-1")
    assert mine["remote"] == "hq" and not mine.get("overflow"), mine
    assert mine["status"] == 200


def test_streamed_chat_passes_through_chunk_by_chunk(down, up):
    """A streamed chat to `hq` sends the upstream's chunks one for one (same reasoning and
    content pieces, same finish), rewritten to `hq` and one edgeseek id; usage comes last, as
    the upstream counted it, only when asked for; the pieces make the whole answer."""
    body = {"messages": [{"role": "user", "content": "Tell me about the sea"}],
            "max_tokens": 16, "temperature": 0, "stream_options": {"include_usage": True}}
    want = direct_stream(up, {**body, "model": MODEL})
    status, got, done = stream(down, down.user, {**body, "model": "hq"})
    assert status == 200 and done, got
    assert deltas(got) == deltas(want)
    assert got[0]["choices"][0]["delta"].get("role") == "assistant"
    assert {e["model"] for e in got} == {"hq"}
    assert len({e["id"] for e in got}) == 1 and got[0]["id"] != want[0]["id"]
    assert got[-1]["choices"] == [] and got[-1]["usage"] == want[-1]["usage"]
    assert all(e.get("usage") is None for e in got[:-1])
    plain_body = {k: v for k, v in body.items() if k != "stream_options"} | {"model": "hq"}
    m = post(down, down.user, plain_body).json()["choices"][0]["message"]
    assert joined(got) == (m["reasoning_content"], m["content"])
    # Not asked for: no usage anywhere in the stream.
    status, plain, done = stream(down, down.user, plain_body)
    assert status == 200 and done
    assert deltas(plain) == deltas(want)
    assert all(e.get("usage") is None for e in plain)


def test_text_completions_pass_through(down, up):
    """/v1/completions to `hq`: the upstream's greedy text and usage, whole and streamed."""
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    want = direct(up, {**body, "model": MODEL}, "/v1/completions")
    r = post(down, down.user, {**body, "model": "hq"}, "/v1/completions")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "hq" and got["object"] == want["object"]
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["usage"] == want["usage"]
    status, events, done = stream(down, down.user, {**body, "model": "hq"}, "/v1/completions")
    assert status == 200 and done
    assert "".join(e["choices"][0]["text"] for e in events if e.get("choices")) \
        == want["choices"][0]["text"]
    assert {e["model"] for e in events} == {"hq"}


def test_embeddings_pass_through(down, up):
    """/v1/embeddings to a remote embedding model: the upstream's vectors and usage, under
    the remote model's name."""
    body = {"input": ["the quartermaster", "访客"]}
    want = direct(up, {**body, "model": EMBED_MODEL}, "/v1/embeddings")
    r = post(down, down.user, {**body, "model": "hqembed"}, "/v1/embeddings")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "hqembed"
    assert [d["index"] for d in got["data"]] == [0, 1]
    for g, w in zip(got["data"], want["data"], strict=True):
        assert g["embedding"] == pytest.approx(w["embedding"], abs=1e-6)
    assert got["usage"] == want["usage"]


def test_llama_server_greedy_whole_and_streamed_with_usage(down, llama):
    """Through `llama` (llama.cpp's llama-server, bearer token from api_key_file): the greedy
    answer is llama-server's own, usage is its usage; streamed, the pieces are its pieces and
    the usage chunk (stream_options.include_usage) is its usage; its task log shows every
    request, with the client's max_tokens and temperature."""
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24, "temperature": 0}
    before = len(llama.requests())
    w = llama.post("/chat/completions", {**body, "model": llama.model_id})
    assert w.status_code == 200, w.text
    want = w.json()
    r = post(down, down.user, {**body, "model": "llama"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "llama" and got["id"] != want["id"]
    assert want["choices"][0]["message"]["content"].strip()
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert got["usage"][k] == want["usage"][k], (k, got["usage"], want["usage"])
    sbody = {**body, "stream_options": {"include_usage": True}}
    want_s = llama.stream("/chat/completions", {**sbody, "model": llama.model_id, "stream": True})
    status, got_s, done = stream(down, down.user, {**sbody, "model": "llama"})
    assert status == 200 and done, got_s
    pieces = [c for _, c, _ in deltas(got_s)]
    assert pieces == [c for _, c, _ in deltas(want_s)]
    assert "".join(pieces) == want["choices"][0]["message"]["content"]
    assert {e["model"] for e in got_s} == {"llama"}
    last = got_s[-1]
    assert last["choices"] == [] and last["usage"]
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert last["usage"][k] == want["usage"][k], (k, last["usage"], want["usage"])
    # Its own log: the four chat requests (two direct, two through the downstream), greedy,
    # each with the prompt and answer the usage reports.
    tasks = llama.requests()[before:]
    assert len(tasks) == 4, tasks
    for t in tasks:
        assert t["chat"] and t["temperature"] == 0 and t["done"], t
        assert t["prompt_tokens"] == want["usage"]["prompt_tokens"], t
        assert t["completion_tokens"] == want["usage"]["completion_tokens"], t


def test_tool_calls_pass_through_whole_and_streamed(down, up):
    """Tools with tool_choice "required" on `hqtools`: the upstream's forced call comes back
    as the client's tool_calls (name and arguments as the upstream wrote them, finish_reason
    tool_calls), whole and streamed as the SDKs reassemble it; the upstream received the tools
    and tool_choice."""
    body = {"messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 100,
            "temperature": 0, "tools": [WEATHER], "tool_choice": "required"}
    want = direct(up, {**body, "model": TOOLS_MODEL})
    want_calls = calls_of(want["choices"][0]["message"])
    assert want_calls and want["choices"][0]["finish_reason"] == "tool_calls", want
    r = post(down, down.user, {**body, "model": "hqtools"})
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]
    assert got["finish_reason"] == "tool_calls"
    assert calls_of(got["message"]) == want_calls
    assert all(c["id"].startswith("call_") and c["type"] == "function"
               for c in got["message"]["tool_calls"])
    json.loads(got["message"]["tool_calls"][0]["function"]["arguments"])
    rec = up.served_settled()[-1]
    assert rec["content"]["tools"] == [WEATHER] and rec["content"]["tool_choice"] == "required"
    assert rec["content"]["model"] == TOOLS_MODEL
    status, events, done = stream(down, down.user, {**body, "model": "hqtools"})
    assert status == 200 and done
    assert streamed_calls(events) == want_calls
    assert [f for _, _, f in deltas(events) if f] == ["tool_calls"]
    # Chunk by chunk as the upstream streams the same request (call ids are the upstream's
    # own, random per answer: compared apart from them).
    want_events = direct_stream(up, {**body, "model": TOOLS_MODEL})

    def call_deltas(evs):
        return [[{k: v for k, v in d.items() if k != "id"} for d in e["choices"][0]["delta"]
                 .get("tool_calls") or []] for e in evs if e.get("choices")]
    assert call_deltas(events) == call_deltas(want_events)


# --------------------------------------------------------------------------------------------
# edgeseek's own features on a remote model


def test_knowledge_runs_here_and_the_sources_go_upstream(down, up, kb):
    """`knowledge` with a remote model: retrieval runs in the downstream (citations from its
    own collection, the document's unique phrase in them), the sources are put into the last
    user message the upstream receives (its audit shows the phrase there and no `knowledge`
    field), and the upstream's prompt_tokens grow by them; streamed, the first chunk carries
    the same citations."""
    question = "What is the quartermaster's passphrase?"
    body = {"model": "hq", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": question}]}
    plain = post(down, down.user, body)
    assert plain.status_code == 200, plain.text
    r = post(down, down.user, {**body, "knowledge": {"collections": ["public"], "top_k": 1}})
    assert r.status_code == 200, r.text
    out = r.json()
    cites = out["citations"]
    assert [c["index"] for c in cites] == [1]
    assert cites[0]["collection"] == "public" and cites[0]["filename"] == "visitors.md"
    assert PUBLIC_PHRASE in cites[0]["text"]
    rec = up.served_settled()[-1]
    sent = rec["content"]
    assert "knowledge" not in sent and sent["model"] == MODEL
    last_user = [m for m in sent["messages"] if m["role"] == "user"][-1]
    assert PUBLIC_PHRASE in last_user["content"] and question in last_user["content"]
    assert out["usage"]["prompt_tokens"] == rec["tokens_in"]
    assert out["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 10
    status, events, done = stream(down, down.user, {**body, "knowledge": {
        "collections": ["public"], "top_k": 1}})
    assert status == 200 and done
    assert events[0]["citations"] == cites


def test_web_search_runs_here_and_the_results_go_upstream(down, up, web):
    """`web_search` with a remote model: the search runs in the downstream (the fixture site
    behind a real SearXNG is asked; the page is cited), the upstream receives the result in
    the last user message and no `web_search` field."""
    st, _ = web
    page = st.page("vpn-setup")
    r = post(down, down.user, {"model": "hq", "max_tokens": 4, "temperature": 0,
                               "web_search": True,
                               "messages": [{"role": "user", "content": "WireGuard VPN"}]})
    assert r.status_code == 200, r.text
    cites = r.json()["citations"]
    assert [c["url"] for c in cites] == [page.url], cites
    assert "WireGuard VPN" in st.searches()
    sent = up.served_settled()[-1]["content"]
    assert "web_search" not in sent and sent["model"] == MODEL
    last_user = [m for m in sent["messages"] if m["role"] == "user"][-1]
    assert page.snippet in last_user["content"] and "WireGuard VPN" in last_user["content"]


def test_agent_on_a_remote_model_runs_its_loop_here(down, up, kb):
    """An agent whose model is the remote `hqtools`: the loop runs in the downstream, each
    model turn is one request upstream (two here: the call, then the answer after the step
    limit), kb_search runs on the downstream's own collection, and the answer lists the step
    and cites the document."""
    r = down.http.post("/v1/admin/agents", headers=hdr(down.admin), json={
        "name": "remote-desk", "model": "hqtools", "tools": ["kb_search"],
        "collections": ["public"], "max_steps": 1, "instructions": "Answer from the sources."})
    assert r.status_code == 201, r.text
    key = down.key("desk-user", "agent:remote-desk,kb:read:public")
    before = len(up.served())
    r = post(down, key, {"model": "agent:remote-desk", **force(KB_CALL),
                         "messages": [{"role": "user", "content": "passphrase?"}]})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["model"] == "agent:remote-desk"
    steps = v["agent"]["steps"]
    assert [(s["tool"], s["status"]) for s in steps] == [("kb_search", "ok")], steps
    assert steps[0]["arguments"] == {"query": KB_QUERY}
    assert any(PUBLIC_PHRASE in c["text"] for c in v["citations"]), v["citations"]
    assert v["agent"].get("stopped") == "max_steps", v["agent"]
    turns = up.served_settled()[before:]
    assert len(turns) == 2, turns
    assert all(t["content"]["model"] == TOOLS_MODEL and t["status"] == 200 for t in turns)
    assert [t["function"]["name"] for t in turns[0]["content"]["tools"]] == ["kb_search"]
    # The second turn carries the tool's result: the document's text went upstream.
    assert PUBLIC_PHRASE in json.dumps(turns[1]["content"]["messages"], ensure_ascii=False)
    # Streamed: the step is reported running, then ok.
    status, events, done = stream(down, key, {"model": "agent:remote-desk", **force(KB_CALL),
                                              "messages": [{"role": "user", "content": "passphrase?"}]})
    assert status == 200 and done
    assert [(e["agent_step"]["step"], e["agent_step"]["status"]) for e in events
            if "agent_step" in e] == [(1, "running"), (1, "ok")]


def test_residency_keeps_local_groups_and_collections_off_remote_models(down, up, kb):
    """A key of a `local_groups` group, and a request using a `local_collections` collection,
    are refused by a remote model with 403 `local_only`, and nothing reaches the upstream;
    the same requests on the local model are served."""
    legal = down.key("legal-direct", "chat", "--group", "legal")
    before = len(up.served())
    base = {"model": "hq", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    e = error_of(post(down, legal, base), 403)
    assert e["code"] == "local_only", e
    e = error_of(post(down, down.user, {**base, "knowledge": {"collections": ["hr"]}}), 403)
    assert e["code"] == "local_only", e
    status, body, _ = stream(down, legal, base)
    assert status == 403 and body[0]["error"]["code"] == "local_only"
    # A collection that may leave, with one that may not: still refused.
    e = error_of(post(down, down.user, {**base, "knowledge": {"collections": ["public", "hr"]}}),
                 403)
    assert e["code"] == "local_only", e
    assert len(up.served_settled()) == before
    ok = post(down, legal, {**base, "model": MODEL})
    assert ok.status_code == 200 and ok.json()["model"] == MODEL, ok.text


def test_residency_holds_for_agents_on_remote_models(down, up, kb):
    """An agent on a remote model is refused (403 `local_only`) to a `local_groups` key, and
    an agent on a remote model that searches a `local_collections` collection is refused to
    everyone; nothing reaches the upstream. An agent on the local model serves the `legal`
    key, and the remote one serves a key of another group."""
    # (The local fixture's template takes no tools: its agent has none.)
    for name, model, tools, cols in [("remote-public", "hqtools", ["kb_search"], ["public"]),
                                     ("remote-hr", "hqtools", ["kb_search"], ["hr"]),
                                     ("local-plain", MODEL, [], [])]:
        r = down.http.post("/v1/admin/agents", headers=hdr(down.admin), json={
            "name": name, "model": model, "tools": tools, "collections": cols,
            "max_steps": 1})
        assert r.status_code == 201, r.text
    legal = down.key("legal-agents", "agent:*,kb:read:public,kb:read:hr", "--group", "legal")
    other = down.key("sales-agents", "agent:*,kb:read:public,kb:read:hr", "--group", "sales")
    body = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    before = len(up.served_settled())
    e = error_of(post(down, legal, {**body, "model": "agent:remote-public"}), 403)
    assert e["code"] == "local_only" and "legal" in e["message"], e
    for key in (legal, other):
        e = error_of(post(down, key, {**body, "model": "agent:remote-hr"}), 403)
        assert e["code"] == "local_only", e
    assert len(up.served_settled()) == before
    r = post(down, legal, {**body, "model": "agent:local-plain"})
    assert r.status_code == 200, r.text
    r = post(down, other, {**body, "model": "agent:remote-public"})
    assert r.status_code == 200 and len(up.served_settled()) > before, r.text


def test_overflow_goes_to_hq_except_for_data_that_must_stay(down, up, kb):
    """While the local model's one slot and one queue place are held (by `legal` keys that
    keep re-asking), a plain key's chat is answered by `hq` (answer model `hq`, audit remote
    `hq` and overflow true, edgeseek_overflow_total up), never 429; the `legal` keys get the
    local 429 and never an answer from `hq`; a request using the `hr` collection gets 429 or
    the local model, never `hq`; the upstream served exactly the overflowed requests."""
    legal = [down.key(f"legal-{i}", "chat", "--group", "legal") for i in range(4)]
    long_body = {"model": MODEL, "max_tokens": 440, "min_p": 0, "logit_bias": {"1536": -100},
                 "messages": [{"role": "user", "content": "write a long story"}]}
    stop = threading.Event()
    seen = []  # (status, answering models, error code) of the legal keys' requests
    lock = threading.Lock()

    def hold(k):
        while not stop.is_set():
            status, events, _ = stream(down, k, long_body)
            models = {e["model"] for e in events if "model" in e}
            code = events[0]["error"]["code"] if status != 200 else None
            with lock:
                seen.append((status, models, code))
            if status != 200:
                time.sleep(0.02)

    def full():
        """One request running and one queued: the local model can take no more."""
        text = down.http.get("/metrics").text
        value = lambda n: float(re.search(rf"^{n} (\S+)$", text, re.M)[1])
        return value("edgeseek_queue_depth") >= 1 and value("edgeseek_active_sequences") >= 1

    counter = f'edgeseek_overflow_total{{model="{MODEL}",remote="hq"}}'
    overflow_before = metric(down, counter, default=0)
    served_before = len(up.served_settled())
    probes, hr = [], []
    with ThreadPoolExecutor(len(legal)) as pool:
        holders = [pool.submit(hold, k) for k in legal]
        try:
            assert wait_for(full, timeout=20), "the local model's queue never filled"
            for i in range(6):
                wait_for(full, timeout=5, step=0.01)
                rid = f"overflow-{i}"
                r = post(down, down.user, {"model": MODEL, "max_tokens": 4, "temperature": 0,
                                           "messages": [{"role": "user", "content": "hi"}]},
                         rid=rid)
                probes.append((rid, r.status_code, r.json()))
                wait_for(full, timeout=5, step=0.01)
                r = post(down, down.user, {"model": MODEL, "max_tokens": 4,
                                           "knowledge": {"collections": ["hr"]},
                                           "messages": [{"role": "user", "content": "salary?"}]})
                hr.append((r.status_code, r.json()))
        finally:
            stop.set()
        for f in holders:
            f.result(timeout=120)
    print("probes answered by:", [b.get("model", code) for _, code, b in probes],
          "hr:", [code for code, _ in hr], "legal:", {c: codes.count(c) for c in set(codes)}
          if (codes := [st for st, _, _ in seen]) else None)
    # Plain requests: never refused, answered by hq while the queue was full.
    assert all(code == 200 for _, code, _ in probes), probes
    by_hq = [(rid, b) for rid, _, b in probes if b["model"] == "hq"]
    assert {b["model"] for _, _, b in probes} <= {"hq", MODEL}
    assert len(by_hq) >= 3, [b["model"] for _, _, b in probes]
    # hq's upstream serves the same fixture: forwarded faithfully, the greedy answer is the
    # local model's.
    assert len({json.dumps(b["choices"][0]["message"], sort_keys=True) for _, _, b in probes}) == 1
    for rid, _ in by_hq:
        rec = audit_of(down, rid)
        assert rec["remote"] == "hq" and rec["overflow"] is True and rec["status"] == 200, rec
    for rid, _, b in probes:
        if b["model"] == MODEL:
            assert not audit_of(down, rid).get("remote")
    assert metric(down, counter, default=0) - overflow_before == len(by_hq)
    # The legal keys: the local 429 while full, never hq.
    codes = [st for st, _, _ in seen]
    assert 429 in codes and 200 in codes, codes
    assert all(st in (200, 429) for st in codes), seen
    assert all(m == {MODEL} for st, m, _ in seen if st == 200), seen
    assert {c for st, _, c in seen if st == 429} == {"queue_full"}, seen
    # The hr requests: 429 or the local model.
    assert all(code == 429 or (code == 200 and b["model"] == MODEL) for code, b in hr), hr
    assert any(code == 429 for code, _ in hr), hr
    for code, b in hr:
        if code == 429:
            assert b["error"]["code"] == "queue_full", b
    # What reached the upstream: the overflowed requests, nothing else.
    assert len(up.served_settled()) - served_before == len(by_hq)


# --------------------------------------------------------------------------------------------
# faults


def test_a_down_upstream_is_503_and_readiness_and_metrics_say_so(down, gone_url):
    """An upstream that is not there: serve still started, /readyz is 200 with the remote
    `down` (the others `up`), edgeseek_remote_up is 0 for it and 1 for hq, a chat to it is 503
    `upstream_unavailable` without the upstream's address, and the local model serves."""
    ready = readyz(down)
    assert ready["remotes"]["gone"] == "down" and ready["remotes"]["hq"] == "up", ready
    assert metric(down, 'edgeseek_remote_up{remote="gone"}') == 0
    assert metric(down, 'edgeseek_remote_up{remote="hq"}') == 1
    for s in (False, True):
        body = {"model": "gone", "max_tokens": 4, "stream": s,
                "messages": [{"role": "user", "content": "hi"}]}
        e = error_of(post(down, down.user, body), 503)
        assert e["code"] == "upstream_unavailable", e
        assert_hides(e["message"], *hides_upstream(gone_url))
    ok = post(down, down.user, {"model": MODEL, "max_tokens": 4,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 and ok.json()["model"] == MODEL
    # `edgeseek status` (the admin socket) and /v1/admin/status: each remote's state and cause.
    p = subprocess.run([str(BIN), "status", "--json", "--dev", "--state-dir", str(down.state)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    remotes = {r["id"]: r for r in json.loads(p.stdout)["remotes"]}
    assert remotes["gone"]["up"] is False and remotes["gone"]["error"], remotes["gone"]
    assert remotes["hq"]["up"] is True and remotes["hq"]["upstream_model"] == MODEL
    assert remotes["hq"]["overflow_from"] == [MODEL]
    assert_hides(p.stdout, *hides_upstream(gone_url), down.up.key)
    text = subprocess.run([str(BIN), "status", "--dev", "--state-dir", str(down.state)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^remotes\.gone\.up +false$", text, re.M), text
    assert re.search(r"^remotes\.hq\.up +true$", text, re.M), text
    r = down.http.get("/v1/admin/status", headers=hdr(down.admin))
    assert r.status_code == 200
    assert {x["id"]: x["up"] for x in r.json()["remotes"]}["gone"] is False


def test_an_upstream_down_at_start_is_used_once_it_comes_up(tmp_path):
    """Serve starts while its upstream is down: ready (200) with `"remotes": {"later":
    "down"}`, local model serving, 503 for the remote; once llama-server comes up on that
    address the health check (health_interval_s = 1, backing off) finds it `up` and chats to it
    are answered."""
    port = free_port()
    config = downstream_config([remote_section(
        "later", url=f"http://127.0.0.1:{port}/v1", model=LlamaServer.ALIAS, health_interval_s=1,
        connect_timeout_s=1)])
    s = Server(tmp_path / "state", model=QWEN, config=config)
    try:
        s.wait_ready()
        key = s.key("k", "chat")
        assert readyz(s)["remotes"] == {"later": "down"}
        assert metric(s, 'edgeseek_remote_up{remote="later"}') == 0
        body = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        e = error_of(post(s, key, {**body, "model": "later"}), 503)
        assert e["code"] == "upstream_unavailable"
        assert_hides(e["message"], *hides_upstream(f"http://127.0.0.1:{port}/v1"))
        assert post(s, key, {**body, "model": MODEL}).status_code == 200
        with llama_server(tmp_path / "later", port=port):
            wait_remotes(s, {"later": "up"}, timeout=60)
            assert metric(s, 'edgeseek_remote_up{remote="later"}') == 1
            r = post(s, key, {**body, "model": "later"})
            assert r.status_code == 200 and r.json()["model"] == "later", r.text
    finally:
        s.stop()


def test_a_hung_upstream_is_504_after_first_byte_timeout(down, slow):
    """llama-server stopped (SIGSTOP: it holds its socket, answers nothing): a chat to `slow`
    (first_byte_timeout_s = 2) is a 504 after about two seconds, not a hang, and the message
    does not show the upstream's address."""
    before = len(slow.requests())
    slow.pause()
    try:
        t0 = time.monotonic()
        r = post(down, down.user, {"model": "slow", "max_tokens": 4,
                                   "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        took = time.monotonic() - t0
    finally:
        slow.resume()
    e = error_of(r, 504)
    assert 1.5 <= took <= 15, took
    assert_hides(e["message"], *hides_upstream(slow.url))
    # Nothing was answered (it may have read the request once resumed, that is all).
    assert len(slow.requests()) - before <= 1


@pytest.mark.parametrize("name", ["junk", "badjson"])
def test_an_upstream_answering_garbage_is_502(down, garbage, name):
    """An upstream whose chat answer is not HTTP (`junk`) or not JSON (`badjson`): 502, whole
    and streamed, naming neither its URL nor its port; the garbage server did get the
    requests."""
    url = garbage.junk_url if name == "junk" else garbage.badjson_url
    before = len(garbage.posts(f"/{name}/"))
    body = {"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    e = error_of(post(down, down.user, body), 502)
    assert_hides(e["message"], *hides_upstream(url))
    status, events, _ = stream(down, down.user, body)
    if status == 200:
        # Headers already sent: the failure must be the stream's error event.
        assert any("error" in ev for ev in events), events
        for ev in events:
            if "error" in ev:
                assert_hides(ev["error"]["message"], *hides_upstream(url))
    else:
        assert status == 502, events
        assert_hides(events[0]["error"]["message"], *hides_upstream(url))
    assert len(garbage.posts(f"/{name}/")) - before == 2
    assert readyz(down)["status"] == "ready"


def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(down, doomed):
    """llama-server killed (SIGKILL) while it streams an answer through `doomed`: the client
    gets the pieces sent so far, then an SSE `data: {"error": …}` event, then `data: [DONE]`,
    within seconds, with no upstream address in the message."""
    body = {"model": "doomed", "max_tokens": 1500, "stream": True,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    events, done, killed_at = [], False, None
    with down.http.stream("POST", "/v1/chat/completions", json=body, headers=hdr(down.user),
                          timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                content = [e for e in events if e.get("choices") and
                           e["choices"][0]["delta"].get("content")]
                if killed_at is None and len(content) >= 3:
                    doomed.kill()
                    killed_at = time.monotonic()
    assert killed_at is not None, events
    assert done, "the stream must end with [DONE]"
    assert time.monotonic() - killed_at < 15
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0], events[-3:]
    assert errors[0]["error"]["message"]
    assert_hides(json.dumps(errors[0]), *hides_upstream(doomed.url))
    assert not any(e.get("choices") and e["choices"][0].get("finish_reason") == "stop"
                   for e in events)


def test_a_client_disconnect_cancels_the_upstream_request(down, up):
    """The client closes a long stream from `hq` after the first chunks: the downstream closes
    its upstream request, so the upstream edgeseek counts a client disconnect and a cancelled
    generation and its engine is left with no active sequence."""
    disconnects = up.metric("edgeseek_client_disconnects_total")
    cancels = up.metric("edgeseek_cancellations_total")
    # Long: EOS banned, most of the fixture's 512-token context, two choices.
    body = {"model": "hq", "max_tokens": 480, "stream": True, "min_p": 0, "n": 2,
            "logit_bias": {"1536": -100}, "messages": [{"role": "user", "content": "hi"}]}
    with down.http.stream("POST", "/v1/chat/completions", json=body,
                          headers=hdr(down.user)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        next(lines)
    assert wait_for(lambda: up.metric("edgeseek_client_disconnects_total") > disconnects), \
        "the upstream never saw its client (the downstream) go"
    assert wait_for(lambda: up.metric("edgeseek_cancellations_total") > cancels)
    assert wait_for(lambda: up.metric("edgeseek_active_sequences") == 0)


def test_an_upstream_refusing_the_token_never_shows_it(down, llama):
    """A remote whose api_key_file holds a token llama-server does not accept: it is not used
    (its health check is refused: `down`), a chat to it fails, and neither the error nor
    /readyz shows the token or the upstream's address."""
    assert readyz(down)["remotes"]["wrongkey"] == "down"
    r = post(down, down.user, {"model": "wrongkey", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code in (401, 403, 502, 503), r.text
    assert_hides(r.text, WRONG_TOKEN, llama.api_key, *hides_upstream(llama.url))
    assert_hides(down.http.get("/readyz").text, WRONG_TOKEN)


# --------------------------------------------------------------------------------------------
# configuration and secrets


def test_doctor_tries_each_upstream_once(down):
    """`edgeseek doctor` with the downstream's configuration: a healthy upstream is OK and
    names the model it serves; one nothing listens on, and one that refuses our token, FAIL
    with a fix; none of it shows an upstream's token."""
    p = subprocess.run([str(BIN), "doctor", "--dev", "--json", "--no-hash",
                        "--state-dir", str(down.state), "--config", str(down.state / "edgeseek.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["remote hq"]["status"] == "ok", checks["remote hq"]
    assert MODEL in checks["remote hq"]["detail"]
    for name in ("remote gone", "remote wrongkey"):
        assert checks[name]["status"] == "fail" and checks[name]["fix"], checks[name]
    assert p.returncode == 1
    assert_hides(p.stdout + p.stderr, WRONG_TOKEN, down.up.key)


def test_usage_an_upstream_omits_is_counted_with_the_configured_tokenizer(down, garbage):
    """An upstream that sends no `usage` (whole or streamed): the downstream counts prompt and
    answer with the remote's `tokenizer` (the fixture's tokenizer.json, encoded without special
    tokens) and reports, settles and audits that count."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(QWEN / "tokenizer.json"))
    count = lambda t: len(tok.encode(t, add_special_tokens=False).ids)
    question = "Wo liegt der Bericht?"
    want = {"prompt_tokens": count(question), "completion_tokens": count(garbage.ANSWER)}
    body = {"model": "nousage", "messages": [{"role": "user", "content": question}]}
    r = post(down, down.user, body, rid="nousage-whole")
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["choices"][0]["message"]["content"] == garbage.ANSWER
    assert {k: v["usage"][k] for k in want} == want, v["usage"]
    record = audit_of(down, "nousage-whole")
    assert (record["tokens_in"], record["tokens_out"]) == tuple(want.values()), record
    status, events, done = stream(down, down.user, {**body, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    assert status == 200 and done
    assert joined(events)[1] == garbage.ANSWER
    usage = [e["usage"] for e in events if e.get("usage")]
    assert len(usage) == 1 and {k: usage[0][k] for k in want} == want, usage


def test_a_key_file_others_can_read_is_refused_at_start(tmp_path):
    """api_key_file readable by group/others (0644): serve refuses to start, exit status not
    0, one error line naming remote.hq.api_key_file."""
    key = write_secret(tmp_path / "hq.key", "es-" + "1" * 64, mode=0o644)
    state = tmp_path / "state"
    state.mkdir()
    cfg = state / "edgeseek.toml"
    cfg.write_text(downstream_config([remote_section(
        "hq", url=f"http://127.0.0.1:{free_port()}/v1", api_key_file=key)]))
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["EDGESEEK_LOG"] = "off"
    proc = subprocess.Popen([str(BIN), "serve", "--dev", "--state-dir", str(state), "--listen",
                             "127.0.0.1:0", "--model", str(QWEN), "--config", str(cfg)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, errs = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("serve started with a world-readable api_key_file")
    assert proc.returncode != 0
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, errs))
    assert "remote.hq.api_key_file" in line, line
    assert "1" * 64 not in errs


def test_the_bearer_tokens_never_come_back_out(down, up, llama):
    """The upstream tokens (edgeseek key, llama-server API key, the refused token) appear in
    no API output (/v1/models, /v1/models/hq, /v1/admin/models, /v1/admin/status, /readyz,
    /metrics), in no error, and nowhere in the downstream's debug-level log or audit log."""
    tokens = [up.key, llama.api_key, WRONG_TOKEN]
    # Traffic of every kind first: answers, a refusal from upstream, an upstream error.
    assert post(down, down.user, {"model": "hq", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    assert post(down, down.user, {"model": "llama", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    bad = post(down, down.user, {"model": "hq", "max_tokens": 100000,
                                 "messages": [{"role": "user", "content": "x"}]})
    assert 400 <= bad.status_code < 500, bad.text
    assert_hides(bad.text, *hides_upstream(up.url))
    outputs = [bad.text]
    for path, key in [("/v1/models", down.user), ("/v1/models/hq", down.user),
                      ("/v1/models/llama", down.user), ("/v1/admin/models", down.admin),
                      ("/v1/admin/status", down.admin), ("/readyz", None), ("/metrics", None)]:
        r = down.http.get(path, headers=hdr(key) if key else {})
        assert r.status_code == 200, (path, r.text)
        outputs.append(r.text)
    for text in outputs:
        assert_hides(text, *tokens)
    log = down.logs()
    assert re.search(r"\bDEBUG\b", log), "the downstream must log at debug level here"
    assert_hides(log, *tokens)
    for f in (down.state / "audit").iterdir():
        assert_hides(f.read_text(errors="replace"), *tokens)
