"""`edgeseek generate`: parity with onnxruntime-genai, both model layouts, providers,
runtime discovery, sampling, stop strings, reasoning split and every bad-input path."""

import json
import os
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from conftest import FIXTURES, ROOT, error_line, generate_json, run

QWEN_GENAI = FIXTURES / "tiny-qwen2-genai"
QWEN_ONNX = FIXTURES / "tiny-qwen2-onnx"
LLAMA_GENAI = FIXTURES / "tiny-llama-genai"
MAX_NEW = 32
EOS = 1536


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("model", [QWEN_GENAI, LLAMA_GENAI], ids=["qwen2", "llama"])
def test_greedy_ids_equal_onnxruntime_genai(model, cases, genai_reference, tmp_path):
    ref = genai_reference(model, MAX_NEW)
    for case in cases:
        out = generate_json(model, "--greedy", "--max-tokens", str(MAX_NEW),
                            messages=case["messages"], tmp_path=tmp_path)
        want = ref[case["name"]]
        assert out["prompt_tokens"] == len(want["prompt_ids"]), case["name"]
        assert out["token_ids"] == want["token_ids"], case["name"]
        assert out["completion_tokens"] == len(out["token_ids"])


def test_both_layouts_give_the_same_ids(cases, tmp_path):
    for case in cases:
        a = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", str(MAX_NEW), messages=case["messages"], tmp_path=tmp_path)
        b = generate_json(QWEN_ONNX, "--greedy", "--max-tokens", str(MAX_NEW), messages=case["messages"], tmp_path=tmp_path)
        assert a["token_ids"] == b["token_ids"], case["name"]
        assert a["prompt_tokens"] == b["prompt_tokens"]


def test_json_contract_and_text_matches_decode(tmp_path):
    out = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "16", prompt="你好，世界 🌍")
    assert set(out) == {"token_ids", "text", "reasoning", "finish_reason", "provider",
                        "prompt_tokens", "completion_tokens"}
    assert out["provider"] == "cpu"
    assert out["finish_reason"] == "length"
    assert out["completion_tokens"] == 16
    tok = Tokenizer.from_file(str(QWEN_GENAI / "tokenizer.json"))
    full = tok.decode(out["token_ids"], skip_special_tokens=True)
    # The R1 template opens <think>, so the output is reasoning until </think>.
    if "</think>" in full:
        before, after = full.split("</think>", 1)
        assert out["reasoning"] == before and out["text"] == after.lstrip("\n")
    else:
        assert out["reasoning"] == full and out["text"] == ""


def test_stream_pieces_concatenate_to_the_full_answer(tmp_path):
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "讲个故事 📖", "--greedy",
             "--max-tokens", "40", "--stream", "--json"], check=True)
    out = json.loads(p.stdout)
    assert p.stderr == (out["reasoning"] or "") + out["text"]


# ---------------------------------------------------------------- sampling


def test_seed_makes_sampling_reproducible():
    a = generate_json(QWEN_GENAI, "--temperature", "1.0", "--top-p", "1.0", "--seed", "7", "--max-tokens", "24")
    b = generate_json(QWEN_GENAI, "--temperature", "1.0", "--top-p", "1.0", "--seed", "7", "--max-tokens", "24")
    c = generate_json(QWEN_GENAI, "--temperature", "1.0", "--top-p", "1.0", "--seed", "8", "--max-tokens", "24")
    assert a["token_ids"] == b["token_ids"]
    assert a["token_ids"] != c["token_ids"]


def test_sampling_differs_from_greedy_and_top_k_1_is_greedy():
    g = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "24")
    k1 = generate_json(QWEN_GENAI, "--temperature", "1.5", "--top-k", "1", "--seed", "3", "--max-tokens", "24")
    hot = generate_json(QWEN_GENAI, "--temperature", "1.5", "--top-p", "1.0", "--seed", "3", "--max-tokens", "24")
    assert k1["token_ids"] == g["token_ids"]
    assert hot["token_ids"] != g["token_ids"]


def test_logit_bias_forces_eos_and_tokens():
    eos = generate_json(QWEN_GENAI, "--greedy", "--logit-bias", f"{EOS}=100", "--max-tokens", "8")
    assert eos["token_ids"] == [] and eos["finish_reason"] == "stop"
    forced = generate_json(QWEN_GENAI, "--greedy", "--logit-bias", "72=100", "--max-tokens", "5")
    assert forced["token_ids"] == [72] * 5


def test_repetition_penalty_changes_output():
    g = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "32")
    r = generate_json(QWEN_GENAI, "--greedy", "--repetition-penalty", "5.0", "--max-tokens", "32")
    assert g["token_ids"] != r["token_ids"]


