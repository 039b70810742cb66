"""The request gate against the real daemon: the order of its checks (scope before rate), what
counts against a key's limits (`n`, KB routes), a key's share of in-flight work, and what the
anonymous health routes reveal."""

import json
import threading
import time

import httpx
import pytest

from test_api import BODY, MODEL, QWEN, Server, err, post


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A small engine so one key's share is easy to reach: (1 + 3) * 0.5 = 2 sequences.
    s = Server(tmp_path_factory.mktemp("gate") / "state",
               config="[engine]\nmax_batch = 1\nmax_queue = 3\n[limits]\nkey_queue_share = 0.5\n")
    s.wait_ready()
    yield s
    s.stop()


# A stream that lasts: EOS banned, most of the fixture's context.
LONG = {**BODY, "max_tokens": 400, "min_p": 0, "logit_bias": {"1536": -100}}


def test_n_choices_count_as_n_requests(server):
    k = server.key("n-counts", "chat", "--rpm", "3")
    assert post(server, k, json.dumps({**BODY, "n": 2})).status_code == 200
    # One request left in the bucket: two more choices are refused, one is not.
    r = post(server, k, json.dumps({**BODY, "n": 2}))
    e = err(r, 429)
    assert e["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    assert post(server, k, json.dumps(BODY)).status_code == 200


def test_kb_routes_are_rate_limited(server):
    k = server.key("kb-rpm", "kb:read:*", "--rpm", "2")
    h = {"Authorization": f"Bearer {k}"}
    for _ in range(2):
        # 200 once the knowledge base is open, 503 while it is not: either way admitted.
        assert server.http.get("/v1/kb/collections", headers=h).status_code in (200, 503)
    r = server.http.get("/v1/kb/collections", headers=h)
    assert err(r, 429)["code"] == "rate_limit_exceeded"
    r = server.http.post("/v1/kb/search", headers=h, json={"collections": ["hr"], "query": "x"})
    err(r, 429)


def test_scope_is_checked_before_the_rate_limit(server):
    k = server.key("scope-first", "chat", "--rpm", "1")
    body = {**BODY, "knowledge": {"collections": ["hr"]}}
    # Refused for the scope, and not charged: the one request of the minute is still there.
    e = err(post(server, k, json.dumps(body)), 403)
    assert "kb:read:hr" in e["message"]
    assert post(server, k, json.dumps(BODY)).status_code == 200


def test_one_key_cannot_hold_more_than_its_share(server):
    greedy = server.key("greedy")
    other = server.key("other")
    started = threading.Event()
    done = threading.Event()

    def hold():
        # Two choices: the key's whole share, held while the stream runs.
        with server.http.stream("POST", "/v1/chat/completions",
                                headers={"Authorization": f"Bearer {greedy}"},
                                json={**LONG, "n": 2, "stream": True}) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                started.set()
                if done.is_set():
                    break
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        assert started.wait(30)
        r = post(server, greedy, json.dumps(BODY))
        e = err(r, 429)
        assert e["code"] == "too_many_requests_in_flight", e
        assert "in flight" in e["message"] and r.headers["retry-after"] == "1"
        # Everyone else is served meanwhile.
        assert post(server, other, json.dumps({**BODY, "max_tokens": 4})).status_code == 200
    finally:
        done.set()
        t.join(30)
    # The share comes back when the stream is gone (the client closed it).
    deadline = time.time() + 20
    while time.time() < deadline:
        r = post(server, greedy, json.dumps({**BODY, "max_tokens": 4}))
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text


def test_long_stop_strings_are_refused(server):
    k = server.key("stops")
    e = err(post(server, k, json.dumps({**BODY, "stop": ["x" * 257]})), 400)
    assert e["param"] == "stop" and "256" in e["message"]
    assert post(server, k, json.dumps({**BODY, "stop": ["x" * 256]})).status_code == 200


def test_unknown_route_and_method(server):
    e = err(server.http.get("/v1/nope"), 404)
    assert "/v1/nope" in e["message"]
    r = server.http.put("/v1/kb/collections/hr")
    err(r, 405)
    assert r.headers["allow"] == "GET, DELETE"


def test_readyz_does_not_tell_anonymous_clients_why_loading_failed(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "genai_config.json").write_text("{}")
    s = Server(tmp_path / "state", model=broken)
    try:
        k = s.key("k")
        deadline = time.time() + 30
        while time.time() < deadline and "failed" not in s.http.get("/readyz").text:
            time.sleep(0.1)
        e = err(s.http.get("/readyz"), 503)
        assert "failed to load" in e["message"]
        assert str(broken) not in e["message"] and "genai_config" not in e["message"]
        # A client with a key learns the cause.
        e = err(post(s, k, json.dumps({**BODY, "model": "broken-model"})), 503)
        assert "genai_config" in e["message"] or str(broken) in e["message"], e
    finally:
        s.stop()


def test_metrics_without_key_from_ipv4_mapped_loopback(tmp_path):
    """A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1: still loopback."""
    state = tmp_path / "state"
    s = Server(state, listen="[::]:0")
    try:
        port = s.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=s.tls_context(),
                          timeout=30) as c:
            r = c.get("/metrics")
            assert r.status_code == 200, r.text
            assert "edgeseek_requests_total" in r.text
    finally:
        s.stop()
