"""Tool-calling evaluation over the OpenAI SDK (see scripts/eval-tools, which sets up the binary,
the model and the venv and then runs this).

Starts `edgeseek serve --dev` on 127.0.0.1 (free port, temporary state dir, real TLS trusted
through the generated CA), creates a key, and runs the 20 weather-tool questions of
tests/e2e/tools_eval.py once per sampling mode. Progress and the table go to stderr/stdout;
the last line of stdout is one JSON object with every figure.
"""

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target" / "release" / "edgeseek"))
    p.add_argument("--model", required=True, help="model directory (a tool-capable chat template)")
    p.add_argument("--sampling", default="greedy,default",
                   help="comma list of greedy (temperature 0) and default (the model's own "
                        "generation defaults, seeded); default: both")
    p.add_argument("--stream", default="whole", choices=["whole", "stream", "both"],
                   help="whole answers, streamed ones (reassembled from delta.tool_calls), or "
                        "each question both ways")
    p.add_argument("--system", default="none", choices=["none", "instructed", "both"],
                   help="no system message (the template's default line), the one in "
                        "tests/e2e/tools_eval.py SYSTEM_PROMPT (when to call, answer from a tool "
                        "result), or each run both ways")
    p.add_argument("--max-tokens", type=int, default=160, help="per answer (default 160)")
    p.add_argument("--only", default=None, help="comma list of question ids")
    p.add_argument("--records", default=None, help="write every record (raw answers) as JSON here")
    a = p.parse_args()

    os.environ["EDGESEEK_BIN"] = a.bin   # read by conftest when test_api is imported
    import openai, httpx                  # noqa: E401  (the test venv's packages)
    from test_api import Server
    import tools_eval

    questions = [q for q in tools_eval.QUESTIONS if not a.only or q[0] in a.only.split(",")]
    model_dir = Path(a.model).resolve()
    name = model_dir.name
    modes = [m for m in a.sampling.split(",") if m]
    for m in modes:
        if m not in ("greedy", "default"):
            p.error(f"unknown sampling mode {m!r}")
    streams = {"whole": [False], "stream": [True], "both": [False, True]}[a.stream]
    systems = {"none": [None], "instructed": [tools_eval.SYSTEM_PROMPT],
               "both": [None, tools_eval.SYSTEM_PROMPT]}[a.system]

    with tempfile.TemporaryDirectory(prefix="eval-tools.") as tmp:
        t0 = time.time()
        server = Server(Path(tmp) / "state", model=model_dir)
        try:
            server.wait_ready(timeout=900)
            load_s = round(time.time() - t0, 1)
            log(f"eval-tools: {name} ready in {load_s}s on {server.url}")
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key("eval-tools"),
                                   max_retries=0,
                                   http_client=httpx.Client(verify=server.tls_context(), timeout=600))
            runs, records = {}, []
            for system, mode, stream in itertools.product(systems, modes, streams):
                label = ("sys+" if system else "") + mode + ("/stream" if stream else "")
                rs = []
                for i, q in enumerate(questions):
                    r = tools_eval.run_question(client, name, q, sampling=mode, stream=stream,
                                                max_tokens=a.max_tokens, seed=1000 + i,
                                                system=system)
                    rs.append(r)
                    calls = "; ".join(f"{c['name']}({c['arguments']})" for c in r["calls"]) or "-"
                    final = (r["answers"][-1]["content"] or "").replace("\n", " ")[:70]
                    log(f"  [{label}] {r['id']:<13} {'ok ' if r['choice_ok'] else 'BAD'} "
                        f"rt={r['roundtrip_ok']!s:<5} {r['seconds']:>5}s  {calls}  | {final}")
                    for pr in r["problems"]:
                        log(f"      problem: {pr}")
                runs[label] = {"summary": tools_eval.summarize(rs)}
                records += rs
        finally:
            serve_log = server.logs()
            server.stop()

    print()
    print(f"Tool calling, {name}: tool_choice auto picks correctly / round trip uses the result")
    head = f"{'run':<22}{'all':>8}{'single':>8}{'multi':>8}{'direct':>8}{'en':>8}{'zh':>8}{'round trip':>12}{'parallel':>10}{'s':>8}"
    print(head)
    for label, run in runs.items():
        s = run["summary"]
        cell = lambda k: f"{s[k]['choice_ok']}/{s[k]['n']}"  # noqa: E731
        rt = f"{s['all']['roundtrip_ok']}/{s['all']['roundtrip_n']}"
        print(f"{label:<22}{cell('all'):>8}{cell('single'):>8}{cell('multi'):>8}{cell('direct'):>8}"
              f"{cell('en'):>8}{cell('zh'):>8}{rt:>12}{s['parallel']:>10}{s['seconds']:>8}")
    if a.records:
        Path(a.records).write_text(json.dumps({"records": records, "serve_log": serve_log},
                                              ensure_ascii=False, indent=1), encoding="utf-8")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(json.dumps({"model": name, "commit": commit, "machine": platform.node(),
                      "cpus": os.cpu_count(), "load_s": load_s, "max_tokens": a.max_tokens,
                      "questions": len(questions),
                      "runs": {k: v["summary"] for k, v in runs.items()}}, ensure_ascii=False))


if __name__ == "__main__":
    main()
