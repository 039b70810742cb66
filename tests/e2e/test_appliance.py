"""Appliance operations against the real binary: SIGHUP re-reading the config file, and
`edgeseek doctor` with and without a running daemon."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import httpx

from conftest import BIN, FIXTURES, ROOT, run
from test_api import MODEL, Server
from test_tls import peer_fingerprint


def wait_log(server, text, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in server.logs():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log: {server.logs()}")


def post_chat(server, key, size):
    """A valid chat body of `size` bytes: JSON whitespace pads it, so the prompt stays short."""
    text = json.dumps({"model": MODEL, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "Hi"}]})
    text = text[:-1] + " " * max(size - len(text), 0) + "}"
    return server.http.post("/v1/chat/completions", content=text,
                            headers={"Authorization": f"Bearer {key}",
                                     "Content-Type": "application/json"})


def test_sighup_rereads_the_config_applies_live_limits_and_keeps_it_on_errors(tmp_path, monkeypatch):
    # The "applied" lines are INFO.
    monkeypatch.setenv("EDGESEEK_TEST_LOG", "warn,edgeseek=info")
    s = Server(tmp_path / "state", config="[server]\nmax_body_bytes = 2048\n")
    try:
        s.wait_ready()
        key = s.key("hup")
        cfg = s.state / "edgeseek.toml"
        assert post_chat(s, key, 3000).status_code == 413

        # A live setting: applied by SIGHUP, no restart, same process.
        cfg.write_text("[server]\nmax_body_bytes = 65536\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_log(s, "SIGHUP: config: `server.max_body_bytes` changed; applied")
        assert post_chat(s, key, 3000).status_code == 200

        # A file that does not parse: logged, the running configuration stays.
        cfg.write_text("[server]\nmax_body_bytes = \"lots\"\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_log(s, "SIGHUP: the config file does not load; keeping the running configuration")
        assert str(cfg) in s.logs()
        assert post_chat(s, key, 3000).status_code == 200

        # Settings that need a restart are named, and not applied.
        cfg.write_text("[server]\nmax_body_bytes = 65536\n[engine]\nmax_batch = 2\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_log(s, "take effect only after a restart (`systemctl restart edgeseek`): engine.max_batch")
        assert post_chat(s, key, 3000).status_code == 200
        assert s.proc.poll() is None
    finally:
        s.stop()


def test_tls_init_creates_the_identity_serve_then_uses(tmp_path):
    state = tmp_path / "state"
    base = ["--dev", "--state-dir", str(state)]
    p = run(["tls", "init", *base], check=True)
    lines = p.stdout.splitlines()
    assert lines[0] == f"created the TLS identity in {state / 'tls'}"
    fp = lines[-1].split()[-1]
    assert lines[-1].startswith("fingerprint sha256 ") and len(fp) == 95
    again = json.loads(run(["tls", "init", *base, "--json"], check=True).stdout)
    assert again["created"] is False and again["fingerprint_sha256"] == fp
    assert again["source"] == "generated"
    s = Server(state)
    try:
        shown = json.loads(run(["tls", "show", *base, "--json"], check=True).stdout)
        assert shown["fingerprint_sha256"] == fp
        # The running daemon presents the certificate init made.
        assert peer_fingerprint(s.url) == fp
    finally:
        s.stop()


def doctor(*args):
    p = run(["doctor", *args])
    assert p.returncode in (0, 1), p.stderr
    return p


def checks_of(p):
    report = json.loads(p.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    # Exit status 1 exactly when a check failed.
    assert (p.returncode == 1) == bool(failed) == (report["ok"] is False), p.stdout
    return {c["name"]: c for c in report["checks"]}


def test_doctor_with_a_running_daemon_sees_it_on_its_port(tmp_path):
    s = Server(tmp_path / "state")
    try:
        s.wait_ready()
        addr = s.url.removeprefix("https://")
        cfg = tmp_path / "doctor.toml"
        cfg.write_text(f'[server]\nlisten = "{addr}"\n')
        c = checks_of(doctor("--dev", "--state-dir", str(s.state), "--config", str(cfg),
                             "--model", str(FIXTURES / "tiny-qwen2-genai"), "--json"))
        port = addr.rsplit(":", 1)[1]
        assert c["port"]["status"] == "ok", c["port"]
        assert c["port"]["detail"] == f"{port} in use by edgeseek: edgeseek (pid {s.proc.pid})"
        assert c["daemon"]["status"] == "ok", c["daemon"]
        assert f"{MODEL} ready on cpu" in c["daemon"]["detail"]
        assert c["tls"]["status"] == "ok" and "generated certificate" in c["tls"]["detail"]
        assert c["onnxruntime"]["status"] == "ok"
        assert c["provider.cpu"]["status"] == "ok"
        assert c[f"model:{MODEL}"]["status"] == "warn"  # the fixture has no manifest.sha256
        assert c["unit.hardening"]["status"] == "skip"
    finally:
        s.stop()


def test_doctor_names_the_process_that_holds_the_port(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cfg = tmp_path / "doctor.toml"
        cfg.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n')
        p = doctor("--dev", "--state-dir", str(tmp_path / "state"), "--config", str(cfg), "--json")
        c = checks_of(p)
        assert p.returncode == 1
        assert c["port"]["status"] == "fail"
        assert f"{port} (127.0.0.1:{port}) is in use by " in c["port"]["detail"]
        assert f"(pid {os.getpid()})" in c["port"]["detail"]
        assert c["daemon"]["status"] == "warn" and "not running" in c["daemon"]["detail"]


def test_doctor_text_is_one_line_per_check_with_a_fix_on_each_problem(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[engine]\nmax_batch = 0\n")
    p = doctor("--dev", "--state-dir", str(tmp_path / "state"), "--config", str(cfg))
    lines = p.stdout.splitlines()
    assert p.returncode == 1
    assert lines[-1].startswith("edgeseek doctor: ") and ", 1 fail, " in lines[-1]
    body = lines[:-1]
    for line in body:
        level = line.split()[0]
        assert level in ("OK", "WARN", "FAIL", "SKIP"), line
        assert (". Fix: " in line) == (level != "OK"), line
    config = next(l for l in body if l.split()[1] == "config")
    assert config.startswith("FAIL") and "`engine.max_batch`" in config and str(cfg) in config
    assert p.stderr.strip() == "edgeseek: error: 1 check(s) failed (FAIL lines above)"


def test_engine_model_picks_the_served_model_and_doctor_agrees(tmp_path):
    state = tmp_path / "state"
    models = state / "models"
    models.mkdir(parents=True)
    # First by name, and broken: without engine.model this one would be served.
    (models / "aaa-broken").mkdir()
    (models / "aaa-broken" / "genai_config.json").write_text("{")
    shutil.copytree(FIXTURES / "tiny-qwen2-genai", models / "tiny")
    cfg = tmp_path / "edgeseek.toml"
    cfg.write_text('[engine]\nmodel = "tiny"\n')
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["EDGESEEK_LOG"] = "warn"
    proc = subprocess.Popen([str(BIN), "serve", "--dev", "--state-dir", str(state), "--config", str(cfg),
                             "--listen", "127.0.0.1:0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        ctx = ssl.create_default_context(cafile=str(state / "tls" / "ca.pem"))
        with httpx.Client(base_url=url, verify=ctx, timeout=30) as http:
            deadline = time.time() + 60
            while http.get("/readyz").status_code != 200:
                assert time.time() < deadline and proc.poll() is None, "not ready"
                time.sleep(0.1)
            assert http.get("/readyz").json()["model"] == "tiny"
        c = checks_of(doctor("--dev", "--state-dir", str(state), "--config", str(cfg), "--json"))
        assert c["model:tiny"]["status"] == "warn"  # no manifest
        assert c["model:tiny"]["detail"].endswith("no manifest.sha256: files not verified")
        assert "(served: engine.model)" in c["model:tiny"]["detail"]
        assert c["model:aaa-broken"]["status"] == "fail"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def tls_connect(server):
    """A TLS connection that has finished its handshake (it holds one connection slot)."""
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    return server.tls_context().wrap_socket(raw, server_hostname=host)


def refused(server):
    """True when the server closes a new connection at once (connection cap reached)."""
    try:
        s = tls_connect(server)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return not s.recv(64).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    finally:
        s.close()


def test_the_connection_cap_applies_and_sighup_raises_it_live(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEEK_TEST_LOG", "warn,edgeseek=info")
    s = Server(tmp_path / "state", config="[server]\nmax_connections = 1\n")
    held = None
    try:
        key = s.key("cap")
        # A busy connection (a request waiting for the rest of its body): an idle one would
        # be evicted to make room (test_conn.py).
        held = tls_connect(s)
        held.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}"
                     "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        time.sleep(0.3)
        assert refused(s), "a second connection got through a cap of 1"
        (s.state / "edgeseek.toml").write_text("[server]\nmax_connections = 2\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_log(s, "SIGHUP: config: `server.max_connections` changed; applied")
        assert not refused(s), "the raised cap did not apply"
        held.close()
        held = None
    finally:
        if held is not None:
            held.close()
        s.stop()
