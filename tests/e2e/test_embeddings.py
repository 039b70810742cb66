"""End-to-end tests of `POST /v1/embeddings` and `edgeseek embed`: the real binary with the
fixture chat model and the all-MiniLM-L6-v2 embedding model that `scripts/setup` assembles in
./.runtime/models/. Vectors are checked against `scripts/embed_reference.py` (onnxruntime +
tokenizers + numpy, one input at a time, no padding) computed here on the same inputs."""

import base64
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT, error_line, run
from test_api import MODEL, Server, chat, err, post

EMBED = "all-minilm-l6-v2"
EMBED_DIR = ROOT / ".runtime" / "models" / EMBED
PATH = "/v1/embeddings"

LONG = (
    "Employees who have completed five years of continuous service are entitled to twenty-five "
    "days of paid annual leave per calendar year. Leave must be requested through the HR portal "
    "at least two weeks in advance, and managers should approve or decline each request within "
    "three working days. Up to five unused days may be carried over into the first quarter of "
    "the following year; any days beyond that lapse unless the carry-over was agreed in writing "
    "because of operational needs. Part-time staff accrue leave in proportion to their "
    "contracted hours. Public holidays that fall within a period of leave are not deducted from "
    "the allowance, and sick days during leave can be reclaimed with a doctor's note."
)
INPUTS = [
    "How many days of annual leave do I get?",
    "Reset the VPN password from the self-service portal.",
    "年假有多少天？",
    "VPN 密码怎么重置",
    LONG,
    "a",
    "?!... --- ;;; (!!!)",
    "Café, résumé, naïve — déjà vu.",
    "The printer on floor 3 is out of toner again.",
    "员工连续工作满五年后，每年可享受二十五天带薪年假。",
]
TOO_LONG = "word " * 300


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def wait_embeddings(server, key, timeout=60):
    """The embedding model loads on its own thread; wait until /v1/models lists it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = server.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        if r.status_code == 200 and EMBED in [m["id"] for m in r.json()["data"]]:
            return
        time.sleep(0.1)
    raise AssertionError(f"embedding model not ready: {server.logs()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A small batch size so the ten inputs span several length-sorted batches.
    s = Server(tmp_path_factory.mktemp("embed") / "state",
               config=f'[embeddings]\nmodel = "{EMBED_DIR}"\nbatch_size = 4\n')
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server):
    k = server.key("embed", "embeddings")
    wait_embeddings(server, k)
    return k


@pytest.fixture(scope="module")
def reference():
    """Reference vectors and token counts for INPUTS, computed now by the committed script."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "embed_reference.py"),
                        "--model", str(EMBED_DIR)],
                       input=json.dumps(INPUTS), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def embed(server, key, body):
    return post(server, key, json.dumps(body), path=PATH)


