"""Connection abuse: while an attacker on another loopback address holds 2 x
`server.max_connections` connections (idle TLS, slow headers, slow bodies, HTTP/2 streams), a
legitimate client on 127.0.0.1 keeps sending small chat requests on fresh connections. The
daemon runs with a small `server.max_connections` (32 at CI scale, 512 full) and
`server.max_connections_per_ip` at a quarter of it, the defaults' proportion (128 of 512).

Pass: >= 99 % of its requests answered 200, and its p99 latency at most 2 x its own p99 on the
unloaded daemon (measured first, same request, same pacing), and the daemon still running.

The attacker stands for another host, but here it shares the daemon's two cores; it runs at
`nice 10` (as slowhttptest does) so that its own CPU use is not charged to the daemon. At CI
scale (15 s runs, ~150 samples on a shared runner, where p99 is the second-slowest request) the
latency bound is 3 x, a regression guard; the issue's 2 x bound is judged at full scale
(`--full`: 60 s, 600 samples per row).
"""

import json
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from daemon import MODEL_NAME, Daemon
from report import Row

HERE = Path(__file__).resolve().parent
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8, "temperature": 0}


def p99(xs):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


class Probe:
    """The legitimate client: one chat request every `period` seconds, each on a new
    connection from `source`, for `seconds`."""

    def __init__(self, d: Daemon, key: str, source="127.0.0.1", period=0.1, timeout=10.0):
        self.d, self.key, self.source, self.period, self.timeout = d, key, source, period, timeout

    def run(self, seconds):
        lat, failures = [], []
        transport = httpx.HTTPTransport(verify=self.d.tls_context(), local_address=self.source,
                                        retries=0)
        with httpx.Client(base_url=self.d.url, transport=transport, timeout=self.timeout,
                          limits=httpx.Limits(max_keepalive_connections=0),
                          headers={"Authorization": f"Bearer {self.key}"}) as c:
            end = time.monotonic() + seconds
            next_at = time.monotonic()
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/chat/completions", json=CHAT)
                    ok = r.status_code == 200
                    why = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    ok, why = False, type(e).__name__
                dt = time.monotonic() - t0
                if ok:
                    lat.append(dt)
                else:
                    failures.append(why)
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))
        n = len(lat) + len(failures)
        return {"n": n, "ok": len(lat), "rate": len(lat) / n if n else 0.0, "p99": p99(lat),
                "failures": sorted(set(failures))[:4]}


