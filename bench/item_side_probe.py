"""Diagnostic: would the catalogue objective gain from moving the item side, before paying for a fine-tuning run?

    python bench/item_side_probe.py --root . --out bench/results-item-side-probe.json

Takes a trained run (``models/reficr`` and what ``evaluate`` saved: the fine-tuned query encoder, the item table
it scores against and its learned bias; ``ReFICR.from_run``), embeds Conv2Item training queries (every INSPIRED
training turn, a seeded sample of ReDial's) and the whole validation split once, then keeps the queries **fixed**
and learns only one offset vector per item, added to the item's table row and re-normalised (what
``finetune.item_offset`` learns jointly with the adapter), by the same softmax over the whole catalogue (Adam,
constant learning rate, batches of 64, the query's other gold items masked). After each epoch: validation Recall@10
/ @50 per item, full and dedup (gold items not seen in the context), for retrieval alone and with the popularity
prior (beta x log(1 + training count)), beside popularity on the same contexts. Validation only: the test split is
not read. Settings read here are a direction for a full run, whose own validation pass decides (README). The fitting
is ``pipeline.item_offsets.fit_offsets``, which stage ``fit_items`` runs after fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import schemas, templates  # noqa: E402
from pipeline.baselines import log_counts, training_gold  # noqa: E402
from pipeline.catalogue import moved_rows, rank_scores, recall_per_item  # noqa: E402
from pipeline.item_offsets import fit_offsets, gold_rows  # noqa: E402
from pipeline.recommender import ReFICR  # noqa: E402

BETAS = (0, 0.5, 1)


def recalls(scores: np.ndarray, prior: np.ndarray, full: list[list[int]], dedup: list[list[int]]) -> dict:
    """R@10 / R@50, full and dedup, of ``scores`` (logits) + beta x ``prior`` for each beta."""
    out = {}
    for beta in BETAS:
        s = scores + beta * prior[None, :]
        f, d = recall_per_item(s, full), recall_per_item(s, dedup)
        out[f"beta={beta}"] = {"full": [round(f["recall@10"], 4), round(f["recall@50"], 4)],
                               "dedup": [round(d["recall@10"], 4), round(d["recall@50"], 4)]}
    return out


def probe(root: Path, dataset: str, train_queries: int, lrs: list[float], epochs: int, temperature: float, seed: int) -> dict:
    model = ReFICR.from_run(root, dataset)
    items = pd.read_parquet(root / f"data/interim/{dataset}/items.parquet")
    row = {item: r for r, item in enumerate(items["item_id"])}
    prior = log_counts(training_gold(schemas.read_table(root / f"data/interim/{dataset}/rec_turns.parquet",
                                                        schemas.REC_TURNS)), items["item_id"])
    pairs = pd.read_parquet(root / "data/instructions/catalogue_train.parquet")
    pairs = pairs[pairs["dataset"] == dataset].drop_duplicates("instance_id")
    if train_queries and len(pairs) > train_queries:
        pairs = pairs.sample(n=train_queries, random_state=seed)
    valid = pd.read_parquet(root / "data/instructions/turns_valid.parquet")
    valid = valid[valid["dataset"] == dataset]
    started = time.time()
    q_train = torch.from_numpy(model.encoder.conversations(pairs["query"].tolist(), templates.CONV2ITEM_QUERY))
    q_valid = torch.from_numpy(model.encoder.conversations(valid["query"].tolist(), templates.CONV2ITEM_QUERY))
    embed_s = time.time() - started
    table = torch.from_numpy(model.corpus.vectors).float()
    bias = torch.zeros(len(table)) if model.corpus.bias is None else torch.from_numpy(model.corpus.bias).float()
    full, dedup = gold_rows(valid["gold_item_ids"], row), gold_rows(valid["gold_item_ids"], row, valid["gold_seen_in_context"])
    gold_train = gold_rows(pairs["gold_item_ids"], row)

    def validation(moved: torch.Tensor) -> dict:
        return recalls(rank_scores(q_valid.numpy(), moved.numpy(), bias.numpy()) / temperature, prior, full, dedup)

    popularity = np.tile(prior, (len(valid), 1))  # ties: catalogue order (recall_per_item sorts stably)
    result = {"train_queries": len(pairs), "train_examples": sum(map(len, gold_train)), "validation_contexts": len(valid),
              "embed_s": round(embed_s, 1), "popularity": recalls(popularity, np.zeros_like(prior), full, dedup)["beta=0"],
              "without_offsets": validation(table), "offsets": {}}
    print(dataset, "popularity", result["popularity"], "without offsets", result["without_offsets"], flush=True)
    bias_logits = bias / temperature  # the bias is saved at cosine scale (temperature x the learned one)
    for lr in lrs:
        curve = []

        def after_epoch(epoch: int, offset: torch.Tensor, lr: float = lr, curve: list = curve) -> None:
            curve.append({"epoch": epoch, **validation(moved_rows(table, offset))})
            print(dataset, f"lr {lr} epoch {epoch}", curve[-1], flush=True)

        fit_offsets(q_train, gold_train, table, bias_logits, temperature, lr, epochs, 64, seed, after_epoch)
        result["offsets"][str(lr)] = curve
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="a run's root: models/reficr and evaluate's data/eval/<dataset>")
    parser.add_argument("--datasets", default="inspired,redial")
    parser.add_argument("--train-queries", type=int, default=5000, help="training contexts per dataset (0 = all)")
    parser.add_argument("--lrs", default="1e-3,3e-3")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.05, help="the run's finetune.temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    out = {"root": str(Path(args.root).resolve()), "args": vars(args)}
    for dataset in args.datasets.split(","):
        out[dataset] = probe(Path(args.root), dataset, args.train_queries, [float(x) for x in args.lrs.split(",")],
                             args.epochs, args.temperature, args.seed)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
