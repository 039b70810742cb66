"""Audit log end to end: one record per API call (with the request's key, route, model,
tokens and status), per authentication failure and per admin command, no prompt text unless
`[audit] include_content`, export through `edgeseek audit` and `GET /v1/admin/audit`, and
`edgeseek audit verify` catching a changed record and a cut at the end."""
import json
import subprocess
import time

import httpx
import pytest

from conftest import BIN, ROOT
from test_api import MODEL, Server

SECRET = "PINEAPPLE-7731-do-not-log"


def cli(state, *args, check=True):
    p = subprocess.run([str(BIN), *args, "--dev", "--state-dir", str(state)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def records(state, *args):
    out = cli(state, "audit", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def by_request(state, rid, timeout=5.0):
    """The records of request `rid` (written when its response has been sent)."""
    deadline = time.time() + timeout
    while True:
        found = [r for r in records(state) if r.get("request_id") == rid]
        if found or time.time() > deadline:
            return found
        time.sleep(0.1)


def post_chat(server, key, rid, **extra):
    body = {"model": MODEL, "max_tokens": 6, "messages": [{"role": "user", "content": SECRET}]}
    body.update(extra)
    return server.http.post("/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}", "X-Request-Id": rid})


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("audit") / "state")
    s.wait_ready()
    chat = s.key("alice-laptop", "chat")
    admin = s.key("it-admin", "admin")
    yield s, chat, admin
    s.stop()


def test_a_chat_call_is_one_record_with_key_model_tokens_and_no_prompt(audited):
    s, chat, _ = audited
    r = post_chat(s, chat, "audit-chat-1")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    [rec] = by_request(s.state, "audit-chat-1")
    assert rec["kind"] == "api"
    assert rec["route"] == "/v1/chat/completions" and rec["method"] == "POST"
    assert rec["status"] == 200
    assert rec["key_name"] == "alice-laptop" and rec["key_id"]
    assert rec["model"] == MODEL
    assert rec["tokens_in"] == usage["prompt_tokens"]
    assert rec["tokens_out"] == usage["completion_tokens"]
    assert rec["source"].startswith("127.0.0.1:")
    assert rec["ms"] >= 0
    assert "content" not in rec
    audit_dir = s.state / "audit"
    for f in audit_dir.iterdir():
        assert SECRET not in f.read_text(errors="replace"), f


def test_a_streamed_call_is_recorded_when_it_ends_with_its_tokens(audited):
    s, chat, _ = audited
    with s.http.stream("POST", "/v1/chat/completions",
                       json={"model": MODEL, "max_tokens": 6, "stream": True,
                             "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {chat}",
                                "X-Request-Id": "audit-stream-1"}) as r:
        assert r.status_code == 200
        usage = None
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
    [rec] = by_request(s.state, "audit-stream-1")
    assert rec["status"] == 200
    assert rec["tokens_out"] == usage["completion_tokens"]
    assert rec["tokens_in"] == usage["prompt_tokens"]


def test_refusals_are_recorded_auth_failures_as_such(audited):
    s, chat, _ = audited
    cases = [
        ("audit-401", "Bearer sk-wrong", "GET", "/v1/models", 401, "auth_failure"),
        ("audit-403", f"Bearer {chat}", "GET", "/v1/admin/keys", 403, "api"),
        ("audit-404", f"Bearer {chat}", "GET", "/v1/nothing-here", 404, "api"),
    ]
    for rid, auth, method, path, status, _ in cases:
        r = s.http.request(method, path, headers={"Authorization": auth, "X-Request-Id": rid})
        assert r.status_code == status, r.text
    for rid, _, method, path, status, kind in cases:
        [rec] = by_request(s.state, rid)
        assert (rec["kind"], rec["status"], rec["method"]) == (kind, status, method)
        assert rec["error"]
        if status == 403:
            assert rec["key_name"] == "alice-laptop"  # the key that tried
        else:
            # 401: no key was valid; 404: an unknown route checks no key.
            assert "key_id" not in rec and rec["source"].startswith("127.0.0.1:")


def test_admin_commands_and_admin_api_calls_are_recorded(audited):
    s, _, admin = audited
    before = records(s.state, "--kind", "admin")
    s.key("bob-phone", "chat")
    p = cli(s.state, "keys", "revoke", "bob-phone")
    assert p.returncode == 0
    after = records(s.state, "--kind", "admin")
    new = after[len(before):]
    assert [(r["action"], r["target"], r["status"]) for r in new] == [
        ("keys.create", "bob-phone", 200), ("keys.revoke", "bob-phone", 200)]
    assert all(r["source"].startswith("socket uid ") for r in new)
    # The admin API answers the same records and filters them.
    r = s.http.get("/v1/admin/audit", params={"kind": "admin", "limit": 2},
                   headers={"Authorization": f"Bearer {admin}", "X-Request-Id": "audit-api"})
    assert r.status_code == 200, r.text
    assert [x["seq"] for x in r.json()["data"]] == [x["seq"] for x in new]
    [rec] = by_request(s.state, "audit-api")
    assert (rec["route"], rec["key_name"]) == ("/v1/admin/audit", "it-admin")
    r = s.http.get("/v1/admin/audit", params={"since": "yesterday"},
                   headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    r = s.http.get("/v1/admin/audit", headers={"Authorization": f"Bearer {s.key('c2')}"})
    assert r.status_code == 403


def test_every_record_is_chained_and_verify_passes(audited):
    s, *_ = audited
    time.sleep(1.5)  # the head is synced once a second
    p = cli(s.state, "audit", "verify")
    assert p.stdout.startswith("audit log intact:"), p.stdout
    recs = records(s.state)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))
    text = cli(s.state, "audit", "--limit", "3").stdout
    assert text.splitlines()[0].split()[:3] == ["TIME", "KIND", "KEY"]
    assert len(text.splitlines()) == 4