def test_stop_string_across_token_boundaries():
    tok = Tokenizer.from_file(str(QWEN_GENAI / "tokenizer.json"))
    base = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "32")
    full = (base["reasoning"] or "") + base["text"]
    # A stop string that starts in one token and ends in the next: 1 char before a token
    # boundary, 2 after.
    bounds = []
    for i in range(1, len(base["token_ids"])):
        prefix = tok.decode(base["token_ids"][:i])
        if "\ufffd" not in prefix and full.startswith(prefix):
            bounds.append(len(prefix))
    b = next(b for b in bounds if 1 <= b <= len(full) - 2 and "\ufffd" not in full[b - 1:b + 2]
             and full.index(full[b - 1:b + 2]) == b - 1)
    stop = full[b - 1:b + 2]
    out = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "32", "--stop", stop)
    assert out["finish_reason"] == "stop"
    got = (out["reasoning"] or "") + out["text"]
    assert got == full[: full.index(stop)]
    assert stop not in got


# ---------------------------------------------------------------- reasoning


def test_reasoning_split_with_forced_think_and_budget():
    tok = Tokenizer.from_file(str(QWEN_GENAI / "tokenizer.json"))
    forced = tok.encode("\n</think>\n\n", add_special_tokens=False).ids
    out = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "30", "--max-reasoning-tokens", "6")
    ids = out["token_ids"]
    assert ids[6:6 + len(forced)] == forced
    before, after = tok.decode(ids, skip_special_tokens=True).split("</think>", 1)
    assert out["reasoning"] == before
    assert out["text"] == after.lstrip("\n") != ""


def test_multi_turn_messages_file(tmp_path, cases):
    multi = next(c for c in cases if c["name"] == "multi_turn_with_think")
    out = generate_json(QWEN_GENAI, "--greedy", "--max-tokens", "4", messages=multi["messages"], tmp_path=tmp_path)
    assert out["completion_tokens"] == 4


# ---------------------------------------------------------------- providers


def test_strict_cuda_fails_with_the_cause():
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--json",
             "--providers", "cuda,cpu", "--provider-policy", "strict"])
    assert p.returncode == 2
    line = error_line(p)
    assert "cuda" in line.lower()
    assert "CUDA execution provider is not enabled in this build" in line
    assert p.stdout == ""


def test_fallback_uses_cpu_and_says_why():
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--json", "--max-tokens", "2",
             "--providers", "tensorrt,cuda,cpu", "--provider-policy", "fallback"],
            env_extra={"EDGESEEK_LOG": "warn"}, check=True)
    assert json.loads(p.stdout)["provider"] == "cpu"
    assert "tensorrt" in p.stderr and "cuda" in p.stderr and "not enabled" in p.stderr


def test_strict_cpu_works():
    out = generate_json(QWEN_GENAI, "--providers", "cpu", "--provider-policy", "strict", "--max-tokens", "2")
    assert out["provider"] == "cpu"


def test_provider_policy_from_config(tmp_path):
    cfg = tmp_path / "edgeseek.toml"
    cfg.write_text('[engine]\nproviders = ["cuda"]\nprovider_policy = "strict"\n')
    p = run(["generate", "--config", str(cfg), "--model", str(QWEN_GENAI), "--prompt", "hi"])
    assert p.returncode == 2 and "CUDA execution provider is not enabled" in error_line(p)


# ---------------------------------------------------------------- runtime discovery


def test_missing_library_is_one_clear_line(tmp_path):
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi"], cwd=tmp_path,
            env_extra={"ORT_DYLIB_PATH": str(tmp_path / "nope.so")})
    assert p.returncode == 2
    line = error_line(p)
    assert "1.31" in line                       # the version needed
    assert str(tmp_path / "nope.so") in line    # the paths tried
    assert "/usr/lib/edgeseek" in line and ".runtime" in line
    assert "panicked" not in p.stderr


def test_too_old_library_is_refused(tmp_path):
    old = os.environ.get("EDGESEEK_OLD_ORT")
    assert old, "run through ./scripts/test, which provides ONNX Runtime 1.30 in EDGESEEK_OLD_ORT"
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi"], cwd=tmp_path,
            env_extra={"ORT_DYLIB_PATH": old})
    assert p.returncode == 2
    line = error_line(p)
    assert "1.30.0 is too old" in line and "1.31" in line


def test_config_runtime_library_is_used(tmp_path):
    lib = ROOT / ".runtime" / "libonnxruntime.so.1.31.1"
    cfg = tmp_path / "edgeseek.toml"
    cfg.write_text(f'[runtime]\nlibrary = "{lib}"\n[engine]\nproviders = ["cpu"]\n')
    p = run(["generate", "--config", str(cfg), "--model", str(QWEN_GENAI), "--prompt", "hi", "--json",
             "--max-tokens", "2"], cwd=tmp_path, check=True)
    assert json.loads(p.stdout)["completion_tokens"] == 2


def test_bad_config_names_file_and_key(tmp_path):
    cfg = tmp_path / "edgeseek.toml"
    cfg.write_text('[engine]\nprovider_policy = "sometimes"\n')
    p = run(["generate", "--config", str(cfg), "--model", str(QWEN_GENAI), "--prompt", "hi"])
    assert p.returncode == 2
    line = error_line(p)
    assert str(cfg) in line and "sometimes" in line


# ---------------------------------------------------------------- broken model directories


