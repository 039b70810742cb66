"""Running the real `edgeseek serve --dev` for the abuse suite: start, keys, TLS trust, memory.

Self-contained (no pytest, no e2e imports) so the suite's venv needs only its own requirements.
"""

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("EDGESEEK_BIN", ROOT / "target" / "debug" / "edgeseek"))
MODEL = ROOT / "tests" / "fixtures" / "tiny-qwen2-genai"
MODEL_NAME = MODEL.name


def env():
    e = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    e["EDGESEEK_LOG"] = os.environ.get("EDGESEEK_ABUSE_LOG", "warn")
    return e


def cli(*args, timeout=60):
    return subprocess.run([str(BIN), *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)


class Daemon:
    """One `edgeseek serve --dev` on 127.0.0.1 with an ephemeral port (or `port`, to come back
    on the same address after a restart)."""

    def __init__(self, state: Path, config: str = "", port: int = 0, model: Path = MODEL):
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state / "edgeseek.toml"
        if config or not self.config_path.exists():
            self.config_path.write_text(config)
        args = [str(BIN), "serve", "--dev", "--state-dir", str(self.state),
                "--listen", f"127.0.0.1:{port}", "--model", str(model),
                "--config", str(self.config_path)]
        self.log = open(self.state / "serve.log", "a")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.url = self._read_url(60)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.ca = self.state / "tls" / "ca.pem"

    @property
    def pid(self):
        return self.proc.pid

    def _read_url(self, timeout):
        found = {}

        def reader():
            for line in self.proc.stdout:
                if line.startswith("listening on https://") and "url" not in found:
                    found["url"] = line.split()[-1].strip()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "url" in found:
                return found["url"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.logs()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"serve printed no address: {self.logs()[-2000:]}")

    def logs(self):
        self.log.flush()
        return (self.state / "serve.log").read_text(errors="replace")

    def tls_context(self):
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, **kw):
        kw.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, verify=self.tls_context(), **kw)

    def wait_ready(self, timeout=90):
        deadline = time.time() + timeout
        with self.client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while time.time() < deadline:
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited {self.proc.returncode}: {self.logs()[-2000:]}")
                time.sleep(0.1)
        raise RuntimeError(f"not ready after {timeout} s: {self.logs()[-2000:]}")

    def key(self, name, scope="admin"):
        """A key created through the running daemon's admin socket."""
        p = cli("keys", "create", "--dev", "--state-dir", str(self.state), "--name", name,
                "--scope", scope, "--json")
        if p.returncode != 0:
            raise RuntimeError(f"keys create failed: {p.stderr.strip()}")
        return json.loads(p.stdout)["secret"]

    def vm_hwm_kib(self):
        """Peak resident set size of the daemon (VmHWM), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return -1

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