def test_verify_detects_an_edited_record_and_a_cut(tmp_path):
    s = Server(tmp_path / "state")
    s.wait_ready()
    key = s.key("k", "chat")
    for i in range(3):
        assert s.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    s.stop()  # the head is written at shutdown
    # Offline admin changes are recorded too (by the command itself).
    cli(s.state, "keys", "create", "--name", "offline", "--scope", "chat")
    last = records(s.state)[-1]
    assert (last["action"], last["target"]) == ("keys.create", "offline")
    assert last["source"].startswith("cli uid ")
    assert cli(s.state, "audit", "verify").returncode == 0
    [seg] = sorted((s.state / "audit").glob("*.jsonl"))
    original = seg.read_text()
    lines = original.splitlines(keepends=True)
    # A changed status.
    seg.write_text(original.replace('"status":200', '"status":500', 1))
    p = cli(s.state, "audit", "verify", check=False)
    assert p.returncode == 1 and "changed" in p.stderr, p.stderr
    # The newest records cut off.
    seg.write_text("".join(lines[:-2]))
    p = cli(s.state, "audit", "verify", check=False)
    assert p.returncode == 1 and "cut off the end" in p.stderr, p.stderr
    seg.write_text(original)
    assert cli(s.state, "audit", "verify").returncode == 0


def test_include_content_keeps_the_request(tmp_path):
    s = Server(tmp_path / "state", config="[audit]\ninclude_content = true\n")
    s.wait_ready()
    key = s.key("k", "chat")
    assert post_chat(s, key, "audit-content").status_code == 200
    [rec] = by_request(s.state, "audit-content")
    assert rec["content"]["messages"][0]["content"] == SECRET
    s.stop()


def test_a_bad_audit_section_is_a_clear_error(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    cfg = state / "edgeseek.toml"
    cfg.write_text("[audit]\nkeep_forever = true\n")
    p = subprocess.run([str(BIN), "serve", "--dev", "--state-dir", str(state), "--config",
                        str(cfg), "--listen", "127.0.0.1:0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert "keep_forever" in p.stderr, p.stderr


def test_every_route_of_the_api_leaves_exactly_one_record(audited):
    """Each operation of the committed OpenAPI document, called once (with placeholder path
    parameters and an empty JSON body: most answer 4xx, which is recorded the same)."""
    s, _, admin = audited
    doc = s.http.get("/openapi.json").json()
    sent = []
    for path, ops in doc["paths"].items():
        for method in ops:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            url = path.replace("{collection}", "nosuch").replace("{document}", "nodoc") \
                      .replace("{id}", "nokey").replace("{name}", "noagent") \
                      .replace("{model}", "nomodel")
            rid = f"route-{len(sent)}"
            r = s.http.request(method.upper(), url, json={} if method != "get" else None,
                               headers={"Authorization": f"Bearer {admin}", "X-Request-Id": rid})
            assert r.headers["x-request-id"] == rid
            sent.append((rid, method.upper(), path, r.status_code))
    assert len(sent) >= 25
    time.sleep(0.5)
    recs = {}
    for r in records(s.state):
        recs.setdefault(r.get("request_id"), []).append(r)
    for rid, method, path, status in sent:
        got = recs.get(rid, [])
        assert len(got) == 1, (method, path, got)
        assert (got[0]["method"], got[0]["route"], got[0]["status"]) == (method, path, status)
