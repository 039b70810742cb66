#!/usr/bin/env python3
"""Benchmark an onnxruntime-genai model directory (decode speed, TTFT, batched throughput).

    bench_genai.py --model DIR --threads T [--decode-tokens N] [--prompt-len 512]
                   [--streams 1,2,4,8,16] [--seed 0]

Prints ONE JSON object on stdout (progress goes to stderr):

  single_decode_tok_s   one stream, 16-token prompt, then N greedy tokens; decode time only
                        (the first token, sampled from the prefill logits, is not counted; each
                        timed token is one single-token forward + greedy pick)
  ttft_s_512            Generator creation + append_tokens(prompt of --prompt-len tokens) + first
                        generate_next_token, median of 3
  aggregate_tok_s       {S: tok/s} with genai's batched Generator (batch_size=S, equal-length
                        16-token prompts appended as one [S, 16] array): S*N / decode wall time;
                        aggregate_tok_s_incl_prefill counts the prefill too
  notes                 how it was measured

Only onnxruntime-genai and numpy are needed. Prompt ids are random in [1000, 20000) (fixed seed)
and clipped to the model's vocab; min_length = max_length so EOS never ends a run early
(early_stop_streams reports any that did anyway). Intra-op threads are set with an in-memory
og.Config overlay of decoder.session_options.intra_op_num_threads, so the model directory is
never modified.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime_genai as og


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_model(model_dir, threads):
    cfg = og.Config(model_dir)
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
    }}}}))
    return og.Model(cfg)


def prompt_ids(rng, batch, length, vocab):
    lo, hi = 1000, 20000
    if hi > vocab:  # tiny test models
        lo, hi = min(lo, vocab // 4), vocab
    return rng.integers(lo, hi, size=(batch, length), dtype=np.int64).astype(np.int32)


def new_generator(model, batch, max_length):
    p = og.GeneratorParams(model)
    p.set_search_options(batch_size=batch, max_length=max_length, min_length=max_length,
                         do_sample=False, num_beams=1)
    return og.Generator(model, p)


def run_decode(model, rng, vocab, batch, prompt_len, n_tokens):
    """Returns (prefill_s, decode_s, tokens_generated_per_stream, early_stops)."""
    ids = prompt_ids(rng, batch, prompt_len, vocab)
    t0 = time.perf_counter()
    g = new_generator(model, batch, prompt_len + n_tokens + 1)
    g.append_tokens(ids)
    g.generate_next_token()  # first token: from the prefill logits
    t1 = time.perf_counter()
    done = 0
    for _ in range(n_tokens):
        if g.is_done():
            break
        g.generate_next_token()
        done += 1
    t2 = time.perf_counter()
    early = sum(1 for i in range(batch) if len(g.get_sequence(i)) < prompt_len + done + 1)
    del g
    return t1 - t0, t2 - t1, done, early


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    streams = [int(s) for s in a.streams.split(",") if s.strip()]

    with open(os.path.join(a.model, "genai_config.json")) as f:
        gc = json.load(f)
    vocab = gc["model"]["vocab_size"]
    ctx = gc["model"].get("context_length", 0)
    n = a.decode_tokens
    notes_extra = ""
    if ctx:
        n = min(n, ctx - 17)
        if a.prompt_len + 2 > ctx:
            notes_extra = f" --prompt-len {a.prompt_len} clamped to context_length {ctx} - 2."
            log(f"bench_genai: prompt length {a.prompt_len} clamped to {ctx - 2} (context_length {ctx})")
            a.prompt_len = ctx - 2
    rng = np.random.default_rng(a.seed)

    t = time.perf_counter()
    model = load_model(a.model, a.threads)
    load_s = time.perf_counter() - t
    log(f"bench_genai: loaded {a.model} in {load_s:.1f}s (threads={a.threads})")

    # warm-up (first runs allocate / prepack)
    run_decode(model, rng, vocab, 1, 16, min(n, 16))

    _, dec_s, done, early1 = run_decode(model, rng, vocab, 1, 16, n)
    single = done / dec_s
    log(f"  single stream: {done} tokens in {dec_s:.2f}s = {single:.2f} tok/s")

    ttfts = []
    for _ in range(3):
        pre_s, _, _, _ = run_decode(model, rng, vocab, 1, a.prompt_len, 0)
        ttfts.append(pre_s)
    ttft = statistics.median(ttfts)
    log(f"  ttft({a.prompt_len}): {', '.join(f'{x:.3f}' for x in ttfts)} s -> median {ttft:.3f}s")

    agg, agg_incl, agg_detail, early_total = {}, {}, {}, early1
    for s in streams:
        pre_s, dec_s, done, early = run_decode(model, rng, vocab, s, 16, n)
        agg[str(s)] = round(s * done / dec_s, 3)
        agg_incl[str(s)] = round(s * done / (pre_s + dec_s), 3)
        agg_detail[str(s)] = {"prefill_s": round(pre_s, 4), "decode_s": round(dec_s, 4), "steps": done}
        early_total += early
        log(f"  batch {s:>2}: {s}x{done} tokens in {dec_s:.2f}s decode (+{pre_s:.2f}s prefill) = "
            f"{agg[str(s)]:.2f} tok/s")

    out = {
        "model": os.path.abspath(a.model),
        "threads": a.threads,
        "decode_tokens": n,
        "prompt_len": a.prompt_len,
        "single_decode_tok_s": round(single, 3),
        "ttft_s_512" if a.prompt_len == 512 else f"ttft_s_{a.prompt_len}": round(ttft, 4),
        "ttft_runs_s": [round(x, 4) for x in ttfts],
        "aggregate_tok_s": agg,
        "aggregate_tok_s_incl_prefill": agg_incl,
        "aggregate_detail": agg_detail,
        "early_stop_streams": early_total,
        "load_s": round(load_s, 2),
        "versions": {"onnxruntime_genai": og.__version__, "numpy": np.__version__},
        "notes": ("aggregate uses genai's batched Generator (GeneratorParams batch_size=S, one [S,16] "
                  "append_tokens, lockstep greedy steps), not Python threads; decode-only wall time "
                  "unless *_incl_prefill. KV buffer sized to prompt+N+1 (past_present_share_buffer "
                  "per genai_config). TTFT includes Generator creation (KV allocation). "
                  "intra_op_num_threads via og.Config.overlay, inter_op 1." + notes_extra),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
