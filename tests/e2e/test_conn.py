"""Connection limits of `edgeseek serve` with the real binary: the first-request deadline, the
idle timeout (HTTP/1.1 and HTTP/2), HTTP/2 keep-alive PINGs, the global cap with eviction of idle connections (a flood from one loopback
address while another address is served), the per-address cap, the request-body rate, live
reload of the limits, mTLS client CA + CRL reload, and the local CA's name constraints.

Timeouts are configured down to 1 s so each test takes a few seconds. Figures (how long a
close took, how many requests succeeded under a flood) are printed; run with `-s` to see them.
"""

import signal
import socket
import ssl
import time

import httpx
import pytest

from conftest import openssl, run
from test_api import Server

FLOOD_ADDR = "127.0.0.2"


def host_port(server):
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def tls_conn(server, source=None, ctx=None, timeout=10):
    """A TLS connection (handshake done, ALPN http/1.1) that has sent nothing yet."""
    ctx = ctx or server.tls_context()
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(host_port(server))
    return ctx.wrap_socket(sock, server_hostname="localhost")


def closed_within(sock, seconds):
    """Seconds until the server closed `sock` (reads nothing but EOF / reset), or None."""
    start = time.monotonic()
    deadline = start + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except (socket.timeout, TimeoutError):
            return None
        except (ssl.SSLError, ConnectionError, OSError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start


def read_response(sock):
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a response: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk
        body += chunk
    return status, body


def healthz(sock):
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return read_response(sock)


def post_head(key, length, path="/v1/chat/completions"):
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def start(tmp_path, server_section, extra=""):
    return Server(tmp_path / "state", config=f"[server]\n{server_section}\n{extra}")


def test_a_silent_tls_connection_is_closed_at_the_first_request_deadline(tmp_path):
    s = start(tmp_path, "first_request_timeout_s = 1\nidle_timeout_s = 60")
    try:
        s.wait_ready()
        silent = tls_conn(s)
        took = closed_within(silent, 6)
        print(f"\nsilent connection closed after {took:.2f} s (first_request_timeout_s = 1)")
        assert took is not None and 0.9 <= took <= 3, took
        # A client that asks in time is served, and its connection is not cut at 1 s.
        prompt = tls_conn(s)
        assert healthz(prompt) == (200, b'{"status":"ok"}')
        time.sleep(1.5)
        assert healthz(prompt)[0] == 200
        prompt.close()
    finally:
        s.stop()


def test_http1_keep_alive_is_closed_after_the_idle_timeout(tmp_path):
    # header_read_timeout_s (hyper's own timer between HTTP/1.1 requests) far above: the
    # close comes from idle_timeout_s.
    s = start(tmp_path, "idle_timeout_s = 1\nheader_read_timeout_s = 30")
    try:
        s.wait_ready()
        c = tls_conn(s)
        assert healthz(c)[0] == 200
        time.sleep(0.5)
        assert healthz(c)[0] == 200  # within the timeout: kept
        took = closed_within(c, 6)
        print(f"\nidle keep-alive connection closed after {took:.2f} s (idle_timeout_s = 1)")
        assert took is not None and 0.9 <= took <= 3, took
    finally:
        s.stop()


def test_a_flood_of_idle_connections_does_not_lock_out_another_client(tmp_path):
    # Long deadlines: only eviction can make room.
    cap = 16
    s = start(tmp_path, f"max_connections = {cap}\nfirst_request_timeout_s = 60\nidle_timeout_s = 60")
    flood = []
    try:
        s.wait_ready()
        for _ in range(2 * cap):
            try:
                flood.append(tls_conn(s, source=FLOOD_ADDR))
            except (ssl.SSLError, ConnectionError, OSError):
                pass  # evicted during its own handshake by a later one
        ok = 0
        n = 40
        for _ in range(n):
            try:
                c = tls_conn(s)
                if healthz(c)[0] == 200:
                    ok += 1
                c.close()
            except (ssl.SSLError, ConnectionError, OSError):
                pass
        still_open = sum(closed_within(f, 0.05) is None for f in flood)
        print(f"\nflood: {len(flood)} idle TLS connections from {FLOOD_ADDR} with max_connections"
              f" = {cap}; /healthz from 127.0.0.1: {ok}/{n} answered; flood connections still"
              f" open: {still_open}")
        assert ok == n
        assert still_open <= cap
        assert s.proc.poll() is None
    finally:
        for f in flood:
            f.close()
        s.stop()


def test_per_address_cap_evicts_idle_and_refuses_when_all_busy(tmp_path):
    s = start(tmp_path, "max_connections_per_ip = 4\nbody_timeout_s = 60\nfirst_request_timeout_s = 60")
    conns = []
    try:
        s.wait_ready()
        key = s.key("cap")
        # Four busy connections from one address: each has a request waiting for its body.
        for _ in range(4):
            c = tls_conn(s, source=FLOOD_ADDR)
            c.sendall(post_head(key, 1000) + b"{")
            conns.append(c)
        time.sleep(0.3)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            fifth = tls_conn(s, source=FLOOD_ADDR)
            healthz(fifth)
        # Other addresses are unaffected.
        assert s.http.get("/healthz").status_code == 200
        for c in conns:
            c.close()
        conns.clear()
        time.sleep(0.3)
        # Four idle ones: a fifth evicts the one idle the longest.
        for _ in range(4):
            conns.append(tls_conn(s, source=FLOOD_ADDR))
        fifth = tls_conn(s, source=FLOOD_ADDR)
        assert healthz(fifth)[0] == 200
        took = closed_within(conns[0], 5)
        print(f"\nper-address cap 4: 5th busy connection refused; 5th with idle ones served,"
              f" the oldest closed after {took:.2f} s")
        assert took is not None
        assert all(closed_within(c, 0.05) is None for c in conns[1:])
        fifth.close()
    finally:
        for c in conns:
            c.close()
        s.stop()


def test_a_slow_body_is_cut_and_a_large_upload_is_not(tmp_path):
    s = start(tmp_path, "body_timeout_s = 1\nbody_min_bytes_per_s = 100\n"
                        "max_body_bytes = 70000000")
    try:
        s.wait_ready()
        key = s.key("body")
        c = tls_conn(s)
        c.sendall(post_head(key, 10_000))
        start_t = time.monotonic()
        cut = None
        for _ in range(60):  # 5 bytes/s, well under 100 bytes/s
            try:
                c.sendall(b" ")
            except (ssl.SSLError, ConnectionError, OSError):
                cut = time.monotonic() - start_t
                break
            if closed_within(c, 0.2) is not None:
                cut = time.monotonic() - start_t
                break
        print(f"\nbody at 5 B/s (min 100 B/s over 1 s windows): cut after {cut}")
        assert cut is not None and cut <= 4, cut

        # 64 MiB at loopback speed: answered (400: the JSON has no model), not cut.
        body = b" " * (64 << 20) + b"{}"
        big = tls_conn(s, timeout=60)
        t = time.monotonic()
        big.sendall(post_head(key, len(body)) + body)
        status, resp = read_response(big)
        print(f"64 MiB body sent and answered in {time.monotonic() - t:.2f} s: HTTP {status}")
        assert status == 400 and b"error" in resp
        big.close()
    finally:
        s.stop()


def test_sighup_applies_changed_limits_to_open_and_new_connections(tmp_path):
    s = start(tmp_path, "first_request_timeout_s = 30")
    try:
        s.wait_ready()
        old = tls_conn(s)
        assert closed_within(old, 1.5) is None
        cfg = s.state / "edgeseek.toml"
        cfg.write_text("[server]\nfirst_request_timeout_s = 1\n")
        s.proc.send_signal(signal.SIGHUP)
        took = closed_within(old, 6)
        print(f"\nafter SIGHUP (first_request_timeout_s 30 -> 1): open connection closed after"
              f" {took}")
        assert took is not None and took <= 4
        new = tls_conn(s)
        took = closed_within(new, 6)
        assert took is not None and took <= 3
        assert s.http.get("/healthz").status_code == 200
    finally:
        s.stop()


def make_client_pki(pki, name):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=pki)
    (pki / f"{name}.cnf").write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\ncrlnumber = {name}.crlnum\n"
        f"default_md = sha256\ndefault_crl_days = 2\ncertificate = {name}.pem\n"
        f"private_key = {name}.key\n")
    (pki / f"{name}.index").write_text("")
    (pki / f"{name}.crlnum").write_text("01\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")


