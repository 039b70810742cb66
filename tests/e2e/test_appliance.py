"""Appliance operations against the real binary: SIGHUP re-reading the config file, and
`edgeseek doctor` with and without a running daemon."""

import json
import signal
import time

from conftest import run
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
