"""DVC stage `fit_items@<dataset>`: item offsets for the fine-tuned retriever, fitted after fine-tuning with its query
encoder fixed, and kept only where the validation split says so (``pipeline.training.item_offsets``: ``fit_offsets``, ``OffsetChoice``;
an extension of the paper's model, like the item bias: the catalogue objective's fixed item table moves).

    python -m stages.fit_items redial      # or inspired

The training contexts and the validation split come as the fine-tuned model embedded them (Conv2Item queries, stage
``embed_contexts``: a seeded sample of ``embed.train_contexts`` training turns); one offset vector per item is learned against the whole
catalogue, added to the item's row of the table fine-tuning scored against (re-normalised), the queries and the item
bias fixed. The validation split scores the item side with and without them, choosing retrieval+prior's beta again
for each; the offsets are adopted when retrieval+prior's validation score rises and retrieval's dedup Recall@50 does
not drop (``OffsetChoice.decide``). ``evaluate`` then scores with them and with their beta. The test split is not read.

Writes models/item_offsets/<dataset>/ (choice.json; offsets.safetensors and timing.json when fitted) and
metrics/item_offsets_<dataset>.json (the same choice, for `dvc metrics show`; wall times stay out of it, as they vary
from run to run). Nothing is fitted (the choice says
why) with ``item_offsets.fit: false`` or for a run trained with the paper's objective (no fixed item table).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch
from safetensors.numpy import save_file

from pipeline.data import schemas
from pipeline.errors import DataError, ParamError
from pipeline.io import atomic_dir, write_json
from pipeline.retrieval.context_embeddings import ContextEmbeddings
from pipeline.retrieval.corpus import gold_rows, rank_scores
from pipeline.retrieval.popularity import log_counts, training_gold
from pipeline.training.catalogue import offset_table, trained_item_side
from pipeline.training.item_offsets import OFFSETS_CHOICE, OFFSETS_FILE, OffsetChoice, fit_offsets, validation_side
from stages.common import ROOT, load_params, setup_logging, user_errors

log = logging.getLogger("stages.fit_items")
MODEL = ROOT / "models/reficr"
CONTEXTS = ROOT / "data/embeddings/reficr"  # stage embed_contexts: the fine-tuned model's training and validation contexts


def check_settings(s: dict) -> None:
    for key, kind in (("epochs", int), ("batch_size", int), ("lr", float)):
        if not isinstance(s[key], (int, float)) or isinstance(s[key], bool) or s[key] < 0 or (kind is int and s[key] != int(s[key])):
            raise ParamError(f"params.yaml: item_offsets.{key} {s[key]!r}; expected a non-negative {kind.__name__}")
    if s["fit"] and (s["epochs"] < 1 or s["batch_size"] < 1 or s["lr"] <= 0):
        raise ParamError("params.yaml: item_offsets: expected epochs >= 1, batch_size >= 1 and lr > 0 when fit is true")


def fit(params: dict, dataset: str, table: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, OffsetChoice, dict]:
    s, temperature = params["item_offsets"], params["finetune"]["temperature"]
    items = schemas.read_table(ROOT / f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
    row = {item: r for r, item in enumerate(items["item_id"])}
    if len(row) != len(table):
        raise DataError(f"{ROOT / f'data/interim/{dataset}/items.parquet'}: {len(row)} items for an item table of "
                        f"{len(table)} rows; re-run embed_base_items@{dataset}")
    prior = log_counts(training_gold(schemas.read_table(ROOT / f"data/interim/{dataset}/rec_turns.parquet", schemas.REC_TURNS)),
                       items["item_id"])
    train, valid = (ContextEmbeddings.load(CONTEXTS / dataset, split) for split in ("train", "valid"))
    q_train, q_valid = train.vectors, valid.vectors
    pairs, valid = train.contexts, valid.contexts
    started = time.perf_counter()
    gold_train = gold_rows(pairs["gold_item_ids"], row)
    logit_bias = None if bias is None else torch.from_numpy(bias / temperature)  # saved at cosine scale
    log.info("%s: fitting item offsets on %d (context, gold item) pairs, lr %g", dataset, sum(map(len, gold_train)), s["lr"])
    offsets = fit_offsets(torch.from_numpy(q_train), gold_train, torch.from_numpy(table), logit_bias, temperature,
                          float(s["lr"]), int(s["epochs"]), int(s["batch_size"]), params["seed"]).numpy()
    fitted = time.perf_counter()

    full, dedup = gold_rows(valid["gold_item_ids"], row), gold_rows(valid["gold_item_ids"], row, valid["gold_seen_in_context"])
    betas = params["eval"]["prior_betas"]
    without = validation_side(rank_scores(q_valid, table, bias) / temperature, prior, full, dedup, betas)
    moved = validation_side(rank_scores(q_valid, offset_table(table, offsets), bias) / temperature, prior, full, dedup, betas)
    settings = {"contexts": len(pairs), "pairs": sum(map(len, gold_train)), "validation_contexts": len(valid),
                "lr": s["lr"], "epochs": s["epochs"], "batch_size": s["batch_size"]}
    timing = {"fit_s": round(fitted - started, 1)}
    log.info("%s: fitting took %.1f s", dataset, timing["fit_s"])
    return offsets, OffsetChoice.decide(dataset, without, moved, settings), timing


def main(dataset: str) -> None:
    setup_logging()
    params = load_params(f"fit_items@{dataset}")
    s = params["item_offsets"]
    check_settings(s)
    base_items = np.load(ROOT / f"data/embeddings/base/{dataset}_items.npy", allow_pickle=False)
    table, bias = trained_item_side(MODEL, dataset, base_items)
    offsets, timing = None, None
    if not s["fit"]:
        choice = OffsetChoice(dataset, False, False, "item_offsets.fit is false")
    elif table is None:
        choice = OffsetChoice(dataset, False, False, "fine-tuned with the paper's objective: the model embeds the items itself")
    else:
        offsets, choice, timing = fit(params, dataset, table.astype(np.float32), None if bias is None else bias.astype(np.float32))
    log.info("%s: item offsets %s (%s)", dataset, "adopted" if choice.adopted else "not adopted", choice.reason)
    with atomic_dir(ROOT / "models/item_offsets" / dataset) as out:
        if offsets is not None:
            save_file({dataset: np.ascontiguousarray(offsets, dtype=np.float32)}, str(out / OFFSETS_FILE))
            write_json(out / "timing.json", timing)
        write_json(out / OFFSETS_CHOICE, choice.to_json())
    write_json(ROOT / f"metrics/item_offsets_{dataset}.json", choice.to_json())


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