def client_cert(pki, ca, name):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
            cwd=pki)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "client.ext",
            cwd=pki)
    return pki / f"{name}.pem", pki / f"{name}.key"


def gen_crl(pki, ca, out):
    openssl("ca", "-config", f"{ca}.cnf", "-gencrl", "-out", out, cwd=pki)


def test_mtls_client_ca_and_crl_are_reloaded_on_sighup(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_client_pki(pki, "ca1")
    make_client_pki(pki, "ca2")
    laptop = client_cert(pki, "ca1", "laptop")
    phone = client_cert(pki, "ca1", "phone")
    tablet = client_cert(pki, "ca2", "tablet")
    (pki / "clients.pem").write_bytes((pki / "ca1.pem").read_bytes())
    gen_crl(pki, "ca1", "clients.crl")
    s = Server(tmp_path / "state", client_cert=phone,
               config=f'[tls]\nclient_ca = "{pki / "clients.pem"}"\n'
                      f'client_crl = "{pki / "clients.crl"}"\n')

    def get(cert):
        ctx = ssl.create_default_context(cafile=str(s.ca))
        ctx.load_cert_chain(*map(str, cert))
        with httpx.Client(base_url=s.url, verify=ctx, timeout=10,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            return c.get("/healthz").status_code

    def refused(cert):
        try:
            get(cert)
            return False
        except httpx.HTTPError:
            return True

    def after_reload(check):
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and not check():
            time.sleep(0.2)
        return check()

    try:
        s.wait_ready()
        assert get(laptop) == 200 and get(phone) == 200
        assert refused(tablet)
        # Revoke the laptop: refused once the daemon re-read the CRL.
        openssl("ca", "-config", "ca1.cnf", "-revoke", "laptop.pem", cwd=pki)
        gen_crl(pki, "ca1", "clients.crl")
        assert get(laptop) == 200  # not re-read without a reload
        assert after_reload(lambda: refused(laptop))
        assert get(phone) == 200
        # A new client CA bundle (both CAs, both CRLs): the tablet is accepted.
        (pki / "clients.pem").write_bytes((pki / "ca1.pem").read_bytes() + (pki / "ca2.pem").read_bytes())
        gen_crl(pki, "ca2", "ca2.crl")
        (pki / "clients.crl").write_bytes((pki / "clients.crl").read_bytes() + (pki / "ca2.crl").read_bytes())
        assert after_reload(lambda: not refused(tablet))
        assert get(tablet) == 200 and refused(laptop)
        # A broken CRL on reload: logged, the running verifier stays.
        (pki / "clients.crl").write_text("not a crl")
        s.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert get(phone) == 200 and refused(laptop)
        assert "clients.crl" in s.logs()
        assert s.proc.poll() is None
    finally:
        s.stop()


def test_the_generated_ca_is_name_constrained_to_local_names(tmp_path):
    state = tmp_path / "state"
    p = run(["tls", "init", "--dev", "--state-dir", str(state)], timeout=60)
    assert p.returncode == 0, p.stderr
    tls = state / "tls"
    text = subprocess_out(["openssl", "x509", "-in", str(tls / "ca.pem"), "-noout", "-text"])
    assert "X509v3 Name Constraints: critical" in text, text
    for permitted in ("DNS:localhost", "DNS:local", "IP:127.0.0.0/255.0.0.0",
                      "IP:192.168.0.0/255.255.0.0", "IP:10.0.0.0/255.0.0.0"):
        assert permitted in text, permitted
    # The server certificate verifies; one the CA key signs for a public name does not.
    ok = subprocess_run(["openssl", "verify", "-CAfile", str(tls / "ca.pem"), str(tls / "server.pem")])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    work = tmp_path / "forge"
    work.mkdir()
    (work / "ext.cnf").write_text("subjectAltName=DNS:www.example.com\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "f.key", "-out", "f.csr", "-subj", "/CN=www.example.com", cwd=work)
    openssl("x509", "-req", "-in", "f.csr", "-CA", str(tls / "ca.pem"), "-CAkey",
            str(tls / "ca.key"), "-CAcreateserial", "-out", "f.pem", "-days", "2",
            "-extfile", "ext.cnf", cwd=work)
    forged = subprocess_run(["openssl", "verify", "-CAfile", str(tls / "ca.pem"), str(work / "f.pem")])
    print(f"\nforged www.example.com certificate: {forged.stdout.strip()} {forged.stderr.strip()}")
    assert forged.returncode != 0
    assert "name constraint" in (forged.stdout + forged.stderr).lower() or \
        "permitted subtree" in (forged.stdout + forged.stderr).lower()


def subprocess_run(args):
    import subprocess
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def subprocess_out(args):
    p = subprocess_run(args)
    assert p.returncode == 0, p.stderr
    return p.stdout


# --- HTTP/2 (frames by hand: the test venv has no HTTP/2 client) ---------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literal(index, value):
    """A literal header field without indexing, name from the static table (RFC 7541 6.2.2)."""
    assert len(value) < 127
    head = bytes([index]) if index < 15 else bytes([0x0F, index - 15])
    return head + bytes([len(value)]) + value


def h2_request(path, extra=(), body=False):
    block = bytes([0x83 if body else 0x82, 0x87])  # :method POST/GET, :scheme https
    block += hpack_literal(4, path.encode()) + hpack_literal(1, b"localhost")  # :path, :authority
    for index, value in extra:
        block += hpack_literal(index, value.encode())
    return h2_frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), 1, block)


class H2:
    def __init__(self, server, answer_pings=True):
        self.answer_pings = answer_pings
        ctx = server.tls_context()
        ctx.set_alpn_protocols(["h2"])
        sock = socket.create_connection(host_port(server), timeout=10)
        self.sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.sock.sendall(H2_PREFACE + h2_frame(SETTINGS, 0, 0))
        self.buf = b""

    def frame(self, timeout):
        """The next frame (kind, flags, stream), answering SETTINGS (and PINGs, as clients
        do, unless told not to); "closed" at EOF, None at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    kind, flags = self.buf[3], self.buf[4]
                    stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload = self.buf[9:9 + n]
                    self.buf = self.buf[9 + n:]
                    if kind == SETTINGS and not flags & ACK:
                        self.sock.sendall(h2_frame(SETTINGS, ACK, 0))
                    if kind == PING and not flags & ACK and self.answer_pings:
                        self.sock.sendall(h2_frame(PING, ACK, 0, payload))
                    return kind, flags, stream
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            except (ssl.SSLError, ConnectionError, OSError):
                return "closed"
            if not data:
                return "closed"
            self.buf += data

    def until(self, want, timeout):
        """Frames until `want(frame)`; returns (frame, seconds, kinds seen) or (None, …)."""
        start = time.monotonic()
        seen = []
        while time.monotonic() - start < timeout:
            f = self.frame(timeout - (time.monotonic() - start))
            if f is None:
                break
            seen.append(f if f == "closed" else f[0])
            if want(f):
                return f, time.monotonic() - start, seen
            if f == "closed":
                break
        return None, time.monotonic() - start, seen


def answered(f):
    return f != "closed" and f[2] == 1 and f[0] in (DATA, HEADERS) and f[1] & END_STREAM


def test_http2_idle_connection_gets_goaway_and_unanswered_pings_close_it(tmp_path):
    s = start(tmp_path, "idle_timeout_s = 1\nh2_keepalive_interval_s = 0")
    try:
        s.wait_ready()
        c = H2(s)
        c.sock.sendall(h2_request("/healthz"))
        assert c.until(answered, 5)[0] is not None
        f, took, seen = c.until(lambda f: f == "closed", 6)
        print(f"\nHTTP/2 idle connection: {seen} within {took:.2f} s (idle_timeout_s = 1)")
        assert GOAWAY in seen and f == "closed" and 0.9 <= took <= 3, (seen, took)
    finally:
        s.stop()
    # Keep-alive: idle timers far away; a client that never answers PINGs is closed.
    s = start(tmp_path / "ka", "idle_timeout_s = 60\nh2_keepalive_interval_s = 1\nh2_keepalive_timeout_s = 1")
    try:
        s.wait_ready()
        c = H2(s, answer_pings=False)
        c.sock.sendall(h2_request("/healthz"))
        assert c.until(answered, 5)[0] is not None
        f, took, seen = c.until(lambda f: f == "closed", 8)
        print(f"HTTP/2 PINGs unanswered: {seen} within {took:.2f} s (interval 1 s, timeout 1 s)")
        assert PING in seen and f == "closed", seen
    finally:
        s.stop()


def test_http2_slow_body_is_cut(tmp_path):
    s = start(tmp_path, "body_timeout_s = 1\nbody_min_bytes_per_s = 100")
    try:
        s.wait_ready()
        key = s.key("h2body")
        c = H2(s)
        c.sock.sendall(h2_request("/v1/chat/completions", body=True, extra=[
            (23, f"Bearer {key}"), (31, "application/json"), (28, "10000")]))
        start_t = time.monotonic()
        cut = None
        for _ in range(40):  # one-byte DATA frames at 5 per second
            try:
                c.sock.sendall(h2_frame(DATA, 0, 1, b" "))
            except (ssl.SSLError, ConnectionError, OSError):
                cut = time.monotonic() - start_t
                break
            if c.until(lambda f: f == "closed", 0.2)[0] == "closed":
                cut = time.monotonic() - start_t
                break
        print(f"\nHTTP/2 body at 5 B/s (min 100 B/s over 1 s windows): cut after {cut}")
        assert cut is not None and cut <= 4, cut
    finally:
        s.stop()