def copy_model(tmp_path, src=QWEN_GENAI):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_missing_tokenizer_names_the_file(tmp_path):
    m = copy_model(tmp_path)
    (m / "tokenizer.json").unlink()
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2 and str(m / "tokenizer.json") in error_line(p)


def test_corrupt_onnx_names_the_file(tmp_path):
    m = copy_model(tmp_path)
    (m / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2
    assert "model.onnx" in error_line(p)


def test_corrupt_onnx_community_names_the_file(tmp_path):
    m = copy_model(tmp_path, QWEN_ONNX)
    (m / "onnx" / "model.onnx").write_bytes(b"not a protobuf")
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2 and "onnx/model.onnx" in error_line(p)


def test_tokenizer_larger_than_logits_is_refused(tmp_path):
    m = copy_model(tmp_path)
    tj = json.loads((m / "tokenizer.json").read_text(encoding="utf-8"))
    for i in range(40):
        tj["added_tokens"].append({"id": 1552 + i, "content": f"<extra_{i}>", "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (m / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2
    line = error_line(p)
    assert "tokenizer.json" in line and "1592" in line and "1552" in line


def test_not_a_model_directory(tmp_path):
    p = run(["generate", "--model", str(tmp_path), "--prompt", "hi"])
    assert p.returncode == 2 and "not a model directory" in error_line(p)


def test_missing_model_file_named(tmp_path):
    m = copy_model(tmp_path, QWEN_ONNX)
    shutil.rmtree(m / "onnx")
    (m / "onnx").mkdir()
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2 and "onnx/model.onnx" in error_line(p)


def test_graph_that_disagrees_with_config_is_refused(tmp_path):
    m = copy_model(tmp_path)
    cfg = json.loads((m / "genai_config.json").read_text())
    cfg["model"]["decoder"]["num_hidden_layers"] = 3
    (m / "genai_config.json").write_text(json.dumps(cfg))
    p = run(["generate", "--model", str(m), "--prompt", "hi"])
    assert p.returncode == 2
    line = error_line(p)
    assert "model.onnx" in line and "3 layers" in line


# ---------------------------------------------------------------- bad requests


def test_prompt_over_context_is_an_error():
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--max-tokens", "600"])
    assert p.returncode == 2
    assert "exceeds the model's context of 512 tokens" in error_line(p)


def test_long_prompt_over_context_is_an_error():
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "word " * 2000])
    assert p.returncode == 2 and "context" in error_line(p)


def test_messages_file_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    p = run(["generate", "--model", str(QWEN_GENAI), "--messages", str(bad)])
    assert p.returncode == 2 and str(bad) in error_line(p)
    bad.write_text('[{"role": "wizard", "content": "x"}]')
    p = run(["generate", "--model", str(QWEN_GENAI), "--messages", str(bad)])
    assert p.returncode == 2 and "wizard" in error_line(p)
    bad.write_text("[]")
    p = run(["generate", "--model", str(QWEN_GENAI), "--messages", str(bad)])
    assert p.returncode == 2 and "no messages" in error_line(p)


def test_invalid_sampling_values_are_rejected():
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--temperature=-1"])
    assert p.returncode == 2 and "temperature" in error_line(p)
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--logit-bias", "999999=5"])
    assert p.returncode == 2 and "logit_bias" in error_line(p)
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--logit-bias", "nonsense"])
    assert p.returncode == 2 and "--logit-bias" in error_line(p)


def test_prompt_and_messages_are_exclusive(tmp_path):
    f = tmp_path / "m.json"
    f.write_text('[{"role":"user","content":"x"}]')
    p = run(["generate", "--model", str(QWEN_GENAI), "--prompt", "hi", "--messages", str(f)])
    assert p.returncode == 2


def test_concurrency_runs_copies_through_the_scheduler():
    model = FIXTURES / "tiny-qwen2-genai"
    single = generate_json(model, "--greedy", "--max-tokens", "12")
    p = run(["generate", "--model", str(model), "--prompt", "Hello", "--json", "--greedy",
             "--max-tokens", "12", "--concurrency", "3"], check=True)
    out = json.loads(p.stdout)
    assert set(out) == {"results", "provider", "wall_s", "aggregate_tok_s"}
    assert out["provider"] == "cpu" and out["wall_s"] > 0 and out["aggregate_tok_s"] > 0
    assert len(out["results"]) == 3
    for r in out["results"]:
        assert r == single


def test_bench_prints_one_json_object_with_the_genai_keys():
    p = run(["bench", "--model", str(FIXTURES / "tiny-qwen2-genai"), "--threads", "1",
             "--decode-tokens", "8", "--prompt-len", "64", "--streams", "1,3"], check=True)
    out = json.loads(p.stdout)
    for key in ("single_decode_tok_s", "ttft_s_64", "aggregate_tok_s", "aggregate_tok_s_incl_prefill"):
        assert key in out, key
    assert set(out["aggregate_tok_s"]) == {"1", "3"}
    assert out["early_stop_streams"] == 0