def test_vectors_match_the_reference(server, key, reference):
    r = embed(server, key, {"model": EMBED, "input": INPUTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED
    assert [d["index"] for d in body["data"]] == list(range(len(INPUTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    for i, (d, ref) in enumerate(zip(body["data"], reference["embeddings"])):
        v = d["embedding"]
        assert len(v) == 384
        assert abs(np.linalg.norm(v) - 1.0) < 1e-4, i
        assert cosine(v, ref) >= 0.999, (i, INPUTS[i][:40], cosine(v, ref))
    # usage counts the tokens the model read, [CLS] and [SEP] included.
    assert body["usage"]["prompt_tokens"] == sum(reference["tokens"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_different_texts_get_different_vectors(server, key):
    r = embed(server, key, {"model": EMBED, "input": [INPUTS[0], INPUTS[8]]}).json()
    a, b = (d["embedding"] for d in r["data"])
    assert cosine(a, b) < 0.9


def test_base64_decodes_to_the_float_vectors(server, key):
    floats = embed(server, key, {"model": EMBED, "input": INPUTS[:4]}).json()
    b64 = embed(server, key, {"model": EMBED, "input": INPUTS[:4],
                              "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        # The JSON floats are the shortest text of the same f32 values: exactly equal.
        assert np.array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
    assert b64["usage"] == floats["usage"]


def test_openai_sdk(server, key, reference):
    client = server.client(key)
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model=EMBED, input=INPUTS)
    assert len(r.data) == len(INPUTS)
    for d, ref in zip(r.data, reference["embeddings"]):
        assert cosine(d.embedding, ref) >= 0.999
    one = client.embeddings.create(model=EMBED, input=INPUTS[0], encoding_format="float",
                                   dimensions=384)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert cosine(one.data[0].embedding, reference["embeddings"][0]) >= 0.999
    assert r.usage.prompt_tokens == sum(reference["tokens"])


def test_concurrent_requests(server, key, reference):
    """Requests arriving together share batches; each still gets its own input's vector."""
    def one(i):
        r = embed(server, key, {"model": EMBED, "input": [INPUTS[i]]})
        assert r.status_code == 200, r.text
        return r.json()["data"][0]["embedding"]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(len(INPUTS))))
    for i, v in enumerate(got):
        assert cosine(v, reference["embeddings"][i]) >= 0.999, i


def test_scopes(server, key):
    chat_only = server.key("chat-only", "chat")
    e = err(embed(server, chat_only, {"model": EMBED, "input": "hi"}), 403)
    assert e["code"] == "insufficient_scope" and "embeddings" in e["message"]
    # An embeddings key cannot chat.
    e = err(post(server, key, json.dumps({"model": MODEL,
                                          "messages": [{"role": "user", "content": "hi"}]})), 403)
    assert "chat" in e["message"]
    err(server.http.post(PATH, json={"model": EMBED, "input": "hi"}), 401)


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": EMBED, "input": ""}, 400, "input", "invalid_value"),
    ({"model": EMBED, "input": []}, 400, "input", "invalid_value"),
    ({"model": EMBED, "input": ["ok", ""]}, 400, "input[1]", "invalid_value"),
    ({"model": EMBED, "input": ["x"] * 2049}, 400, "input", "invalid_value"),
    ({"model": EMBED, "input": ["short", "fine", TOO_LONG]}, 400, "input[2]",
     "context_length_exceeded"),
    ({"model": EMBED, "input": TOO_LONG}, 400, "input", "context_length_exceeded"),
    ({"model": EMBED, "input": [101, 7592, 102]}, 400, "input", "invalid_value"),
    ({"model": EMBED, "input": [[101, 7592, 102]]}, 400, "input", "invalid_value"),
    ({"model": EMBED, "input": "hi", "truncate": True}, 400, "truncate", "unknown_parameter"),
    ({"model": EMBED, "input": "hi", "dimensions": 128}, 400, "dimensions", "invalid_value"),
    ({"model": EMBED, "input": "hi", "encoding_format": "hex"}, 400, "encoding_format",
     "invalid_value"),
    ({"input": "hi"}, 400, "model", "invalid_value"),
    ({"model": "text-embedding-3-small", "input": "hi"}, 404, "model", "model_not_found"),
    ({"model": MODEL, "input": "hi"}, 404, "model", "model_not_found"),
])
def test_errors(server, key, body, status, param, code):
    e = err(embed(server, key, body), status)
    assert e["param"] == param, e
    assert e["code"] == code, e


def test_too_long_names_the_index_and_limit(server, key):
    e = err(embed(server, key, {"model": EMBED, "input": ["short", TOO_LONG]}), 400)
    assert "input[1]" in e["message"] and "256" in e["message"], e


def test_models_list_both(server, key):
    data = server.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [m["id"] for m in data] == [MODEL, EMBED]
    r = server.http.get(f"/v1/models/{EMBED}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["id"] == EMBED


def test_cli_matches_the_reference(tmp_path, reference):
    f = tmp_path / "inputs.json"
    f.write_text(json.dumps(INPUTS, ensure_ascii=False), encoding="utf-8")
    p = run(["embed", "--model", str(EMBED_DIR), "--input", str(f), "--batch-size", "3"],
            check=True)
    out = json.loads(p.stdout)
    assert out["model"] == EMBED and out["dim"] == 384
    assert out["model_id"].startswith(EMBED + "@")
    assert out["tokens"] == sum(reference["tokens"])
    for i, (v, ref) in enumerate(zip(out["embeddings"], reference["embeddings"])):
        assert cosine(v, ref) >= 0.999, i


def test_cli_rejects_long_input_on_request(tmp_path):
    p = run(["embed", "--model", str(EMBED_DIR), "--reject-long", "--text", "ok",
             "--text", TOO_LONG])
    assert p.returncode == 2
    assert "input 1 has" in p.stderr and "256" in p.stderr, p.stderr
    # Without the flag the long input is truncated to the model's limit.
    p = run(["embed", "--model", str(EMBED_DIR), "--text", TOO_LONG], check=True)
    assert json.loads(p.stdout)["tokens"] == 256


@pytest.mark.parametrize("config, cause", [
    ("[embeddings]\nenabled = false\n", "disabled"),
    ('[embeddings]\nmodel = "/nonexistent/embedding-model"\n', "/nonexistent/embedding-model"),
])
def test_serve_without_an_embedding_model(tmp_path, config, cause):
    """Chat keeps working; /v1/embeddings answers 503 with the cause."""
    s = Server(tmp_path / "state", config=config)
    try:
        s.wait_ready()
        k = s.key("both", "chat,embeddings")
        e = err(embed(s, k, {"model": EMBED, "input": "hi"}), 503)
        assert cause in e["message"], e
        assert chat(s.client(k), max_tokens=4).choices[0].message is not None
        ids = [m["id"] for m in s.http.get(
            "/v1/models", headers={"Authorization": f"Bearer {k}"}).json()["data"]]
        assert ids == [MODEL]
    finally:
        s.stop()


def broken_copy(tmp_path, onnx=None, drop=()):
    """A copy of the embedding model directory with `model.onnx` replaced or files removed."""
    d = tmp_path / "broken-embed"
    shutil.copytree(EMBED_DIR, d)
    for name in drop:
        (d / name).unlink()
    if onnx is not None:
        (d / "model.onnx").unlink()
        if isinstance(onnx, bytes):
            (d / "model.onnx").write_bytes(onnx)
        else:
            shutil.copy(onnx, d / "model.onnx")
    return d


@pytest.mark.parametrize("case", ["corrupt-onnx", "decoder-graph", "no-tokenizer", "no-config"])
def test_broken_model_directory_names_the_file(tmp_path, case):
    d = {
        "corrupt-onnx": lambda: broken_copy(tmp_path, onnx=b"not an onnx file"),
        # A chat model's graph: inputs an encoder does not have.
        "decoder-graph": lambda: broken_copy(
            tmp_path, onnx=ROOT / "tests" / "fixtures" / "tiny-qwen2-onnx" / "onnx" / "model.onnx"),
        "no-tokenizer": lambda: broken_copy(tmp_path, drop=["tokenizer.json"]),
        "no-config": lambda: broken_copy(tmp_path, drop=["config.json"]),
    }[case]()
    p = run(["embed", "--model", str(d), "--text", "hello"])
    assert p.returncode == 2, p.stderr
    line = error_line(p)
    expect = {"corrupt-onnx": "model.onnx", "decoder-graph": "model.onnx",
              "no-tokenizer": "tokenizer.json", "no-config": "config.json"}[case]
    assert str(d / expect) in line, line
    if case == "decoder-graph":
        assert "is not one of input_ids, attention_mask, token_type_ids" in line, line
