"""Diagnostic: how fast does a Conv2Item training setting *learn*, on held-out data, before paying for a full run?

    python bench/train_probe.py --steps 40 --lr 1e-3 --batch 16                       # Eq. 1, in-batch negatives
    python bench/train_probe.py --steps 40 --lr 1e-3 --batch 16 --catalogue-negatives 16
    python bench/train_probe.py --objective mined --steps 30 --lr 1e-3 --batch 4      # Eq. 4-5 on data/negatives
    python bench/train_probe.py --objective catalogue --steps 60 --batch 32 --layers 8 --item-bias   # pipeline.catalogue

LoRA (r 16, alpha 32, every projection) on models/base, Conv2Item pairs only, AdamW with the pipeline's linear
schedule (3% warm-up), bf16 autocast. Every ``--eval-every`` steps: Recall@{1,10,50} per item of ``--queries``
ReDial *validation* turns (settings are chosen on validation, never on test) against a pool of ``--pool`` items
(every gold item of those turns plus random others, seeded; `bench/diagnose_embeddings.py` uses the same pool),
so "chance" is ``k / pool``.

``--objective catalogue`` runs the fine-tune stage's catalogue objective instead (``pipeline.catalogue``: every
ReDial and INSPIRED Conv2Item training pair scored against its whole catalogue, the base model's item table from
``embed_base_items``, optional learned item bias), through the pipeline's TrainLoop, and scores the validation
split against the *whole* catalogue every ``--eval-every`` steps, beside the popularity baseline on the same
validation contexts. LoRA on the top ``--layers`` layers; no autocast (the model's dtype is ``--dtype``). Gold items are
mostly popular and the random others mostly obscure, so a model that learns the catalogue's popularity prior
also scores here — as it would on the full corpus.

``--catalogue-negatives K`` adds K items drawn uniformly from the catalogue to every step's documents (shared
by all queries; a query's own gold item is masked). In-batch negatives are other queries' positives, so they
follow the popularity distribution of the positives and cannot teach a model to rank rarely recommended items
below popular ones; catalogue negatives can. Not part of the paper's Eq. 1; a probe for the CPU budget.

Findings are in bench/README.md ("Why the small profile's retriever was at chance").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import templates  # noqa: E402
from pipeline.losses import in_batch_info_nce, key_overlap_mask, mined_negatives_loss  # noqa: E402
from pipeline.model import LoraSettings, RetrievableLM  # noqa: E402
from pipeline.training import linear_schedule  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def heldout_pool(dataset: str, queries: int, pool: int):
    items = pd.read_parquet(ROOT / f"data/interim/{dataset}/items.parquet")
    turns = pd.read_parquet(ROOT / "data/instructions/turns_valid.parquet").query("dataset == @dataset")
    turns = turns.sample(n=min(queries, len(turns)), random_state=0)
    gold = sorted({g for gs in turns.gold_item_ids for g in gs})
    others = [i for i in items.item_id if i not in set(gold)]
    pool_ids = gold + random.Random(0).sample(others, max(0, pool - len(gold)))
    desc = dict(zip(items.item_id, items.description))
    return turns, pool_ids, [desc[i] for i in pool_ids]


def recall(lm: RetrievableLM, turns: pd.DataFrame, pool_ids: list[str], docs: list[str]) -> dict:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = lm.embed(turns["query"].tolist(), templates.CONV2ITEM_QUERY, max_length=96, truncation_side="left", progress=False)
        d = lm.embed(docs, templates.CONV2ITEM_SAMPLE, max_length=64, progress=False)
    scores = q @ d.T
    out = recall_at(gold_ranks(scores, turns, pool_ids))
    out["mean_cosine"] = round(float(scores.mean()), 4)
    return out


def gold_ranks(scores: np.ndarray, turns: pd.DataFrame, pool_ids: list[str]) -> np.ndarray:
    """1-based rank of every gold item of every turn (row of ``scores``) among the pool (columns)."""
    where = {item: col for col, item in enumerate(pool_ids)}
    ranks = []
    for row, golds in enumerate(turns.gold_item_ids):
        order = np.argsort(-scores[row])
        rank_of = {int(col): r + 1 for r, col in enumerate(order)}
        ranks += [rank_of[where[g]] for g in golds]
    return np.asarray(ranks)


def recall_at(ranks: np.ndarray, ks=(1, 10, 50)) -> dict:
    return {f"recall@{k}": round(float((ranks <= k).mean()), 4) for k in ks}


def catalogue_probe(args) -> None:
    """The catalogue objective with the pipeline's own code; validation Recall against whole catalogues."""
    from pipeline.baselines import popularity_ranking
    from pipeline.catalogue import CatalogueValidation, catalogue_tasks, recall_per_item
    from pipeline.hardware import resolve_dtype
    from pipeline.objectives import FinetuneObjective
    from pipeline.settings import Lengths
    from pipeline.training import TrainConfig, TrainLoop

    datasets = ("redial", "inspired")
    items = {d: pd.read_parquet(ROOT / f"data/interim/{d}/items.parquet") for d in datasets}
    tables = {d: np.load(ROOT / f"data/embeddings/base/{d}_items.npy") for d in datasets}
    pairs = pd.read_parquet(ROOT / "data/instructions/catalogue_train.parquet")  # the pipeline's catalogue queries: every training turn
    valid = pd.read_parquet(ROOT / "data/instructions/turns_valid.parquet")
    torch.manual_seed(0)
    lm = RetrievableLM.load(ROOT / "models/base", device="cpu", dtype=resolve_dtype(args.dtype), trainable=True)
    lm.attach_lora(LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=PROJECTIONS, layers=args.layers or None))
    tasks = catalogue_tasks(pairs, items, tables, args.item_bias)
    lengths = Lengths(query=96, document=64, prompt=384, target=96)
    validate = CatalogueValidation.build(valid, items, tasks, args.validation_queries, 0, args.temperature, 96, 64, 16)
    train_gold = pd.read_parquet(ROOT / "data/instructions/turns_train.parquet")
    popularity = {}
    for d in datasets:  # the baseline to beat, on the same validation contexts
        order = popularity_ranking([list(g) for g in train_gold[train_gold.dataset == d].gold_item_ids], items[d].item_id.tolist())
        rank = {item: r for r, item in enumerate(order)}
        scores = np.tile(-np.array([rank[i] for i in items[d].item_id], dtype=np.float32), (len(validate.queries[d]), 1))
        popularity[d] = recall_per_item(scores, validate.gold_rows[d])
    print(json.dumps({"popularity_on_validation": popularity}), flush=True)
    objective = FinetuneObjective([], [], 0, 0, args.temperature, lengths, catalogue=tasks, catalogue_batch=args.batch)
    work = Path("/tmp/reficr-probe-catalogue")
    if work.exists():
        import shutil

        shutil.rmtree(work)
    loop = TrainLoop(lm, TrainConfig(steps=args.steps, lr=args.lr, save_every=10 ** 6), objective, work,
                     extra_params=objective.extra_parameters(), extra_lr=args.bias_lr, validate=validate,
                     validate_every=args.eval_every)
    start = time.perf_counter()
    loop.run()  # validates at step 0 (the base model), every --eval-every steps and at the end
    curve = pd.read_csv(work / "validation.csv").to_dict("records")
    result = {"args": vars(args), "popularity_on_validation": popularity, "minutes": round((time.perf_counter() - start) / 60, 1),
              "training_queries": args.steps * args.batch * len(datasets), "curve": curve}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=("inbatch", "mined", "catalogue"), default="inbatch")
    parser.add_argument("--layers", type=int, default=0, help="catalogue: LoRA on the top N layers (0 = all)")
    parser.add_argument("--item-bias", action="store_true", help="catalogue: learn one bias per item")
    parser.add_argument("--bias-lr", type=float, default=0.05)
    parser.add_argument("--dtype", default="float32", help="catalogue: frozen base dtype (float32 | bfloat16 | auto)")
    parser.add_argument("--validation-queries", type=int, default=300, help="catalogue: per dataset")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16, help="queries per step")
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--catalogue-negatives", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--pool", type=int, default=800)
    parser.add_argument("--dataset", default="redial")
    parser.add_argument("--out", default="", help="write the curve as JSON here")
    args = parser.parse_args()
    if args.objective == "catalogue":
        return catalogue_probe(args)

    torch.manual_seed(0)
    lm = RetrievableLM.load(ROOT / "models/base", device="cpu", trainable=True)
    lm.attach_lora(LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=PROJECTIONS))
    source = "data/negatives/conv2item.parquet" if args.objective == "mined" else "data/instructions/conv2item_train.parquet"
    pairs = pd.read_parquet(ROOT / source)
    catalogue = pd.concat([pd.read_parquet(ROOT / f"data/interim/{d}/items.parquet") for d in ("redial", "inspired")],
                          ignore_index=True)
    turns, pool_ids, docs = heldout_pool(args.dataset, args.queries, args.pool)
    curve = [{"step": 0, **recall(lm, turns, pool_ids, docs)}]
    print(json.dumps(curve[-1]), flush=True)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, args.steps, 0.03))
    lm.model.train()
    seconds = []
    for step in range(args.steps):
        start = time.perf_counter()
        rng = random.Random(step)
        idx = rng.sample(range(len(pairs)), args.batch)
        extra = rng.sample(range(len(catalogue)), args.catalogue_negatives)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q = lm.encode(lm.tokenize_for_embedding([pairs["query"][i] for i in idx], templates.CONV2ITEM_QUERY, 96, "left"))
            if args.objective == "mined":
                texts = [t for i in idx for t in [pairs["positive"][i], *pairs["negatives"][i]]]
                keys = [k for i in idx for k in [{pairs["item_id"][i]}, *({x} for x in pairs["negative_ids"][i])]]
            else:
                texts = [pairs["positive"][i] for i in idx]
                keys = [{pairs["item_id"][i]} for i in idx]
            texts += [catalogue.description[j] for j in extra]
            keys += [{catalogue.item_id[j]} for j in extra]
            d = lm.encode(lm.tokenize_for_embedding(texts, templates.CONV2ITEM_SAMPLE, 64, "right"))
            mask = key_overlap_mask([set(pairs["gold_item_ids"][i]) for i in idx], keys)
            if args.objective == "mined":
                if extra:
                    raise SystemExit("--catalogue-negatives is for the in-batch objective")
                loss = mined_negatives_loss(q, d, args.temperature, 1 + len(pairs["negatives"][idx[0]]), True, mask)
            else:
                loss = in_batch_info_nce(q, d, args.temperature, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} (ln of the candidates: "
              f"{math.log(d.shape[0]):.3f}) {seconds[-1]:.1f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, **recall(lm, turns, pool_ids, docs)})
            print(json.dumps(curve[-1]), flush=True)
    result = {"args": vars(args), "chance": {f"recall@{k}": round(k / len(pool_ids), 4) for k in (1, 10, 50)},
              "median_step_s": round(float(np.median(seconds)), 1), "curve": curve}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
