#!/usr/bin/env python3
"""Reference sentence embeddings for an embedding model directory, computed the way
sentence-transformers does, with onnxruntime + tokenizers + numpy only (no torch).

Each input is run on its own (batch 1, no padding), so the reference does not depend on how
edgeseek batches: tokenizer.json with truncation at `max_seq_length`
(sentence_bert_config.json, else `max_position_embeddings`) and no padding; the graph's own
inputs (input_ids, attention_mask, token_type_ids when present); pooling from
1_Pooling/config.json (mean / cls / max; mean when absent) over the attention mask; L2
normalisation.

    embed_reference.py --model DIR [--input FILE.json]   # JSON array of strings; stdin if omitted

prints one JSON object: {"embeddings": [[...], ...], "tokens": [n, ...]}.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def onnx_file(model: Path) -> Path:
    if (model / "model.onnx").is_file():
        return model / "model.onnx"
    if (model / "onnx" / "model.onnx").is_file():
        return model / "onnx" / "model.onnx"
    found = sorted((model / "onnx").glob("model*.onnx"))
    if not found:
        sys.exit(f"{model}: no model.onnx")
    return found[0]


class Reference:
    def __init__(self, model: Path, threads: int = 0):
        cfg = load_json(model / "config.json")
        st = load_json(model / "sentence_bert_config.json") or {}
        self.max_len = st.get("max_seq_length") or cfg["max_position_embeddings"]
        pool = load_json(model / "1_Pooling" / "config.json") or {}
        if pool.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pool.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        else:
            self.pooling = "mean"
        self.tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_len)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(onnx_file(model)), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        outs = [o.name for o in self.sess.get_outputs()]
        self.output = next(n for n in ("sentence_embedding", "last_hidden_state", "token_embeddings") if n in outs)

    def embed_one(self, text: str):
        enc = self.tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        out = self.sess.run([self.output], feed)[0]
        if self.output == "sentence_embedding":
            v = out[0]
        else:
            h = out[0]
            m = mask[0].astype(np.float32)[:, None]
            if self.pooling == "cls":
                v = h[0]
            elif self.pooling == "max":
                v = np.where(m > 0, h, -np.inf).max(axis=0)
            else:
                v = (h * m).sum(axis=0) / max(m.sum(), 1e-9)
        v = v / max(np.linalg.norm(v), 1e-12)
        return v.astype(np.float32), len(enc.ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--input", type=Path)
    args = ap.parse_args()
    texts = json.loads(args.input.read_text(encoding="utf-8") if args.input else sys.stdin.read())
    ref = Reference(args.model)
    vecs, counts = [], []
    for t in texts:
        v, n = ref.embed_one(t)
        vecs.append(v.tolist())
        counts.append(n)
    json.dump({"embeddings": vecs, "tokens": counts}, sys.stdout)


if __name__ == "__main__":
    main()
