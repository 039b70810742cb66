"""schemathesis against the running daemon's /openapi.json with an admin key: no crash, no
5xx, every error body OpenAI-style (st_hooks.py)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from daemon import Daemon
from report import Row

HERE = Path(__file__).resolve().parent


def run(tmp: Path, full: bool):
    examples = 100 if full else 10
    d = Daemon(tmp / "schema")
    report = tmp / "schemathesis"
    try:
        d.wait_ready()
        key = d.key("schemathesis", "admin")
        # Start once the knowledge base has loaded too (before that its routes answer 503
        # model_loading, which is right but not what this run is about).
        with d.client(headers={"Authorization": f"Bearer {key}"}) as c:
            deadline = time.time() + 120
            while c.get("/v1/kb/collections").status_code != 200 and time.time() < deadline:
                time.sleep(0.2)
        env = dict(os.environ, SCHEMATHESIS_HOOKS="st_hooks", PYTHONPATH=str(HERE))
        # No stateful phase: it would follow links from key listing to key deletion and could
        # revoke the key it runs with.
        p = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{d.url}/openapi.json",
             "--url", d.url, "-H", f"Authorization: Bearer {key}", "--tls-verify", str(d.ca),
             "--checks", "not_a_server_error,openai_error_body", "--phases",
             "examples,coverage,fuzzing", "--max-examples", str(examples), "--workers", "1",
             "--request-timeout", "60", "--seed", "1", "--no-color",
             "--report", "junit", "--report-dir", str(report)],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        alive = d.alive()
    finally:
        d.stop()
    out = p.stdout + p.stderr
    (tmp / "schemathesis.log").write_text(out)
    lines = out.splitlines()
    # The summary's "Test cases:" line is followed by "N generated, N passed, ...".
    summary = [lines[i + 1].strip() for i, l in enumerate(lines[:-1]) if l.strip() == "Test cases:"]
    summary += [l.strip() for l in lines if l.strip().startswith("⚠️")][:3]
    failing = sorted(set(re.findall(r"^\S*\s*(?:_+ )?((?:GET|POST|PUT|DELETE|PATCH) /\S*)", out, re.M)))
    detail = "; ".join(summary) or out.strip()[-400:]
    if failing:
        detail += f"; failing operations: {', '.join(failing[:12])}"
    if not alive:
        detail += "; DAEMON DIED"
    detail += f" (log: {tmp / 'schemathesis.log'})"
    return [Row("bad input", "schemathesis, /openapi.json, admin key",
                f"{examples} examples per operation, phases examples+coverage+fuzzing",
                "0 crashes, 0 5xx, OpenAI-style error bodies", detail,
                p.returncode == 0 and alive)]
