"""Diagnostic: how good are the small model's embeddings for Conv2Item, per pooling/attention choice?

    python bench/diagnose_embeddings.py --dataset redial --queries 200 --pool 1000 [--adapter models/init]

Retrieval of the gold item among a pool of ``--pool`` items (every gold item of the sampled test turns plus
random others, seeded), per variant: bidirectional vs causal attention, with and without instructions, mean
pooling over the text tokens. Reports Recall@{1,10,50} per item and the mean cosine of gold vs. all pairs
(anisotropy: when every pair is ~0.9 similar, the geometry carries little information).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import templates  # noqa: E402
from pipeline.model import RetrievableLM  # noqa: E402
from bench.train_probe import gold_ranks, heldout_pool, recall_at  # noqa: E402


def embed(lm: RetrievableLM, texts, instruction, max_length, causal, side="right"):
    out = np.zeros((len(texts), lm.hidden_size), dtype=np.float32)
    tokenized = lm.tokenize_for_embedding(texts, instruction, max_length, side)
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenized[start:start + 16]
            ids, mask = lm.pad([s for s, _ in batch], side="right")
            pool = mask.clone()
            for row, (_, n) in enumerate(batch):
                pool[row, :n] = 0
            hidden = lm.decoder()(input_ids=ids, attention_mask=mask, is_causal=causal).last_hidden_state
            mean = (hidden * pool.unsqueeze(-1)).sum(1) / pool.sum(1, keepdim=True)
            out[start:start + 16] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="redial")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--adapter", default="")
    args = parser.parse_args()
    turns, pool_ids, docs = heldout_pool(args.dataset, args.queries, args.pool)
    pos = {i: r for r, i in enumerate(pool_ids)}
    lm = RetrievableLM.load(ROOT / "models/base", adapter=args.adapter or None, device="cpu", merge=bool(args.adapter))
    results = {}
    for name, causal, use_instruction in (("bidirectional+instruction", False, True), ("bidirectional", False, False),
                                          ("causal+instruction", True, True), ("causal", True, False)):
        q = embed(lm, turns["query"].tolist(), templates.CONV2ITEM_QUERY if use_instruction else "", 96, causal, "left")
        d = embed(lm, docs, templates.CONV2ITEM_SAMPLE if use_instruction else "", 64, causal)
        scores = q @ d.T
        results[name] = recall_at(gold_ranks(scores, turns, pool_ids))
        results[name]["mean_gold_cos"] = round(float(np.mean([scores[r, pos[g]] for r, gs in enumerate(turns.gold_item_ids) for g in gs])), 4)
        results[name]["mean_all_cos"] = round(float(scores.mean()), 4)
        print(name, json.dumps(results[name]), flush=True)
    chance = {f"recall@{k}": round(k / len(pool_ids), 4) for k in (1, 10, 50)}
    print(json.dumps({"queries": len(turns), "pool": len(pool_ids), "adapter": args.adapter or None, "chance": chance,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
