#!/usr/bin/env python3
"""Embedding throughput: edgeseek (`edgeseek embed --bench`) against onnxruntime Python on the
same model, the same inputs, the same batch size and the same intra-op thread count, in one
run. Prints a table of embeddings/s and ratios (anchor: onnxruntime Python with the same
length-sorted batching edgeseek does; Python in input order is shown too).

Inputs: a fixed-seed corpus of paragraphs of 100-200 tokens (by the model's tokenizer), about
two thirds English and one third Chinese, assembled from office-policy sentences below.
Both sides include tokenization in the timed region and run one warm-up pass first. `--passes`
rounds each time one pass over all paragraphs per side, interleaved. The table shows the
median and the best pass of each side (on a shared machine the best pass is the one least
disturbed by other load; both ratios are printed).

    bench_embed.py --bin target/release/edgeseek --model DIR [--paragraphs 200]
                   [--batch-size 32] [--threads 2] [--passes 5] [--json]
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

EN = [
    "Employees accrue annual leave from their first day of service.",
    "Leave requests must be submitted through the HR portal at least two weeks in advance.",
    "Managers approve or decline each request within three working days.",
    "Up to five unused days may be carried over into the first quarter of the following year.",
    "Part-time staff accrue leave in proportion to their contracted hours.",
    "Public holidays that fall within a period of leave are not deducted from the allowance.",
    "The VPN client must be updated before it can connect to the corporate network.",
    "Passwords expire every ninety days and must contain at least twelve characters.",
    "If you forget your password, use the self-service portal to reset it with your phone.",
    "Laptops are encrypted with full-disk encryption, and the recovery key is held by IT.",
    "Report a lost or stolen device to the service desk immediately, day or night.",
    "Travel expenses are reimbursed when receipts are uploaded within thirty days of the trip.",
    "Economy class is the default for flights shorter than six hours.",
    "Hotel bookings above the city rate limit need written approval from a director.",
    "Meal allowances differ by country; the finance wiki lists the current daily rates.",
    "The office opens at seven in the morning and closes at eight in the evening.",
    "Visitors must sign in at reception and wear a badge at all times.",
    "Fire drills take place twice a year; follow the wardens to the assembly point.",
    "The printer on the third floor supports double-sided printing and scanning to email.",
    "Meeting rooms can be booked for at most two hours in a row during core hours.",
    "New hires receive their equipment on the first morning from the IT service desk.",
    "Performance reviews are held every spring, with a short check-in in the autumn.",
    "Training budgets are allocated per team and reset at the start of each fiscal year.",
    "Remote work is allowed up to three days a week with the agreement of your manager.",
    "Customer data may only be stored in approved systems located in the European Union.",
    "Suspicious emails should be forwarded to the security team and then deleted.",
    "Software licences are requested through the catalogue and approved by the budget owner.",
    "Backups of shared drives run every night and are kept for thirty-five days.",
    "Parental leave is sixteen weeks at full pay for either parent after six months of service.",
    "Overtime must be agreed in advance and is compensated with time off in lieu.",
]
ZH = [
    "员工自入职第一天起开始累积年假。",
    "请假申请须至少提前两周通过人力资源门户提交。",
    "经理应在三个工作日内批准或拒绝每一份申请。",
    "未休完的年假最多可保留五天，并须在次年第一季度内使用。",
    "兼职员工按合同工时比例累积年假。",
    "休假期间遇到的法定节假日不计入年假天数。",
    "连接公司网络之前必须先更新 VPN 客户端。",
    "密码每九十天过期一次，长度不得少于十二个字符。",
    "忘记密码时，请通过自助服务门户用手机重置。",
    "笔记本电脑已启用全盘加密，恢复密钥由信息技术部保管。",
    "设备丢失或被盗时，请立即向服务台报告。",
    "差旅费用须在出差结束后三十天内上传票据方可报销。",
    "六小时以内的航班默认乘坐经济舱。",
    "超过城市标准的酒店预订需要总监书面批准。",
    "各国的餐补标准不同，最新日标准请查阅财务知识库。",
    "办公室早上七点开门，晚上八点关门。",
    "访客须在前台登记，并全程佩戴访客证。",
    "每年进行两次消防演练，请跟随疏散引导员前往集合点。",
    "三楼的打印机支持双面打印和扫描到邮箱。",
    "会议室在核心工作时间内每次最多可预订两个小时。",
    "新员工入职第一天上午从服务台领取办公设备。",
    "绩效评估每年春季进行，秋季另有一次简短的沟通。",
    "远程办公经经理同意后每周最多三天。",
    "客户数据只能存储在位于欧盟的经批准的系统中。",
    "可疑邮件请转发给安全团队，然后删除。",
]


def corpus(tok: Tokenizer, n: int, seed: int = 0):
    """`n` paragraphs of 100-200 tokens (special tokens included), 2/3 English, 1/3 Chinese."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        pool = ZH if len(out) % 3 == 2 else EN
        target = rng.randint(100, 200)
        sents = []
        while True:
            sents.append(rng.choice(pool))
            text = ("" if pool is ZH else " ").join(sents)
            length = len(tok.encode(text).ids)
            if length >= target:
                break
        if length <= 200:
            out.append(text)
    return out