def spawn_attacker(mode, d, conns, seconds, key, interval, source="127.0.0.2"):
    return subprocess.Popen(
        ["nice", "-n", "10", sys.executable, str(HERE / "attack.py"), mode, "--port", str(d.port),
         "--conns", str(conns), "--seconds", str(seconds), "--source", source, "--key", key,
         "--interval", str(interval)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawn_slowhttptest(mode_flag, d, conns, seconds, interval):
    url = f"https://127.0.0.1:{d.port}/v1/chat/completions"
    args = ["slowhttptest", mode_flag, "-c", str(conns), "-r", str(max(50, conns)), "-i",
            str(int(interval)), "-l", str(int(seconds)), "-u", url, "-p", "10", "-x", "24"]
    if mode_flag == "-B":
        args += ["-s", "1000000", "-f", "application/json"]
    return subprocess.Popen(["nice", "-n", "10", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_full(att, want, timeout):
    """Read the attacker's progress until it holds `want` connections (the daemon is full),
    for at most `timeout` seconds after its first report (its start-up on a busy machine does
    not count); returns the most it held."""
    peak = 0
    deadline = time.monotonic() + 60
    started = False
    while time.monotonic() < deadline:
        line = att.stdout.readline()
        if not line:
            break
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if not started:
            started = True
            deadline = time.monotonic() + timeout
        peak = max(peak, v.get("peak", 0))
        if peak >= want:
            break
    return peak


def judge(name, scale_note, base, res, alive, extra="", full_reached=True, bound=2.0):
    ok_rate = res["rate"] >= 0.99
    ok_p99 = res["p99"] <= bound * base["p99"]
    passed = ok_rate and ok_p99 and alive and full_reached
    ratio = res["p99"] / base["p99"] if base["p99"] > 0 else float("nan")
    detail = (f"{res['ok']}/{res['n']} answered ({100 * res['rate']:.1f} %), p99 "
              f"{1000 * res['p99']:.0f} ms = {ratio:.2f}x unloaded")
    if res["failures"]:
        detail += f"; failures: {', '.join(res['failures'])}"
    if not alive:
        detail += "; DAEMON DIED"
    if not full_reached:
        detail += "; ATTACK NEVER FILLED ITS SHARE OF THE DAEMON (test invalid)"
    if extra:
        detail += f"; {extra}"
    return Row("connections", name, scale_note, f">= 99 % answered, p99 <= {bound:g}x unloaded",
               detail, passed)


def run(tmp: Path, full: bool, only=None):
    max_conn = 512 if full else 32
    seconds = 60 if full else 15
    bound = 2.0 if full else 3.0
    interval = 5.0
    rows = []
    # The per-address cap keeps the defaults' proportion (128 of 512: a quarter).
    cfg = (f"[server]\nmax_connections = {max_conn}\n"
           f"max_connections_per_ip = {max_conn // 4}\n")
    d = Daemon(tmp / "conn", cfg)
    try:
        d.wait_ready()
        key = d.key("abuse")
        probe = Probe(d, key)
        probe.run(2)  # warm up (model load paths, first TLS session)
        base = probe.run(seconds)
        base_src3 = Probe(d, key, source="127.0.0.3").run(seconds) if shutil.which("slowhttptest") else None
        rows.append(Row("connections", "unloaded baseline (127.0.0.1)",
                        f"{seconds} s, 10 req/s, new connection each", "reference",
                        f"{base['ok']}/{base['n']} answered, p99 {1000 * base['p99']:.0f} ms",
                        base["rate"] >= 0.99))
        cases = [
            ("idle TLS flood (handshake, then silence)", "idle", 2 * max_conn),
            ("slowloris (slow headers)", "slowloris", 2 * max_conn),
            ("slow body (R-U-Dead-Yet)", "slowbody", 2 * max_conn),
            ("HTTP/2 idle streams (max streams per conn, no body)", "h2idle", min(2 * max_conn, 64)),
            ("HTTP/2 rapid reset (HEADERS + RST_STREAM)", "h2reset", 4),
        ]
        for title, mode, conns in cases:
            if only and mode not in only:
                continue
            att = spawn_attacker(mode, d, conns, seconds + 30, key, interval)
            # The legitimate client starts once the attacker holds its address's share (the
            # per-address cap is full), or after 20 s (10 s at CI scale).
            # The daemon keeps cutting slow bodies and idle connections, so the attacker
            # hovers just under the cap: 90 % of its address's share counts as full.
            want = (9 * (max_conn // 4)) // 10 if mode in ("idle", "slowloris", "slowbody") else 1
            reached = wait_full(att, want, 20 if full else 10)
            res = probe.run(seconds)
            att.terminate()
            try:
                out, err = att.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                # A starved attacker that cannot wind down in time: its totals are lost, the
                # client's measurement is not.
                att.kill()
                out, err = att.communicate()
            stats = {}
            for line in out.splitlines():
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if v.get("event") == "done":
                    stats = v
            extra = (f"attacker: {stats.get('opened', '?')} conns opened, peak "
                     f"{stats.get('peak_open', '?')} open, {stats.get('closed_by_server', '?')} "
                     f"closed by the daemon")
            if mode.startswith("h2"):
                extra += f", {stats.get('streams', '?')} streams"
            if not stats:
                extra = "attacker failed: " + err.strip().splitlines()[-1:][0] if err.strip() else "attacker printed nothing"
            n = f"{conns} attacker conns from 127.0.0.2, max_connections={max_conn} (per address {max_conn // 4}), {seconds} s"
            extra += f"; held {reached} before the client started"
            rows.append(judge(title, n, base, res, d.alive(), extra, reached >= want, bound))
            print(f"    {title}: {rows[-1].measured}", file=sys.stderr, flush=True)
            if not d.alive():
                break
            time.sleep(1)
        # slowhttptest cannot bind a source address: it connects from 127.0.0.1, so in these
        # rows the legitimate client binds 127.0.0.3 (still "another host").
        if base_src3 and d.alive():
            for title, flag in (("slowhttptest -H (slow headers)", "-H"),
                                ("slowhttptest -B (slow body)", "-B")):
                if only and "slowhttptest" not in only:
                    continue
                conns = 2 * max_conn
                sh = spawn_slowhttptest(flag, d, conns, seconds + 6, interval)
                time.sleep(5)
                res = Probe(d, key, source="127.0.0.3").run(seconds)
                try:
                    out, _ = sh.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    sh.kill()
                    out, _ = sh.communicate()
                out = re.sub(r"\x1b\[[0-9;]*m", "", out)
                held = [int(m) for m in re.findall(r"connected:\s+(\d+)", out)]
                last = [f"slowhttptest held up to {max(held) if held else '?'} connections"]
                n = f"{conns} conns from 127.0.0.1, client on 127.0.0.3, max_connections={max_conn} (per address {max_conn // 4}), {seconds} s"
                # Without a key (slowhttptest sends none) a POST is answered 401 before its body
                # is read, so slow bodies hold nothing: that is the defence, not a broken test.
                filled = bool(held) and max(held) >= max_conn // 4
                if flag == "-B" and not filled:
                    last.append("unauthenticated: answered 401 before the body")
                rows.append(judge(title, n, base_src3, res, d.alive(), "; ".join(last),
                                  filled or flag == "-B", bound))
                if not d.alive():
                    break
    finally:
        d.stop()
    return rows
