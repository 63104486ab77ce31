"""Benchmark: what one training step costs, and how many Conv2Item training queries a minute buys, for today's
objectives and the cheaper CPU settings (LoRA on the top layers, a cached item table, a bf16 frozen base).

    python bench/train_step.py --out bench/results-train-step.json        # needs data/instructions + models/base

Every row runs the pipeline's own objective (``pipeline.training.objectives``) and optimizer step on real instruction rows
(ReDial + INSPIRED Conv2Item/Conv2Conv pairs, DM and response targets) with the small model: 1 untimed step, then
the median of ``--steps`` timed steps. Timing only: the mined negatives are random catalogue items and the item
table is random unit vectors of the catalogue's real shape (what a step costs does not depend on which items they
are). ``--profile`` adds torch.profiler's top operators for rows 1, 4, 6 and 7. Ratios are against
row 1 (today's warm-up), measured in the same run; compare ratios across machines, never seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.hardware import cpu_flags, fast_bfloat16
from pipeline.model.lm import LoraSettings, RetrievableLM
from pipeline.model.settings import Lengths
from pipeline.training.catalogue import catalogue_tasks
from pipeline.training.loop import TrainConfig, TrainLoop
from pipeline.training.objectives import FinetuneObjective, WarmupObjective, finetune_tasks, warmup_tasks

LENGTHS = Lengths(query=96, document=64, prompt=384, target=96)  # the small profile's
DATASETS = ("redial", "inspired")


def load_rows(negatives: int, seed: int = 0):
    inst = ROOT / "data/instructions"
    c2i, c2c = pd.read_parquet(inst / "conv2item_train.parquet"), pd.read_parquet(inst / "conv2conv_train.parquet")
    items = {d: pd.read_parquet(ROOT / f"data/interim/{d}/items.parquet") for d in DATASETS}
    rng = random.Random(seed)
    desc = {d: dict(zip(f.item_id, f.description)) for d, f in items.items()}
    ids = {d: list(f.item_id) for d, f in items.items()}
    mined_c2i = c2i.assign(negative_ids=[rng.sample(ids[d], negatives) for d in c2i.dataset])
    mined_c2i["negatives"] = [[desc[d][i] for i in n] for d, n in zip(mined_c2i.dataset, mined_c2i.negative_ids)]
    pool = c2c["query"].tolist()
    mined_c2c = c2c.assign(negatives=[rng.sample(pool, negatives) for _ in range(len(c2c))],
                           negative_gold_item_ids=[[["none"]] * negatives for _ in range(len(c2c))])
    ranking = pd.DataFrame({"prompt": pd.read_parquet(inst / "response_train.parquet")["prompt"], "target": "[1]\n[2]\n[3]"})
    generation = [pd.read_parquet(inst / f"{t}_train.parquet") for t in ("dm", "response")]
    tables = {d: np.random.default_rng(seed).normal(size=(len(f), 576)).astype(np.float32) for d, f in items.items()}
    tables = {d: t / np.linalg.norm(t, axis=1, keepdims=True) for d, t in tables.items()}
    return c2i, c2c, mined_c2i, mined_c2c, ranking, generation, items, tables


def build(row: dict, data) -> tuple[object, int]:
    """The objective of a row and how many Conv2Item queries one step trains."""
    c2i, c2c, mined_c2i, mined_c2c, ranking, (dm, resp), items, tables = data
    if row["objective"] == "warmup":
        return WarmupObjective(warmup_tasks(c2i, c2c), 8, 0.05, LENGTHS), 8
    retrieval, generation = finetune_tasks(mined_c2i, mined_c2c, ranking, dm, resp)
    if row["objective"] == "mined":
        return FinetuneObjective(retrieval, generation, 2, 2, 0.05, LENGTHS), 2
    tasks = catalogue_tasks(mined_c2i, items, tables, item_bias=True)
    if row["objective"] == "catalogue-only":  # Conv2Item against the whole catalogue, nothing else
        return FinetuneObjective([], [], 0, 0, 0.05, LENGTHS, catalogue=tasks, catalogue_batch=row["batch"]), 2 * row["batch"]
    conv2conv = [t for t in retrieval if t.name == "conv2conv"]
    return FinetuneObjective(conv2conv, generation, 2, 2, 0.05, LENGTHS, catalogue=tasks, catalogue_batch=row["batch"]), 2 * row["batch"]


def one_step(loop: TrainLoop, step: int) -> None:
    """What TrainLoop.run does per optimizer step (no logging, no checkpoint)."""
    out = loop.compute_loss(loop.lm, random.Random(f"0:{step}:0"))
    loop.accelerator.backward(out.loss)
    loop.accelerator.clip_grad_norm_(loop.params, 1.0)
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)


def run_row(row: dict, data, steps: int, profile: bool) -> dict:
    torch.manual_seed(0)
    lm = RetrievableLM.load(ROOT / "models/base", device="cpu", dtype=row["dtype"], trainable=True)
    lm.attach_lora(LoraSettings(layers=row["layers"], dropout=row.get("lora_dropout", LoraSettings.dropout)))
    objective, queries = build(row, data)
    loop = TrainLoop(lm, TrainConfig(steps=steps + 1, lr=1e-4), objective, "/tmp/reficr-bench-train-step",
                     extra_params=objective.extra_parameters() if hasattr(objective, "extra_parameters") else {}, extra_lr=0.05)
    count = {"tokens": 0}  # tokens each step encodes: queries and documents, prompts + targets
    encode, pairs = lm.encode, lm.tokenize_pairs

    def counted_encode(batch):
        count["tokens"] += sum(len(ids) for ids, _ in batch)
        return encode(batch)

    def counted_pairs(*args):
        out = pairs(*args)
        count["tokens"] += sum(len(ids) for ids, _ in out)
        return out

    lm.encode, lm.tokenize_pairs = counted_encode, counted_pairs
    lm.model.train()
    times, tokens, top_ops = [], [], None
    for step in range(steps + 1):
        count["tokens"] = 0
        start = time.perf_counter()
        one_step(loop, step)
        if step:  # step 0 warms up allocators and caches
            times.append(time.perf_counter() - start)
            tokens.append(count["tokens"])
    if profile:  # one more step, untimed: where its time goes
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            one_step(loop, steps + 1)
        top_ops = [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 2)}
                   for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]]
    seconds = statistics.median(times)
    return {**row, "seconds_per_step": round(seconds, 2), "conv2item_queries_per_step": queries,
            "conv2item_queries_per_minute": round(60 * queries / seconds, 1),
            "tokens_per_second": round(statistics.median(tokens) / seconds, 1), **({"top_ops": top_ops} if top_ops else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="catalogue queries per dataset per step")
    parser.add_argument("--layers", type=int, default=8, help="top layers with LoRA in the cheaper rows")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run; default all")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    data = load_rows(negatives=9)
    rows = [
        {"name": "warm-up today (Eq. 1, 8 pairs/task, LoRA all layers, fp32)", "objective": "warmup", "layers": None, "dtype": "float32"},
        {"name": "fine-tune today (Eq. 4-5, 2 queries/task x 10 docs + 2 generation, all layers, fp32)", "objective": "mined",
         "layers": None, "dtype": "float32"},
        # all 30 layers keep fp32 activations for the backward (~160 MB a query here): 64 queries ran out of 24 GiB
        {"name": f"catalogue Conv2Item only ({args.batch // 2}/dataset, all layers, fp32)", "objective": "catalogue-only",
         "layers": None, "dtype": "float32", "batch": args.batch // 2},
        {"name": f"catalogue Conv2Item only (top {args.layers} layers, fp32)", "objective": "catalogue-only", "layers": args.layers,
         "dtype": "float32", "batch": args.batch},
        {"name": f"catalogue Conv2Item only (top {args.layers} layers, bf16 frozen base, fp32 LoRA)", "objective": "catalogue-only",
         "layers": args.layers, "dtype": "bfloat16", "batch": args.batch},
        {"name": f"catalogue fine-tune step (top {args.layers}, fp32: + Conv2Conv mined 2x10 + 2 generation)", "objective": "catalogue",
         "layers": args.layers, "dtype": "float32", "batch": args.batch},
        # LoRA dropout draws a Bernoulli mask over every adapted projection's input each step
        {"name": f"catalogue fine-tune step (top {args.layers}, fp32, as row 6) with LoRA dropout 0", "objective": "catalogue",
         "layers": args.layers, "dtype": "float32", "batch": args.batch, "lora_dropout": 0.0},
    ]
    chosen = [int(r) - 1 for r in args.rows.split(",")] if args.rows else range(len(rows))
    results = []
    for i in chosen:
        results.append(run_row(rows[i], data, args.steps, args.profile and i in (0, 3, 5, 6)))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["conv2item_queries_per_minute"]
    for r in results:
        r["queries_per_minute_vs_warmup_today"] = round(r["conv2item_queries_per_minute"] / base, 2)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "fast_bf16": fast_bfloat16(), "bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or f == "avx2"),
                       "torch": torch.__version__}, "steps": args.steps, "rows": results}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
