"""Overload: `wrk` at 4 x the daemon's admission capacity (engine.max_batch running +
engine.max_queue waiting) against /v1/chat/completions on the tiny fixture model.

Pass: only 200 and 429 answers, every 429 with Retry-After, no 5xx, no socket errors; the
queue gauge never above engine.max_queue; the daemon's peak RSS (VmHWM) under the stated cap;
and the daemon still answers afterwards.
"""

import json
import os
import re
import subprocess
import threading
from pathlib import Path

from daemon import MODEL_NAME, Daemon
from report import Row

HERE = Path(__file__).resolve().parent
RSS_CAP_MIB = 1024


def queue_watch(d, stop, seen):
    with d.client(timeout=5) as c:
        while not stop.is_set():
            try:
                for line in c.get("/metrics").text.splitlines():
                    if line.startswith("edgeseek_queue_depth "):
                        seen.append(float(line.split()[-1]))
            except Exception:  # noqa: BLE001 - a failed sample is just a missing sample
                pass
            stop.wait(0.2)


def run(tmp: Path, full: bool):
    max_batch, max_queue = (8, 64) if full else (2, 4)
    capacity = max_batch + max_queue
    conns = 4 * capacity
    seconds = 60 if full else 15
    # wrk's connections all come from 127.0.0.1 but stand for many clients: the per-address
    # cap (the connection rows' subject) is raised above them, so this row judges admission.
    d = Daemon(tmp / "overload", f"[engine]\nmax_batch = {max_batch}\nmax_queue = {max_queue}\n"
               f"[server]\nmax_connections = {max(512, 2 * conns)}\n"
               f"max_connections_per_ip = {conns + 8}\n")
    rows = []
    try:
        d.wait_ready()
        key = d.key("overload", "chat")
        body = json.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
                           "max_tokens": 32, "temperature": 0})
        rss_before = d.vm_hwm_kib()
        stop, seen = threading.Event(), []
        w = threading.Thread(target=queue_watch, args=(d, stop, seen), daemon=True)
        w.start()
        env = dict(os.environ, ABUSE_KEY=key, ABUSE_BODY=body)
        p = subprocess.run(["wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s", "--timeout", "30s",
                            "-s", str(HERE / "overload.lua"), f"{d.url}/v1/chat/completions"],
                           env=env, capture_output=True, text=True, timeout=seconds + 60)
        stop.set()
        w.join()
        m = re.search(r"ABUSE_RESULT (\{.*\})", p.stdout)
        if not m:
            rows.append(Row("overload", "wrk 4x capacity", "", "", f"wrk failed: {p.stderr.strip()[-300:]}", False))
            return rows
        r = json.loads(m.group(1))
        codes = {int(k): v for k, v in r["codes"].items()}
        hwm = d.vm_hwm_kib() / 1024
        alive = d.alive()
        after = None
        if alive:
            with d.client(headers={"Authorization": f"Bearer {key}"}) as c:
                after = c.post("/v1/chat/completions", content=body,
                               headers={"Content-Type": "application/json"}).status_code
        only_ok = set(codes) <= {200, 429}
        sock_err = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
        qmax = max(seen) if seen else float("nan")
        passed = (only_ok and r["no_retry_after"] == 0 and sock_err == 0 and codes.get(200, 0) > 0
                  and (seen and qmax <= max_queue) and hwm < RSS_CAP_MIB and alive and after == 200)
        codes_s = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
        rows.append(Row(
            "overload", "wrk, 4x capacity, POST /v1/chat/completions (max_tokens 32)",
            f"{conns} conns = 4 x (max_batch {max_batch} + max_queue {max_queue}), {seconds} s",
            f"only 200/429 (+Retry-After), no 5xx or socket errors, queue <= {max_queue}, "
            f"VmHWM < {RSS_CAP_MIB} MiB",
            f"{r['requests']} answers ({codes_s}); 429 without Retry-After: {r['no_retry_after']}; "
            f"socket errors/timeouts: {sock_err}; queue depth max {qmax:.0f}; VmHWM "
            f"{rss_before / 1024:.0f} -> {hwm:.0f} MiB; p99 {r['p99_ms']:.0f} ms; after: "
            f"{after if alive else 'DAEMON DIED'}",
            passed))
    finally:
        d.stop()
    return rows
