#!/usr/bin/env python3
"""Helper for scripts/make-bench-model (runs in the builder venv).

Subcommands:

  make-hf   write a Hugging Face Qwen2ForCausalLM checkpoint with the exact shape of
            DeepSeek-R1-Distill-Qwen-1.5B and RANDOM weights (fixed seed), as bf16 safetensors
            shards written one layer at a time (peak RAM ~ one embedding matrix, not the model),
            plus the tokenizer files of a donor directory (the tiny test fixture).
  finalize  patch genai_config.json (context length cap, real R1-Distill special token ids)
            and write bench_meta.json: bytes read per single-token decode step, computed from
            the ONNX graph's initializers (dims x dtype size; external data is never loaded).

Weights are meaningless; the model exists to measure speed/memory of the real shape.
All diagnostics go to stderr.
"""

import argparse
import json
import os
import shutil
import sys
import time

# The real deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B config.json (architecture fields).
R1_DISTILL_QWEN_1_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151646,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 131072,
    "max_window_layers": 21,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
PAD_TOKEN_ID = 151643  # R1-Distill generation uses <｜end▁of▁sentence｜> as pad too
THINK_ID, END_THINK_ID = 151648, 151649  # <think>, </think> in the R1-Distill tokenizer


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# make-hf
# ---------------------------------------------------------------------------
def cmd_make_hf(a):
    import torch
    from safetensors.torch import save_file

    cfg = dict(R1_DISTILL_QWEN_1_5B)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                   "do_sample": False}, f, indent=2)

    H = cfg["hidden_size"]
    I = cfg["intermediate_size"]
    V = cfg["vocab_size"]
    L = cfg["num_hidden_layers"]
    hd = H // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    std = a.std

    gen = torch.Generator().manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    def randn(*shape):
        # generate in fp32 (deterministic for a given seed), keep bf16
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * std).to(torch.bfloat16)

    def ones(n):
        # RMSNorm gains ~1 with a little jitter so they are not all-identical
        return (1.0 + 0.01 * torch.randn(n, generator=gen, dtype=torch.float32)).to(torch.bfloat16)

    weight_map = {}
    shards = []
    total_params = 0

    def save(tensors, fname):
        nonlocal total_params
        save_file(tensors, os.path.join(a.out, fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total_params += v.numel()
        shards.append(fname)

    t0 = time.time()
    n_shards = L + 2
    # shard 1: embeddings
    save({"model.embed_tokens.weight": randn(V, H)}, f"model-00001-of-{n_shards:05d}.safetensors")
    for i in range(L):
        p = f"model.layers.{i}."
        t = {
            p + "input_layernorm.weight": ones(H),
            p + "post_attention_layernorm.weight": ones(H),
            p + "self_attn.q_proj.weight": randn(H, H),
            p + "self_attn.q_proj.bias": randn(H),
            p + "self_attn.k_proj.weight": randn(kv, H),
            p + "self_attn.k_proj.bias": randn(kv),
            p + "self_attn.v_proj.weight": randn(kv, H),
            p + "self_attn.v_proj.bias": randn(kv),
            p + "self_attn.o_proj.weight": randn(H, H),
            p + "mlp.gate_proj.weight": randn(I, H),
            p + "mlp.up_proj.weight": randn(I, H),
            p + "mlp.down_proj.weight": randn(H, I),
        }
        save(t, f"model-{i + 2:05d}-of-{n_shards:05d}.safetensors")
    save({"model.norm.weight": ones(H), "lm_head.weight": randn(V, H)},
         f"model-{n_shards:05d}-of-{n_shards:05d}.safetensors")
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_params * 2}, "weight_map": weight_map}, f, indent=2)
    log(f"      {total_params:,} parameters (bf16, seed {a.seed}, std {std}) in {len(shards)} shards, "
        f"{time.time() - t0:.0f}s")

    # Tokenizer: the donor's (tiny, ~1.5k ids). genai only needs *a* tokenizer to create the
    # model; benchmarks feed token ids directly, so the 151936-row vocab stays fully usable.
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = os.path.join(a.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.out, name))


# ---------------------------------------------------------------------------
# finalize
# ---------------------------------------------------------------------------
def decode_step_bytes(model_path):
    """Bytes of initializer data one single-token (decode) forward pass reads.

    Every initializer counts in full, except gather tables of which a decode step reads one row:
    the data input of Gather (token embedding) and GroupQueryAttention's cos/sin caches (one
    position). Sizes come from dims x element size (int4/uint4 packed two per byte), so the
    external data file is never read.
    """
    import onnx
    from onnx import helper

    m = onnx.load(model_path, load_external_data=False)
    g = m.graph
    inits = {t.name: t for t in g.initializer}

    def nbytes(t, dims=None):
        dims = list(t.dims) if dims is None else dims
        n = 1
        for d in dims:
            n *= d
        if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return (n + 1) // 2
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize

    # how each initializer is consumed
    row_only = set()
    full = set()
    for node in g.node:
        for idx, inp in enumerate(node.input):
            if inp not in inits:
                continue
            if node.op_type in ("Gather", "GatherBlockQuantized") and idx == 0:
                row_only.add(inp)
            elif node.op_type == "GroupQueryAttention" and idx in (7, 8):  # cos_cache, sin_cache
                row_only.add(inp)
            else:
                full.add(inp)
    # (initializers inside subgraphs/unused ones are not read per step)
    row_only -= full

    per_step = 0
    total = 0
    by_kind = {}
    for name, t in inits.items():
        size = nbytes(t)
        total += size
        if name in full:
            step = size
        elif name in row_only:
            dims = list(t.dims)
            step = nbytes(t, [1] + dims[1:]) if dims else size
        else:
            step = 0
        per_step += step
        node_kind = ("lm_head" if "lm_head" in name else
                     "embed_row" if "embed" in name else
                     "rotary_row" if ("cos_cache" in name or "sin_cache" in name) else
                     "matmul_int4_weights" if name.endswith(("_Q4", ".qweight")) else
                     "matmul_scales" if name.endswith(("_scales", ".scales")) else
                     "matmul_zero_points" if name.endswith(("_zero_points", ".qzeros")) else
                     "norms_biases_other")
        by_kind[node_kind] = by_kind.get(node_kind, 0) + step
    return per_step, total, by_kind, len(inits)


