"""systemd integration without systemd: `edgeseek serve` with `NOTIFY_SOCKET` pointing at a
test datagram socket (READY / STATUS / WATCHDOG / RELOADING / STOPPING) and with a listening
socket passed as fd 3 (`LISTEN_FDS` socket activation)."""

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx

from conftest import BIN, ROOT
from test_api import QWEN, Server


class NotifySocket:
    """An AF_UNIX datagram socket collecting sd_notify messages, one list entry per line."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                for line in data.decode().splitlines():
                    self.messages.append((now, line))

    def lines(self) -> list[str]:
        with self.lock:
            return [m for _, m in self.messages]

    def wait_for(self, pred, timeout=60, after=0) -> int:
        """Index of the first line from `after` on that satisfies `pred`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            lines = self.lines()
            for i in range(after, len(lines)):
                if pred(lines[i]):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no matching sd_notify line; got {self.lines()}")

    def close(self):
        self.closed = True
        self.thread.join(timeout=2)
        self.sock.close()


def notify_env(sock: NotifySocket, watchdog_usec=1_000_000):
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(watchdog_usec)}


class NotifiedServer(Server):
    """`Server` with extra environment variables."""

    def __init__(self, state: Path, extra_env: dict):
        old = dict(os.environ)
        os.environ.update(extra_env)
        try:
            super().__init__(state)
        finally:
            os.environ.clear()
            os.environ.update(old)


def test_ready_status_watchdog_reload_and_stop_with_a_stream_in_flight(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    s = NotifiedServer(tmp_path / "state", notify_env(ns))
    try:
        ready = ns.wait_for(lambda l: l == "READY=1")
        # READY comes with the model loaded: /readyz is already 200.
        assert s.http.get("/readyz").status_code == 200
        assert any(l.startswith("STATUS=") and QWEN.name in l for l in ns.lines()), ns.lines()
        # WATCHDOG_USEC=1 s → a ping every 0.5 s while the (idle) engine loop turns.
        time.sleep(3)
        pings = [l for l in ns.lines()[ready:] if l == "WATCHDOG=1"]
        assert len(pings) >= 2, ns.lines()
        assert s.proc.poll() is None

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1.
        mark = len(ns.lines())
        s.proc.send_signal(signal.SIGHUP)
        reloading = ns.wait_for(lambda l: l == "RELOADING=1", timeout=10, after=mark)
        assert any(l.startswith("MONOTONIC_USEC=") for l in ns.lines()[reloading:]), ns.lines()
        ns.wait_for(lambda l: l == "READY=1", timeout=10, after=reloading)
        assert s.http.get("/healthz").status_code == 200

        # SIGTERM with a stream in flight: STOPPING=1, exit 0 within the stop timeout.
        key = s.key("svc")
        body = {"model": QWEN.name, "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 400, "stream": True, "min_p": 0}
        with s.http.stream("POST", "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)
            mark = len(ns.lines())
            t0 = time.time()
            s.proc.send_signal(signal.SIGTERM)
            ns.wait_for(lambda l: l == "STOPPING=1", timeout=10, after=mark)
            # The stream in flight finishes during the drain (grace period 30 s).
            rest = [l for l in lines if l.strip()]
            assert rest and rest[-1] == "data: [DONE]", rest[-3:]
        assert s.proc.wait(timeout=30) == 0, s.logs()
        assert time.time() - t0 < 30
    finally:
        s.stop()
        ns.close()


def test_no_notify_socket_is_a_no_op(tmp_path):
    s = Server(tmp_path / "state")
    try:
        s.wait_ready()
        s.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert s.proc.poll() is None
        assert s.http.get("/healthz").status_code == 200
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.logs()


def test_model_load_failure_still_reports_ready_with_a_status(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "genai_config.json").write_text("{}")
    ns = NotifySocket(tmp_path / "notify.sock")
    old = dict(os.environ)
    os.environ.update(notify_env(ns))
    try:
        s = Server(tmp_path / "state", model=broken)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        ns.wait_for(lambda l: l == "READY=1")
        assert any(l.startswith("STATUS=") and "failed to load" in l for l in ns.lines()), \
            ns.lines()
        assert s.http.get("/readyz").status_code == 503
        # The reactor is alive, so the watchdog is still pinged.
        ns.wait_for(lambda l: l == "WATCHDOG=1", timeout=5)
    finally:
        s.stop()
        ns.close()


def test_socket_activation_serves_on_the_passed_listener(tmp_path):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    state = tmp_path / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["EDGESEEK_LOG"] = env.get("EDGESEEK_TEST_LOG", "warn")
    env["LISTEN_FDS"] = "1"
    fd = lsock.fileno()

    def to_fd3():
        os.dup2(fd, 3)  # dup2 clears FD_CLOEXEC on the new descriptor

    # LISTEN_PID must be the daemon's own pid: the shell sets it and execs in place.
    cmd = (f'LISTEN_PID=$$ exec "{BIN}" serve --dev --state-dir "{state}" '
           f'--listen 127.0.0.1:1 --model "{QWEN}"')
    log = open(state / "serve.log", "w")
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True, close_fds=False, preexec_fn=to_fd3)
    try:
        first = ""
        while not first.startswith("listening on "):
            first = proc.stdout.readline()
            assert first, (state / "serve.log").read_text()
        assert first.strip() == f"listening on https://127.0.0.1:{port}", \
            (first, (state / "serve.log").read_text())
        lsock.close()  # the daemon holds its own copy
        ctx = ssl.create_default_context(cafile=str(state / "tls" / "ca.pem"))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30) as c:
            assert c.get("/healthz").status_code == 200
            deadline = time.time() + 60
            while c.get("/readyz").status_code != 200:
                assert time.time() < deadline, (state / "serve.log").read_text()
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        log.close()
    assert rc == 0, (state / "serve.log").read_text()


def test_socket_activation_rejects_a_non_listening_fd(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["LISTEN_FDS"] = "1"
    cmd = (f'LISTEN_PID=$$ exec "{BIN}" serve --dev --state-dir "{state}" '
           f'--listen 127.0.0.1:0 --model "{QWEN}" 3<"{QWEN / "genai_config.json"}"')
    p = subprocess.run(["sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "not a listening stream socket" in p.stderr


def test_listen_fds_for_another_pid_is_ignored(tmp_path):
    """LISTEN_PID naming another process (e.g. inherited from a parent) means no activation."""
    state = tmp_path / "state"
    old = dict(os.environ)
    os.environ.update({"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    try:
        s = Server(state)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        assert s.http.get("/healthz").status_code == 200
    finally:
        s.stop()
    assert s.proc.returncode == 0, (s.proc.returncode, (state / "serve.log").read_text())


def test_sigterm_while_the_model_loads_exits_cleanly(tmp_path):
    """A stop right after the address is announced (the model still loading) is graceful:
    exit 0, not killed by the signal nor aborted by ONNX Runtime tearing down under the loader."""
    for i in range(3):
        ns = NotifySocket(tmp_path / f"notify{i}.sock")
        s = NotifiedServer(tmp_path / f"state{i}", notify_env(ns))
        try:
            s.proc.send_signal(signal.SIGTERM)
            rc = s.proc.wait(timeout=30)
            assert rc == 0, (rc, (tmp_path / f"state{i}" / "serve.log").read_text())
            ns.wait_for(lambda l: l == "STOPPING=1", timeout=5)
        finally:
            s.stop()
            ns.close()
