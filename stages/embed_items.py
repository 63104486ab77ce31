"""DVC stage `embed_base_items@<dataset>`: the un-tuned base model's item embeddings, computed once and
reused by evaluation (they change only with the base model, the items or the lengths).

    python -m stages.embed_items redial
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from pipeline.data import schemas
from pipeline.io import atomic_path
from pipeline.model.encoder import Encoder
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import lengths, model_settings

log = logging.getLogger("stages.embed_items")


def main(dataset: str) -> None:
    setup_logging()
    params = load_params(f"embed_base_items@{dataset}")
    items = schemas.read_table(ROOT / f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
    ln = lengths(params)
    encoder = Encoder(model_settings(params).load(ROOT / "models/base"), ln.query, ln.document, params["embed"]["batch_size"])
    log.info("%s: embedding %d item descriptions with the base model", dataset, len(items))
    vectors = encoder.items(items["description"].tolist())
    with atomic_path(ROOT / f"data/embeddings/base/{dataset}_items.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, vectors, allow_pickle=False)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