def check_loads(model_dir):
    """Load with onnxruntime-genai, run an 8-token prefill + 4 greedy steps on ids spread over
    the whole vocab; the logits must be finite and not constant (int4 of sane weights)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(model_dir)
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=16, do_sample=False)
    g = og.Generator(model, p)
    g.append_tokens(np.array([[151646, 1000, 20000, 70000, 100000, 140000, 151000, 5]], dtype=np.int32))
    logits = np.asarray(g.get_logits(), dtype=np.float32).reshape(-1)
    for _ in range(4):
        g.generate_next_token()
    seq = [int(x) for x in g.get_sequence(0)]
    if not np.isfinite(logits).all() or float(logits.std()) == 0.0:
        raise SystemExit(f"error: bad logits from the built model (std {logits.std()}, "
                         f"finite {np.isfinite(logits).all()})")
    res = {"logits_std": round(float(logits.std()), 4), "logits_absmax": round(float(np.abs(logits).max()), 4),
           "greedy_tokens": seq[8:]}
    log(f"      genai load + generate ok: {res}")
    return res


def cmd_finalize(a):
    gc_path = os.path.join(a.model, "genai_config.json")
    with open(gc_path) as f:
        gc = json.load(f)
    with open(os.path.join(a.hf, "config.json")) as f:
        hf = json.load(f)
    m = gc["model"]
    m["bos_token_id"] = hf["bos_token_id"]
    m["eos_token_id"] = hf["eos_token_id"]
    m["pad_token_id"] = PAD_TOKEN_ID
    # the builder takes the reasoning markers from the (donor) tokenizer; use R1-Distill's ids
    for key, real in (("bor_token_id", THINK_ID), ("eor_token_id", END_THINK_ID)):
        if key in m:
            m[key] = real
    m["context_length"] = a.context_length
    gc["search"]["max_length"] = a.context_length
    with open(gc_path, "w") as f:
        json.dump(gc, f, indent=4)
        f.write("\n")

    # Keep the donor tokenizer exactly (the builder re-saves it via transformers).
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = os.path.join(a.hf, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.model, name))

    sanity = check_loads(a.model)

    onnx_path = os.path.join(a.model, m["decoder"]["filename"])
    per_step, init_total, by_kind, n_inits = decode_step_bytes(onnx_path)
    files = [onnx_path, onnx_path + ".data"]
    total_file = sum(os.path.getsize(p) for p in files if os.path.exists(p))
    meta = {
        "weight_bytes_per_decode_step": per_step,
        "total_file_bytes": total_file,
        "initializer_bytes_total": init_total,
        "decode_step_bytes_by_kind": by_kind,
        "num_initializers": n_inits,
        "config": hf,
        "sanity_check": sanity,
        "genai_context_length": a.context_length,
        "weights": f"random normal(0, {a.std}) bf16, seed {a.seed}; RMSNorm gains 1 + N(0, 0.01)",
        "builder": a.builder_args,
        "tokenizer": "tests/fixtures/tiny-qwen2-genai (1552 ids); benchmarks feed ids < vocab_size directly",
        "notes": ("weight_bytes_per_decode_step = sum of initializer bytes one single-token forward "
                  "reads: all MatMulNBits weights/scales(/zero points), norms, biases, lm_head, plus "
                  "ONE row of each gather table (token embedding, rotary cos/sin caches). KV cache "
                  "and activations are not included."),
    }
    with open(os.path.join(a.model, "bench_meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    log(f"      weight bytes per decode step: {per_step:,} ({per_step / 2**20:.1f} MiB); "
        f"model files: {total_file:,} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-hf")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--std", type=float, default=0.02)
    p.add_argument("--tokenizer-from", required=True)
    p.set_defaults(fn=cmd_make_hf)
    p = sub.add_parser("finalize")
    p.add_argument("--model", required=True)
    p.add_argument("--hf", required=True)
    p.add_argument("--context-length", type=int, default=4096)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--std", type=float, default=0.02)
    p.add_argument("--builder-args", default="")
    p.set_defaults(fn=cmd_finalize)
    p = sub.add_parser("step-bytes", help="print the weight bytes one decode step reads")
    p.add_argument("model_dir")
    p.set_defaults(fn=lambda a: print(decode_step_bytes(os.path.join(a.model_dir, "model.onnx"))[0]))
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
