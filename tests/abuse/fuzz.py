"""cargo-fuzz targets (fuzz/), each for a bounded time from seed corpora made of the
repository's fixtures. A crash, timeout or out-of-memory of any target fails its row; the
input that did it is kept under the work directory and named in the row."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from daemon import MODEL_NAME, ROOT
from report import Row

FUZZ = ROOT / "fuzz"
TARGETS = ["openai_request", "chat_template", "tokenizer", "kb_text", "kb_markdown", "kb_html",
           "kb_pdf", "kb_docx"]
BUILD_FLAGS = ["-s", "none"]


def env():
    # cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP lets a stable toolchain take them.
    return dict(os.environ, RUSTC_BOOTSTRAP="1")


def seeds(target, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    gold = ROOT / "tests" / "kb" / "gold"
    files = []
    if target.startswith("kb_"):
        ext = {"kb_text": ".txt", "kb_markdown": ".md", "kb_html": ".html", "kb_pdf": ".pdf",
               "kb_docx": ".docx"}[target]
        files = [p for p in (ROOT / "tests").rglob(f"*{ext}") if p.stat().st_size <= 2 << 20]
        for i, f in enumerate(sorted(files)):
            shutil.copy(f, out / f"seed{i}{ext}")
        return
    if target == "openai_request":
        bodies = [
            {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]},
            {"model": MODEL_NAME, "messages": [{"role": "system", "content": "s"},
                                               {"role": "user", "content": "你好"}],
             "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "stop": ["\n", "x"], "n": 2,
             "seed": 3, "stream": True, "stream_options": {"include_usage": True},
             "logprobs": True, "top_logprobs": 3, "max_reasoning_tokens": 4},
            {"model": MODEL_NAME, "prompt": "Once", "max_tokens": 3, "echo": True, "logprobs": 2},
            {"model": MODEL_NAME, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
             "knowledge": {"collections": ["c"], "top_k": 3}},
        ]
        for i, b in enumerate(bodies):
            (out / f"seed{i}.json").write_text(json.dumps(b, ensure_ascii=False))
        return
    if target == "chat_template":
        convs = [
            [{"role": "user", "content": "Hi"}],
            [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
             {"role": "assistant", "content": "<think>r</think>a"}, {"role": "user", "content": "q2"}],
            [{"role": "assistant", "content": None, "tool_calls": [{"type": "function",
              "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "{}"}],
        ]
        for i, c in enumerate(convs):
            (out / f"seed{i}.json").write_text(json.dumps(c, ensure_ascii=False))
        return
    if target == "tokenizer":
        for i, f in enumerate(sorted(gold.rglob("*.txt"))[:4]):
            text = f.read_bytes()[:2000]
            (out / f"seed{i}").write_bytes(bytes([min(255, len(text))]) + text + bytes(range(64)))
        return


def build():
    t0 = time.time()
    p = subprocess.run(["cargo", "fuzz", "build", *BUILD_FLAGS], cwd=ROOT, env=env(),
                       capture_output=True, text=True)
    return p, time.time() - t0


def run(tmp: Path, full: bool, targets=None, seconds=None, build_first=True):
    seconds = seconds or (300 if full else 15)
    targets = targets or TARGETS
    rows = []
    if build_first:
        p, build_s = build()
        if p.returncode != 0:
            return [Row("bad input", "cargo fuzz build", "", "builds", p.stderr.strip()[-600:], False)]
        rows.append(Row("bad input", "cargo fuzz build (all targets, no sanitizer, debug assertions)",
                        "", "builds", f"{build_s:.0f} s", True))
    for t in targets:
        work = tmp / "fuzz" / t
        corpus, seed, art = work / "corpus", work / "seeds", work / "artifacts"
        for d in (corpus, art):
            d.mkdir(parents=True, exist_ok=True)
        seeds(t, seed)
        # The binary cargo fuzz built (the same as `cargo fuzz run`, without a second build check).
        exe = FUZZ / "target" / "x86_64-unknown-linux-gnu" / "release" / t
        args = [str(exe), str(corpus), str(seed), f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
                f"-artifact_prefix={art}/", "-print_final_stats=1"]
        if t in ("kb_pdf", "kb_docx"):
            args.append("-max_len=262144")
        t0 = time.time()
        p = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=seconds + 600)
        out = p.stdout + p.stderr
        (work / "log.txt").write_text(out)
        execs = next((l.split(":")[-1].strip() for l in out.splitlines() if "stat::number_of_executed_units" in l), "?")
        cov = next((l.split(":")[-1].strip() for l in out.splitlines() if "stat::peak_rss_mb" in l), "?")
        crashes = sorted(x.name for x in art.iterdir())
        passed = p.returncode == 0 and not crashes
        detail = f"{execs} runs in {time.time() - t0:.0f} s, peak RSS {cov} MB"
        if not passed:
            why = [l for l in out.splitlines() if "==ERROR" in l or "panicked" in l or "SUMMARY" in l or "deadly signal" in l]
            detail += f"; FAILED: {'; '.join(why[:3])[:400]}; input: {', '.join(str(art / c) for c in crashes[:2])}"
        rows.append(Row("bad input", f"cargo fuzz: {t}", f"{seconds} s", "no panic, hang or OOM",
                        detail, passed))
    return rows
