"""End-to-end tests of `edgeseek serve`: the real binary on 127.0.0.1 with an ephemeral port,
a temporary state dir, real TLS (clients trust the generated `ca.pem`), the official `openai`
SDK and plain httpx for what the SDK hides (status codes, headers, raw bodies)."""

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import BIN, FIXTURES, ROOT, openssl

QWEN = FIXTURES / "tiny-qwen2-genai"
MODEL = QWEN.name


class Server:
    """One `edgeseek serve --dev` process."""

    def __init__(self, state: Path, model: Path | list[Path] = QWEN, config: str | None = None,
                 client_cert: tuple[Path, Path] | None = None, listen: str = "127.0.0.1:0",
                 prefix: list[str] | None = None, url_map=None):
        """`prefix`: argv to run the daemon under (e.g. `ip netns exec NS`); `url_map`: turns
        the address it prints into the one this test reaches it at."""
        self.state = state
        self.client_cert = client_cert
        state.mkdir(parents=True, exist_ok=True)
        args = [str(BIN), "serve", "--dev", "--state-dir", str(state), "--listen", listen]
        for m in model if isinstance(model, list) else [model]:
            args += ["--model", str(m)]
        if config is not None:
            cfg = state / "edgeseek.toml"
            cfg.write_text(config)
            args += ["--config", str(cfg)]
        env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
        env["EDGESEEK_LOG"] = env.get("EDGESEEK_TEST_LOG", "warn")
        self.log = open(state / "serve.log", "w")
        self.proc = subprocess.Popen((prefix or []) + args, cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = self._read_url(timeout=60)
        if url_map:
            self.url = url_map(self.url)
        self.ca = state / "tls" / "ca.pem"
        # No pooled keep-alive connections: the server closes idle ones after
        # server.header_read_timeout_s, and a test that reuses one after a slow test would
        # race that close.
        self.http = httpx.Client(base_url=self.url, verify=self.tls_context(), timeout=60,
                                 limits=httpx.Limits(max_keepalive_connections=0))

    def tls_context(self):
        """Trust only the generated CA, with the strict X.509 checks Python >= 3.13 applies by
        default (CA key usage, key identifiers), so an older Python tests the same thing."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        if self.client_cert:
            ctx.load_cert_chain(*map(str, self.client_cert))
        return ctx

    def _read_url(self, timeout):
        found = {}

        def reader():
            for line in self.proc.stdout:
                if line.startswith("listening on https://") and "url" not in found:
                    found["url"] = line.split()[-1].strip()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "url" in found:
                return found["url"]
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"serve printed no address: {self.logs()}")

    def logs(self):
        self.log.flush()
        return (self.state / "serve.log").read_text()

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.http.get("/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"not ready: {self.logs()}")

    def key(self, name, scope="chat", *extra):
        p = subprocess.run([str(BIN), "keys", "create", "--dev", "--state-dir", str(self.state),
                            "--name", name, "--scope", scope, *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[-1]

    def client(self, key):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             http_client=httpx.Client(verify=self.tls_context(), timeout=60))

    def metric(self, name):
        text = self.http.get("/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in metrics")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("api") / "state")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server):
    return server.key("tests")


@pytest.fixture(scope="module")
def client(server, key):
    return server.client(key)


def chat(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    return client.chat.completions.create(**kw)


def raw_text(msg):
    """Everything the model wrote: reasoning, then the answer."""
    return (getattr(msg, "reasoning_content", None) or "") + (msg.content or "")


# --- chat ---------------------------------------------------------------------------------

def test_chat_non_streaming_with_usage_and_reasoning(client):
    r = chat(client, max_tokens=12, seed=1)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    # The fixture has the R1 template: the prompt opens <think>, so text is reasoning until
    # </think>, and both field names carry it.
    extra = c.message.model_extra
    assert "reasoning_content" in extra and extra["reasoning"] == extra["reasoning_content"]
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens_details.reasoning_tokens <= u.completion_tokens


def test_chat_streaming_usage_in_the_last_chunk(client):
    chunks = list(chat(client, max_tokens=10, seed=2, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert len(finishes) == 1
    text = "".join((c.choices[0].delta.model_extra.get("reasoning_content") or "")
                   + (c.choices[0].delta.content or "") for c in chunks[:-1])
    whole = chat(client, max_tokens=10, seed=2)
    assert text == raw_text(whole.choices[0].message)


def test_reasoning_budget_splits_reasoning_and_answer(client):
    r = chat(client, max_tokens=24, temperature=0, extra_body={"max_reasoning_tokens": 3})
    m = r.choices[0].message
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    assert m.model_extra["reasoning_content"] != ""
    # After the forced </think> the rest is the answer (unless EOS came first).
    if r.usage.completion_tokens > 10:
        assert m.content != ""


def test_stop_strings(client):
    full = raw_text(chat(client, max_tokens=24, temperature=0).choices[0].message)
    stop = None
    for k in range(2, len(full) - 3):
        w = full[k:k + 3]
        if w.isascii() and w.strip() == w and w.isprintable() and full.find(w) == k:
            stop = w
            break
    assert stop is not None, f"greedy output of the fixture has no usable stop window: {full!r}"
    r = chat(client, max_tokens=24, temperature=0, stop=[stop, "never-seen-xyz"])
    assert raw_text(r.choices[0].message) == full[:k]
    assert r.choices[0].finish_reason == "stop"


def test_seed_determinism(client):
    a = chat(client, max_tokens=16, temperature=1.0, seed=7)
    b = chat(client, max_tokens=16, temperature=1.0, seed=7)
    c = chat(client, max_tokens=16, temperature=1.0, seed=8)
    assert raw_text(a.choices[0].message) == raw_text(b.choices[0].message)
    assert raw_text(a.choices[0].message) != raw_text(c.choices[0].message)


def test_n_choices_use_consecutive_seeds(client):
    r = chat(client, max_tokens=12, temperature=1.0, seed=3, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    single = chat(client, max_tokens=12, temperature=1.0, seed=4)
    assert raw_text(r.choices[1].message) == raw_text(single.choices[0].message)
    # The prompt is counted once, completions summed over the choices.
    assert r.usage.prompt_tokens == single.usage.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_n_streaming(client):
    chunks = list(chat(client, max_tokens=6, seed=5, n=2, stream=True))
    indexes = {c.choices[0].index for c in chunks if c.choices}
    assert indexes == {0, 1}
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1]


def test_logprobs(client):
    r = chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens
    for e in lp:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        # Greedy picks the most likely token.
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, seed=1)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens > 0
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                            seed=1, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_models(client):
    models = client.models.list()
    # The chat model first; the embedding model (./.runtime/models/all-minilm-l6-v2, loading
    # on its own thread) follows once loaded. test_embeddings.py checks it in detail.
    ids = [m.id for m in models.data]
    assert ids[0] == MODEL and ids[1:] in ([], ["all-minilm-l6-v2"]), ids
    assert client.models.retrieve(MODEL).id == MODEL


# --- errors -------------------------------------------------------------------------------

def err(resp, status):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post(server, key, body, headers=None, path="/v1/chat/completions"):
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    h.update(headers or {})
    return server.http.post(path, content=body, headers=h)


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_malformed_json_is_400(server, key):
    e = err(post(server, key, b'{"model": '), 400)
    assert e["type"] == "invalid_request_error"


def test_unknown_parameter_is_400_naming_it(server, key):
    e = err(post(server, key, json.dumps({**BODY, "tools": []})), 400)
    assert e["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as info:
        server.client(key).chat.completions.create(model=MODEL, messages=BODY["messages"],
                                                   extra_body={"guided_json": {}})
    assert info.value.body["param"] == "guided_json"


def test_bad_values_name_the_parameter(server, key):
    e = err(post(server, key, json.dumps({**BODY, "temperature": 9})), 400)
    assert e["param"] == "temperature"


def test_invalid_utf8_is_400(server, key):
    e = err(post(server, key, b'{"model": "\xff\xfe", "messages": []}'), 400)
    assert "UTF-8" in e["message"]


def test_wrong_content_type_is_400(server, key):
    err(post(server, key, json.dumps(BODY), headers={"Content-Type": "text/plain"}), 400)


def test_oversized_body_is_413(server, key):
    big = json.dumps({**BODY, "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    err(post(server, key, big), 413)


def test_unknown_model_is_404(server, key):
    e = err(post(server, key, json.dumps({**BODY, "model": "gpt-4"})), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"


def test_wrong_method_and_path(server, key):
    r = server.http.get("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    err(r, 405)
    assert r.headers["allow"] == "POST"
    err(server.http.get("/v1/nothing"), 404)


def test_context_too_long_is_400(server, key):
    e = err(post(server, key, json.dumps({**BODY, "max_tokens": 100000})), 400)
    assert e["code"] == "context_length_exceeded"


# --- auth ---------------------------------------------------------------------------------

def test_missing_and_wrong_keys_are_401(server):
    err(server.http.post("/v1/chat/completions", json=BODY), 401)
    err(post(server, "es-" + "0" * 64, json.dumps(BODY)), 401)
    err(server.http.get("/v1/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        server.client("es-wrong").models.list()


def test_missing_scope_is_403(server):
    k = server.key("embed-only", "embeddings")
    e = err(post(server, k, json.dumps(BODY)), 403)
    assert "chat" in e["message"]
    # Any valid key may list models.
    assert server.http.get("/v1/models", headers={"Authorization": f"Bearer {k}"}).status_code == 200


def test_revoked_key_fails_at_once(server):
    k = server.key("short-lived")
    assert post(server, k, json.dumps(BODY)).status_code == 200
    p = subprocess.run([str(BIN), "keys", "revoke", "--dev", "--state-dir", str(server.state),
                        "short-lived"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    err(post(server, k, json.dumps(BODY)), 401)


def test_rate_limit_is_429_with_retry_after(server):
    k = server.key("slow", "chat", "--rpm", "1")
    assert post(server, k, json.dumps(BODY)).status_code == 200
    r = post(server, k, json.dumps(BODY))
    e = err(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    assert e["type"] == "rate_limit_error"


def test_health_and_metrics_need_no_key_on_loopback(server):
    assert server.http.get("/healthz").json() == {"status": "ok"}
    assert server.http.get("/readyz").json()["model"] == MODEL
    m = server.http.get("/metrics")
    assert m.status_code == 200
    assert "edgeseek_requests_total" in m.text and "edgeseek_time_to_first_token_seconds_bucket" in m.text
    assert m.headers["x-request-id"]


def test_openapi_is_the_committed_document(server):
    served = server.http.get("/openapi.json").json()
    assert served == json.loads((ROOT / "daemon" / "openapi.json").read_text())


# --- cancellation, TLS --------------------------------------------------------------------

def test_disconnect_cancels_generation(server, key):
    before = server.metric("edgeseek_cancellations_total")
    # Long enough that the client is gone well before the end: EOS banned, most of the
    # fixture's 512-token context, two choices.
    body = {**BODY, "max_tokens": 440, "stream": True, "min_p": 0, "n": 2,
            "logit_bias": {"1536": -100}}
    with server.http.stream("POST", "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        next(lines)
    # Closing the response closed the connection (httpx does not reuse an unread stream).
    deadline = time.time() + 15
    while time.time() < deadline:
        if server.metric("edgeseek_cancellations_total") > before:
            break
        time.sleep(0.1)
    assert server.metric("edgeseek_cancellations_total") > before
    assert server.metric("edgeseek_client_disconnects_total") >= 1


def _handshake(server, **ctx_kw):
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    ctx = server.tls_context()
    for k, v in ctx_kw.items():
        setattr(ctx, k, v)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return tls.version(), tls.selected_alpn_protocol()


def test_tls_versions_and_alpn(server):
    assert _handshake(server) == ("TLSv1.3", "h2")
    assert _handshake(server, maximum_version=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 settings warn
        old = {"minimum_version": ssl.TLSVersion.TLSv1, "maximum_version": ssl.TLSVersion.TLSv1_1}
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(server, **old)


def test_openssl_refuses_tls_1_0_and_1_1(server):
    hostport = server.url.removeprefix("https://")
    for flag in ("-tls1", "-tls1_1"):
        p = subprocess.run(["openssl", "s_client", "-connect", hostport, flag],
                           input="", capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, (flag, p.stdout[-500:])
    p = subprocess.run(["openssl", "s_client", "-connect", hostport, "-tls1_3", "-CAfile",
                        str(server.ca), "-verify_return_error"],
                       input="", capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "TLSv1.3" in p.stdout, p.stdout[-800:]


# --- separate servers: backpressure, loading failure -----------------------------------------

def test_full_queue_is_429(tmp_path):
    # One key fills the engine's queue: no per-key share (test_gate.py tests that one).
    s = Server(tmp_path / "state",
               config="[engine]\nmax_batch = 1\nmax_queue = 1\n[limits]\nkey_queue_share = 1\n")
    try:
        s.wait_ready()
        k = s.key("load")
        body = json.dumps({**BODY, "max_tokens": 300, "min_p": 0})

        def one(_):
            r = post(s, k, body)
            return r.status_code, r.headers.get("retry-after"), r.json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        codes = [c for c, _, _ in results]
        assert 200 in codes and 429 in codes, codes
        for code, retry, body in results:
            if code == 429:
                assert retry == "1"
                assert body["error"]["code"] == "queue_full"
    finally:
        s.stop()


def test_broken_model_is_503_not_a_crash(tmp_path):
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
        err(post(s, k, json.dumps({**BODY, "model": "broken-model"})), 503)
        assert s.http.get("/healthz").status_code == 200
    finally:
        s.stop()


def test_sigterm_exits_cleanly(tmp_path):
    s = Server(tmp_path / "state")
    s.wait_ready()
    s.stop()
    assert s.proc.returncode == 0, s.logs()
    assert not (tmp_path / "state" / "serve.addr").exists()


def _served_fingerprint(server):
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with server.tls_context().wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    import hashlib
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_sighup_swaps_the_certificate_without_dropping_connections(tmp_path):
    s = Server(tmp_path / "state")
    try:
        s.wait_ready()
        before = _served_fingerprint(s)
        with s.http.stream("GET", "/healthz") as open_response:
            # A connection in use across the reload.
            (tmp_path / "state" / "tls" / "server.pem").unlink()
            s.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            after = before
            while time.time() < deadline and after == before:
                time.sleep(0.1)
                after = _served_fingerprint(s)
            assert after != before
            assert open_response.read() == b'{"status":"ok"}'
        # The CA is unchanged, so clients that trust ca.pem trust the new certificate.
        assert s.http.get("/healthz").status_code == 200
        assert s.proc.poll() is None
    finally:
        s.stop()


def test_mtls_requires_a_client_certificate(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "cca.key", "-out", "cca.pem", "-days", "2",
             "-subj", "/CN=test client CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=pki)
    openssl("req", *ec, "-keyout", "c.key", "-out", "c.csr", "-subj", "/CN=laptop", cwd=pki)
    (pki / "ext.cnf").write_text("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "c.csr", "-CA", "cca.pem", "-CAkey", "cca.key",
             "-CAcreateserial", "-out", "c.pem", "-days", "2", "-extfile", "ext.cnf", cwd=pki)
    s = Server(tmp_path / "state", config=f'[tls]\nclient_ca = "{pki / "cca.pem"}"\n',
               client_cert=(pki / "c.pem", pki / "c.key"))
    try:
        s.wait_ready()
        assert s.http.get("/healthz").status_code == 200
        anonymous = httpx.Client(base_url=s.url, verify=ssl.create_default_context(cafile=str(s.ca)))
        with pytest.raises(httpx.HTTPError):
            anonymous.get("/healthz")
        anonymous.close()
    finally:
        s.stop()


# --- tool calling -------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

TOOL_TURN = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"},
]


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """The Qwen2 fixture with a tool-capable (Hermes / Qwen2.5-style) chat template."""
    import shutil
    model = tmp_path_factory.mktemp("tools-model") / MODEL
    shutil.copytree(QWEN, model)
    shutil.copy(ROOT / "scripts" / "fixtures" / "hermes-tools.jinja", model / "chat_template.jinja")
    s = Server(tmp_path_factory.mktemp("tools") / "state", model=model)
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tools_client(tools_server):
    return tools_server.client(tools_server.key("tools"))


def test_tool_turn_renders_through_the_r1_template(client):
    # The R1 template renders assistant tool calls and tool results (it has no tool list).
    r = chat(client, messages=TOOL_TURN, max_tokens=4, seed=1)
    assert r.choices[0].finish_reason in ("stop", "length")
    longer = chat(client, messages=TOOL_TURN + [{"role": "tool", "tool_call_id": "call_2",
                                                 "content": "and windy"}], max_tokens=4, seed=1)
    assert longer.usage.prompt_tokens > r.usage.prompt_tokens


def test_tools_on_a_template_without_tool_support_is_400(server, key):
    e = err(post(server, key, json.dumps({**BODY, "tools": [WEATHER]})), 400)
    assert e["param"] == "tools" and "does not support tools" in e["message"], e


def test_tools_auto_and_none_are_accepted(tools_client):
    plain = chat(tools_client, max_tokens=3, seed=2)
    for choice in ("auto", "none"):
        r = chat(tools_client, tools=[WEATHER], tool_choice=choice, max_tokens=3, seed=2)
        c = r.choices[0]
        # The random fixture writes no calls: the answer is content.
        assert c.finish_reason in ("stop", "length") and not c.message.tool_calls
        assert isinstance(c.message.content, str)
        # The tool definitions are in the prompt.
        assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    # Default tool_choice (auto) and parallel_tool_calls, streamed.
    stream = chat(tools_client, tools=[WEATHER], parallel_tool_calls=False,
                  max_tokens=4, seed=2, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(not ch.choices[0].delta.tool_calls for ch in chunks)
    # A tool turn through this template (the fixture's 512-token context has no room for
    # the tool list as well).
    r = chat(tools_client, messages=TOOL_TURN, max_tokens=3, seed=2)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("extra,param", [
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_unsupported_tool_features_are_400_naming_them(tools_client, extra, param):
    kw = {"tools": [WEATHER], **extra}
    with pytest.raises(openai.BadRequestError) as info:
        chat(tools_client, max_tokens=2, **kw)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param, info.value.body


CALLS_BEGIN_ID = 1543  # <｜tool▁calls▁begin｜> in the fixture tokenizer (tests/fixtures/README.md)


@pytest.fixture(scope="module")
def r1_tools_client(tmp_path_factory):
    """The Qwen2 fixture with the R1 template plus a tool list in the system prompt: a
    template that renders tools and teaches the DeepSeek call tokens."""
    import shutil
    model = tmp_path_factory.mktemp("r1-tools-model") / MODEL
    shutil.copytree(QWEN, model)
    r1 = (ROOT / "scripts" / "fixtures" / "deepseek-r1-distill.jinja").read_text()
    anchor = "{{bos_token}}{{ns.system_prompt}}"
    assert anchor in r1
    (model / "chat_template.jinja").write_text(r1.replace(
        anchor, anchor + "{% if tools %}{{ '\\n\\n# Tools\\n' }}{% for tool in tools %}"
                         "{{ tool | tojson }}{% endfor %}{% endif %}"))
    s = Server(tmp_path_factory.mktemp("r1-tools") / "state", model=model)
    s.wait_ready()
    yield s.client(s.key("tools"))
    s.stop()


def test_forced_call_tokens_that_make_no_call_come_back_as_content(r1_tools_client):
    # logit_bias makes the model write DeepSeek's call-opening token over and over: the
    # start of a call that never becomes one. The tool-call reader holds it back, then must
    # return it as content, exactly what tool_choice none (no reading) returns.
    kw = dict(tools=[WEATHER], max_tokens=8, temperature=0, logit_bias={str(CALLS_BEGIN_ID): 100},
              extra_body={"max_reasoning_tokens": 1})
    auto = chat(r1_tools_client, tool_choice="auto", **kw).choices[0]
    none = chat(r1_tools_client, tool_choice="none", **kw).choices[0]
    assert "<｜tool▁calls▁begin｜>" in none.message.content, none.message
    assert auto.message.content == none.message.content
    assert not auto.message.tool_calls and auto.finish_reason == none.finish_reason
    chunks = list(chat(r1_tools_client, tool_choice="auto", stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == none.message.content
    assert all(not c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == none.finish_reason