class PythonSide:
    """The straightforward onnxruntime + tokenizers + numpy implementation."""

    def __init__(self, model: Path, threads: int, max_len: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(model / "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.sess.get_inputs()}
        self.tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_len)
        self.encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def embed(self, texts, batch_size, sort):
        encs = self.encode(texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids)) if sort else range(len(encs))
        order = list(order)
        out = [None] * len(texts)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[r, :n] = encs[i].ids
                mask[r, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.names:
                feed["token_type_ids"] = np.zeros_like(ids)
            h = self.sess.run(None, feed)[0]
            m = mask[:, :, None].astype(np.float32)
            v = (h * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            v /= np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
            for r, i in enumerate(idx):
                out[i] = v[r]
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--paragraphs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    st = json.loads((args.model / "sentence_bert_config.json").read_text())
    max_len = st["max_seq_length"]
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = corpus(tok, args.paragraphs)
    lengths = [len(tok.encode(t).ids) for t in texts]

    side = PythonSide(args.model, args.threads, max_len)
    side.embed(texts, args.batch_size, True)  # warm-up

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
        inputs = f.name

    def rust_pass():
        # One process per round: its own warm-up pass, then one timed pass.
        env = dict(os.environ, EDGESEEK_LOG="off")
        p = subprocess.run([str(args.bin), "embed", "--model", str(args.model), "--input", inputs,
                            "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                            "--bench", "1", "--providers", "cpu"],
                           capture_output=True, text=True, env=env, timeout=3600)
        if p.returncode != 0:
            sys.exit(f"edgeseek embed failed: {p.stderr}")
        return json.loads(p.stdout)["wall_s"][0]

    def py_pass(sort):
        t = time.perf_counter()
        side.embed(texts, args.batch_size, sort)
        return time.perf_counter() - t

    # Rounds interleave the three sides (in rotating order) so that load from other processes
    # on a shared machine hits all of them alike.
    sides = {"edgeseek": rust_pass, "python_sorted": lambda: py_pass(True),
             "python_input_order": lambda: py_pass(False)}
    walls = {k: [] for k in sides}
    names = list(sides)
    try:
        for r in range(args.passes):
            for k in names[r % 3:] + names[:r % 3]:
                walls[k].append(sides[k]())
    finally:
        os.unlink(inputs)
    rate = {k: len(texts) / statistics.median(w) for k, w in walls.items()}
    best = {k: len(texts) / min(w) for k, w in walls.items()}

    result = {
        "model": str(args.model),
        "paragraphs": len(texts),
        "tokens_min_mean_max": [min(lengths), round(sum(lengths) / len(lengths), 1), max(lengths)],
        "batch_size": args.batch_size,
        "threads": args.threads,
        "passes": args.passes,
        "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "median_emb_s": {k: round(v, 2) for k, v in rate.items()},
        "best_emb_s": {k: round(v, 2) for k, v in best.items()},
        "ratio_vs_python_sorted_median": round(rate["edgeseek"] / rate["python_sorted"], 3),
        "ratio_vs_python_sorted_best": round(best["edgeseek"] / best["python_sorted"], 3),
        "walls_s": {k: [round(x, 3) for x in w] for k, w in walls.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(texts)} paragraphs, tokens min/mean/max {result['tokens_min_mean_max']}, "
          f"batch {args.batch_size}, {args.threads} intra-op threads, {args.passes} interleaved passes per side")
    print(f"{'side':<52}{'median emb/s':>13}{'ratio':>7}{'best emb/s':>12}{'ratio':>7}")
    rows = [
        ("onnxruntime Python, length-sorted batches (anchor)", "python_sorted"),
        ("onnxruntime Python, batches in input order", "python_input_order"),
        ("edgeseek embed (length-sorted batches)", "edgeseek"),
    ]
    for name, k in rows:
        print(f"{name:<52}{rate[k]:>13.2f}{rate[k] / rate['python_sorted']:>7.3f}"
              f"{best[k]:>12.2f}{best[k] / best['python_sorted']:>7.3f}")
    print("pass walls (s): " + "; ".join(f"{k} {v}" for k, v in result["walls_s"].items()))


if __name__ == "__main__":
    main()
