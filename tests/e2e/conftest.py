"""Shared helpers for the end-to-end tests: they run the real `edgeseek` binary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CASES = ROOT / "tests" / "parity" / "cases.json"
BIN = Path(os.environ.get("EDGESEEK_BIN", ROOT / "target" / "debug" / "edgeseek"))


def run(args, cwd=ROOT, env_extra=None, check=False, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["EDGESEEK_LOG"] = env.get("EDGESEEK_TEST_LOG", "off")
    if env_extra:
        env.update(env_extra)
    p = subprocess.run([str(BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"edgeseek {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def generate_json(model, *extra, messages=None, prompt=None, tmp_path=None, **kw):
    args = ["generate", "--model", str(model), "--json"]
    if messages is not None:
        f = tmp_path / "messages.json"
        f.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
        args += ["--messages", str(f)]
    else:
        args += ["--prompt", prompt if prompt is not None else "Hello"]
    p = run(args + list(extra), check=True, **kw)
    return json.loads(p.stdout)


def error_line(p):
    """The one line the CLI prints on failure."""
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line, got: {p.stderr!r}"
    assert lines[0].startswith("edgeseek: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def cases():
    return json.loads(CASES.read_text(encoding="utf-8"))


_refs = {}


@pytest.fixture(scope="session")
def genai_reference():
    """Greedy ids from onnxruntime-genai for a fixture model (computed once per model)."""

    def get(model_dir, max_new_tokens=32):
        key = (str(model_dir), max_new_tokens)
        if key not in _refs:
            p = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "fixtures" / "genai_reference.py"),
                 "--model", str(model_dir), "--cases", str(CASES), "--max-new-tokens", str(max_new_tokens)],
                capture_output=True, text=True, check=True, timeout=600,
            )
            _refs[key] = json.loads(p.stdout)
        return _refs[key]

    return get


def openssl(*args, cwd):
    """Run the openssl CLI (installed by scripts/test) for test PKI material."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)
