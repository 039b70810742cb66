"""`edgeseek tls show | rotate | import` against a running `edgeseek serve --dev`: the files
change, the daemon reloads over the admin socket, new TLS connections see the new certificate
(SHA-256 of the DER the server presents) and the daemon keeps serving."""

import hashlib
import json
import socket
import ssl
import subprocess

import httpx
import pytest

from conftest import error_line, run, openssl
from test_api import Server, _served_fingerprint, chat


def tls_cmd(state, *args):
    return run(["tls", *args, "--dev", "--state-dir", str(state)], timeout=60)


def sha256_fingerprint(der):
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def peer_fingerprint(url):
    """What a new connection is served, without trusting anything (an imported certificate
    is not under the local CA)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return sha256_fingerprint(tls.getpeercert(binary_form=True))


def files(d):
    return {f.name: (f.read_bytes(), f.stat().st_mode) for f in sorted(d.iterdir())}


def test_tls_show_without_an_identity_says_serve_creates_it(tmp_path):
    state = tmp_path / "state"
    p = tls_cmd(state, "show")
    assert p.returncode == 2, p.stderr
    assert "first `edgeseek serve`" in error_line(p)
    assert not (state / "tls").exists()
    p = tls_cmd(state, "rotate")
    assert p.returncode == 2 and "first `edgeseek serve`" in error_line(p)
    assert not (state / "tls").exists()


def test_tls_rotate_serves_a_new_certificate_without_dropping_connections(tmp_path):
    s = Server(tmp_path / "state")
    try:
        s.wait_ready()
        key = s.key("tls")
        p = tls_cmd(s.state, "show", "--json")
        assert p.returncode == 0, p.stderr
        shown = json.loads(p.stdout)
        assert shown["source"] == "generated"
        assert shown["fingerprint_sha256"] == _served_fingerprint(s)
        assert shown["ca"] == str(s.ca)
        assert {"localhost", "127.0.0.1", "::1"} <= set(shown["sans"])
        assert 364 <= shown["days_left"] <= 365 and shown["expired"] is False
        text = tls_cmd(s.state, "show").stdout
        assert shown["fingerprint_sha256"] in text and str(s.ca) in text

        ca_before = (s.ca.read_bytes(), (s.state / "tls" / "ca.key").read_bytes())
        with s.http.stream("GET", "/healthz") as open_response:
            # A connection in use across the rotation.
            p = tls_cmd(s.state, "rotate", "--json")
            assert p.returncode == 0, p.stderr
            rotated = json.loads(p.stdout)
            assert rotated["daemon_reloaded"] is True
            new = rotated["fingerprint_sha256"]
            assert new != shown["fingerprint_sha256"]
            # A NEW connection sees the new certificate at once, still trusted through ca.pem.
            assert _served_fingerprint(s) == new
            assert open_response.read() == b'{"status":"ok"}'
        assert (s.ca.read_bytes(), (s.state / "tls" / "ca.key").read_bytes()) == ca_before
        assert (s.state / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
        assert json.loads(tls_cmd(s.state, "show", "--json").stdout)["fingerprint_sha256"] == new
        status = json.loads(run(["status", "--json", "--dev", "--state-dir", str(s.state)],
                                check=True).stdout)
        assert status["tls"]["fingerprint_sha256"] == new
        assert status["tls"]["source"] == "generated"

        # The daemon keeps serving: pooled (pre-rotation) and new connections, inference too.
        assert s.http.get("/healthz").status_code == 200
        r = chat(s.client(key), max_tokens=4, seed=1)
        assert r.usage.completion_tokens > 0

        # People get the new fingerprint as the last line.
        p = tls_cmd(s.state, "rotate")
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines()[-1] == f"fingerprint sha256 {_served_fingerprint(s)}"
        assert s.proc.poll() is None
    finally:
        s.stop()


def test_tls_import_validates_then_serves_the_certificate(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "edge.key", "-out", "edge.pem", "-days", "30", "-subj", "/CN=edge.example",
             "-addext", "subjectAltName=DNS:edge.example,IP:127.0.0.1", cwd=pki)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", "other.key", cwd=pki)
    expected = sha256_fingerprint(ssl.PEM_cert_to_DER_cert((pki / "edge.pem").read_text()))

    s = Server(tmp_path / "state")
    try:
        s.wait_ready()
        tls_dir = s.state / "tls"
        before = files(tls_dir)
        served = peer_fingerprint(s.url)

        # Bad input: one line, exit 2, nothing changed, the daemon serves what it served.
        p = tls_cmd(s.state, "import", str(pki / "edge.pem"), str(pki / "other.key"))
        assert p.returncode == 2, p.stderr
        assert "is not the private key of" in error_line(p)
        p = tls_cmd(s.state, "import", str(pki / "edge.key"), str(pki / "edge.key"))
        assert p.returncode == 2 and "certificate" in error_line(p)
        p = tls_cmd(s.state, "import", str(pki / "missing.pem"), str(pki / "edge.key"))
        assert p.returncode == 2 and "missing.pem" in error_line(p)
        assert files(tls_dir) == before
        assert peer_fingerprint(s.url) == served

        p = tls_cmd(s.state, "import", str(pki / "edge.pem"), str(pki / "edge.key"), "--json")
        assert p.returncode == 0, p.stderr
        imported = json.loads(p.stdout)
        assert imported["source"] == "imported" and imported["ca"] is None
        assert imported["daemon_reloaded"] is True
        assert imported["subject"] == "CN=edge.example"
        assert imported["sans"] == ["edge.example", "127.0.0.1"]
        assert imported["fingerprint_sha256"] == expected == peer_fingerprint(s.url)
        assert (tls_dir / "server.key").stat().st_mode & 0o777 == 0o600
        assert (tls_dir / "imported").is_file()
        # The local CA stays on disk, unused.
        assert (tls_dir / "ca.pem").read_bytes() == before["ca.pem"][0]

        # A client trusting the imported certificate talks to the daemon.
        ctx = ssl.create_default_context(cafile=str(pki / "edge.pem"))
        with httpx.Client(base_url=s.url, verify=ctx, timeout=30) as c:
            assert c.get("/healthz").status_code == 200

        # Nothing to rotate an imported certificate with.
        p = tls_cmd(s.state, "rotate")
        assert p.returncode == 2
        assert "imported" in error_line(p)
        assert peer_fingerprint(s.url) == expected
        assert s.proc.poll() is None
    finally:
        s.stop()
