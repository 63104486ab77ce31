"""DVC stage `mine_negatives` (Eq. 2, Eq. 3) with FAISS over ReFICR_INIT embeddings, and the ranking
instances (top-N INIT candidates + Conv2Conv knowledge) for fine-tuning (``pipeline.retrieval.mining.mine_dataset``).

    python -m stages.mine_negatives

Outputs in data/negatives/: conv2item.parquet, conv2conv.parquet, ranking_train.parquet, one FAISS index
per dataset and corpus, mining_report.json.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd

from pipeline.data import schemas
from pipeline.io import atomic_dir, write_json
from pipeline.model.encoder import Encoder
from pipeline.retrieval.index import write_index
from pipeline.retrieval.mining import MiningSettings, mine_dataset
from pipeline.training.catalogue import trained_item_side
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import lengths, model_settings

log = logging.getLogger("stages.mine_negatives")


def mining_settings(params: dict) -> MiningSettings:
    m, ranking = params["mining"], params["ranking"]
    return MiningSettings(negatives=params["negatives"], pool=m["pool"], index=m["index"], use_gpu=m["use_gpu"],
                          exclude_context_items=m["exclude_context_items"], conv_aggregation=m["conv_aggregation"],
                          candidates=ranking["candidates"], knowledge_utterances=ranking["knowledge_utterances"],
                          seed=params["seed"])


def main() -> None:
    setup_logging()
    params = load_params("mine_negatives")
    settings, ln = mining_settings(params), lengths(params)
    init = model_settings(params).load(ROOT / "models/base", adapter=ROOT / "models/init", merge=True)
    encoder = Encoder(init, ln.query, ln.document, params["embed"]["batch_size"])
    train = {name: pd.read_parquet(ROOT / f"data/instructions/{name}_train.parquet") for name in ("turns", "conv2item", "conv2conv")}
    rng = random.Random(params["seed"])  # one stream across datasets: fills of short lists are seeded
    mined = {}
    for dataset in ("redial", "inspired"):
        items = schemas.read_table(ROOT / f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
        dialogues = schemas.read_table(ROOT / f"data/interim/{dataset}/dialogues.parquet", schemas.DIALOGUES)
        turns, conv2item, conv2conv = (t[t.dataset == dataset].reset_index(drop=True) for t in train.values())
        base_items = np.load(ROOT / f"data/embeddings/base/{dataset}_items.npy", allow_pickle=False)
        table, bias = trained_item_side(ROOT / "models/init", dataset, base_items)
        side = None if table is None else (table, bias)  # INIT trained against the base table: no re-embedding
        log.info("%s: embedding %s and %d training contexts (x3) with ReFICR_INIT", dataset,
                 f"{len(items)} items" if side is None else "no items (the base item table)", len(turns))
        mined[dataset] = mine_dataset(dataset, encoder, items, dialogues, turns, conv2item, conv2conv, settings, rng, side)
        log.info("%s mined: %s", dataset, mined[dataset].report)
    with atomic_dir(ROOT / "data/negatives") as tmp:
        for name in ("conv2item", "conv2conv", "ranking"):
            rows = [row for m in mined.values() for row in getattr(m, name)]
            pd.DataFrame(rows).to_parquet(tmp / f"{name if name != 'ranking' else 'ranking_train'}.parquet", index=False)
        for m in mined.values():
            for index_name, index in m.indexes.items():
                write_index(index, tmp / f"{index_name}.faiss", settings.use_gpu)
        write_json(tmp / "mining_report.json", {"negatives": settings.negatives, "pool": settings.pool, "index": settings.index,
                                                "datasets": {d: m.report for d, m in mined.items()}})


if __name__ == "__main__":
    with user_errors():
        main()
