"""Several chat models in one daemon, end to end: two fixture models (Qwen2 and Llama) served at
once and routed by `model` (and the `default` alias); unload and load at runtime through the
admin API, the admin socket (`edgeseek models …`) while 8 streams run: no 5xx anywhere, the
streams that were running on the unloaded model finish, new requests for it get 404, and the
memory budget and KV cache come back to where they were; a load over the memory budget is
refused naming it; pinned models cannot be unloaded; every change leaves an audit record."""
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, FIXTURES, ROOT
from test_api import QWEN, Server

LLAMA = FIXTURES / "tiny-llama-genai"
Q, L = QWEN.name, LLAMA.name


def hdr(key):
    return {"Authorization": f"Bearer {key}"}


def models_of(s, admin):
    r = s.http.get("/v1/admin/models", headers=hdr(admin))
    assert r.status_code == 200, r.text
    return r.json()


def wait_models(s, admin, want, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = {m["id"]: m["state"] for m in models_of(s, admin)["data"]}
        if states == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"models {states}, wanted {want}: {s.logs()}")


def chat(s, key, model, max_tokens=8, stream=False):
    body = {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "tell me something"}]}
    return s.http.post("/v1/chat/completions", json=body, headers=hdr(key))


def cli(s, *args):
    return subprocess.run([str(BIN), "models", "--dev", "--state-dir", str(s.state), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("models") / "state", model=[QWEN, LLAMA],
               config="[engine]\nkv_budget_mb = 64\nprefix_cache_mb = 0\n")
    admin = s.key("admin", "admin")
    chat_key = s.key("chatter", "chat")
    wait_models(s, admin, {Q: "ready", L: "ready"})
    yield s, admin, chat_key
    s.stop()


def test_two_models_serve_at_once_routed_by_model(two):
    s, admin, key = two
    for name in (Q, L):
        r = chat(s, key, name)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name
    # `default` is the first model, and answers name it.
    r = chat(s, key, "default")
    assert r.status_code == 200 and r.json()["model"] == Q
    r = chat(s, key, "no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    listed = {m["id"]: m for m in s.http.get("/v1/models", headers=hdr(key)).json()["data"]}
    for name in (Q, L):
        m = listed[name]
        assert m["state"] == "ready" and m["provider"] == "cpu" and m["context_length"] > 0
    assert listed[Q]["default"] is True and listed[L]["default"] is False
    ready = s.http.get("/readyz").json()
    assert ready["model"] == Q and ready["models"] == {Q: "ready", L: "ready"}
    # Each model has its own scheduler and budget: both charged.
    m = models_of(s, admin)
    assert all(x["memory_bytes"] > 64 << 20 for x in m["data"])
    assert m["memory_used_bytes"] == sum(x["memory_bytes"] for x in m["data"])


def test_unload_and_load_under_load_no_5xx_and_nothing_leaked(two):
    s, admin, key = two
    before = models_of(s, admin)
    statuses = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream_on(model, max_tokens=48, started=None):
        """One streamed answer; (status, finished normally). `started` is set at the first
        token."""
        body = {"model": model, "max_tokens": max_tokens, "stream": True,
                "messages": [{"role": "user", "content": "write a long story"}]}
        with s.http.stream("POST", "/v1/chat/completions", json=body, headers=hdr(key)) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, False
            done = finished = False
            for line in r.iter_lines():
                if started is not None:
                    started.set()
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        return 200, False
                    if ev["choices"] and ev["choices"][0].get("finish_reason"):
                        finished = True
            return 200, done and finished

    def steady(i):
        # 8 streams, kept up on the model that stays, until the changes are over.
        while not stop.is_set():
            st, ok = stream_on(Q)
            with lock:
                statuses.append((Q, st, ok))

    with ThreadPoolExecutor(8 + 4) as pool:
        loops = [pool.submit(steady, i) for i in range(8)]
        try:
            for cycle in range(2):
                # Long streams running on the model about to go: the unload must wait for them.
                flags = [threading.Event() for _ in range(4)]
                running = [pool.submit(stream_on, L, 400, f) for f in flags]
                assert all(f.wait(60) for f in flags)
                active = next(m for m in models_of(s, admin)["data"] if m["id"] == L)["active"]
                assert active >= 1, "the streams on the model must still run when it is unloaded"
                if cycle == 0:
                    r = s.http.delete(f"/v1/admin/models/{L}", headers=hdr(admin))
                    assert r.status_code == 200, r.text
                    assert r.json()["state"] == "unloaded" and r.json()["memory_bytes"] == 0
                else:
                    p = cli(s, "unload", L)
                    assert p.returncode == 0, p.stderr
                    assert f"model {L}: unloaded" in p.stdout
                # Stopping the engine under them would end them with an error event: each
                # finished normally, so the unload waited for them.
                for f in running:
                    st, ok = f.result(timeout=120)
                    assert st == 200 and ok, "a stream running on the unloaded model must finish"
                gone = chat(s, key, L)
                assert gone.status_code == 404, gone.text
                assert f"edgeseek models load {L}" in gone.json()["error"]["message"]
                if cycle == 0:
                    r = s.http.post("/v1/admin/models", json={"model": L}, headers=hdr(admin))
                    assert r.status_code == 200, r.text
                    assert r.json()["state"] == "ready"
                else:
                    p = cli(s, "load", str(LLAMA))
                    assert p.returncode == 0, p.stderr
                    assert f"model {L}: ready, provider cpu" in p.stdout
                back = chat(s, key, L)
                assert back.status_code == 200 and back.json()["model"] == L
        finally:
            # Also on a failure, or the pool would wait for the loops forever.
            stop.set()
        for f in loops:
            f.result(timeout=120)
    assert len(statuses) >= 8
    assert all(st == 200 and ok for _, st, ok in statuses), statuses
    # Nothing leaked: the budget charges what it charged before, and idle models hold no KV.
    after = models_of(s, admin)
    assert after["memory_used_bytes"] == before["memory_used_bytes"]
    deadline = time.time() + 10
    while any(m["kv_used_bytes"] for m in after["data"]) and time.time() < deadline:
        time.sleep(0.1)
        after = models_of(s, admin)
    assert [m["kv_used_bytes"] for m in after["data"]] == [0, 0]
    assert [m["state"] for m in after["data"]] == ["ready", "ready"]


def test_pins_bad_input_scopes_and_audit(two):
    s, admin, key = two
    # Pinned: unload refused until unpinned (socket and HTTP say the same).
    p = cli(s, "pin", L)
    assert p.returncode == 0 and "pinned" in p.stdout, p.stderr
    r = s.http.delete(f"/v1/admin/models/{L}", headers=hdr(admin))
    assert r.status_code == 409 and "pinned" in r.json()["error"]["message"], r.text
    p = cli(s, "unload", L)
    assert p.returncode != 0 and "pinned" in p.stderr
    r = s.http.patch(f"/v1/admin/models/{L}", json={"pinned": False}, headers=hdr(admin))
    assert r.status_code == 200 and r.json()["pinned"] is False
    # Bad input: clear 4xx, never a 5xx.
    for method, path, body in [
        ("POST", "/v1/admin/models", {"model": 5}),
        ("POST", "/v1/admin/models", {"model": Q, "extra": 1}),
        ("POST", "/v1/admin/models", {"model": "/no/such/dir"}),
        ("DELETE", "/v1/admin/models/nope", None),
        ("PATCH", f"/v1/admin/models/{L}", {"pinned": "yes"}),
    ]:
        r = s.http.request(method, path, json=body, headers=hdr(admin))
        assert 400 <= r.status_code < 500 and r.json()["error"]["message"], (path, r.text)
    # A chat key may not change models.
    r = s.http.delete(f"/v1/admin/models/{L}", headers=hdr(key))
    assert r.status_code == 403
    # Every change is in the audit log: the HTTP ones as API calls, the socket ones as admin
    # records naming the command and model.
    audit = s.http.get("/v1/admin/audit", params={"limit": 1000}, headers=hdr(admin)).json()["data"]
    socket = [(r["action"], r.get("target")) for r in audit if r["kind"] == "admin"
              and r.get("action", "").startswith("models.")]
    assert ("models.unload", L) in socket and ("models.load", str(LLAMA)) in socket
    assert ("models.pin", L) in socket
    http = [r for r in audit if r["kind"] == "api" and r.get("route") == "/v1/admin/models/{model}"]
    assert {r["method"] for r in http} >= {"DELETE", "PATCH"}


def test_a_load_over_the_memory_budget_is_refused_naming_it(tmp_path):
    # One model fits a 200 MiB budget (weights + 64 MiB KV); two do not.
    s = Server(tmp_path / "state", model=[QWEN],
               config="[engine]\nkv_budget_mb = 64\nprefix_cache_mb = 0\nmemory_budget_mb = 100\n")
    try:
        admin = s.key("admin", "admin")
        wait_models(s, admin, {Q: "ready"})
        r = s.http.post("/v1/admin/models", json={"model": str(LLAMA)}, headers=hdr(admin))
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "over_budget" and "engine.memory_budget_mb" in err["message"]
        assert "100 MiB" in err["message"]
        m = models_of(s, admin)
        assert m["memory_budget_bytes"] == 100 << 20
        assert {x["id"]: x["state"] for x in m["data"]} == {Q: "ready", L: "unloaded"}
        # Unloading the first makes room.
        assert s.http.delete(f"/v1/admin/models/{Q}", headers=hdr(admin)).status_code == 200
        r = s.http.post("/v1/admin/models", json={"model": L}, headers=hdr(admin))
        assert r.status_code == 200 and r.json()["state"] == "ready", r.text
        # The default model is gone: readiness says so (503), the other still serves.
        assert s.http.get("/readyz").status_code == 503
    finally:
        s.stop()

