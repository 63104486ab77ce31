"""DVC stage `embed_base_items@<dataset>`: the un-tuned base model's item embeddings, computed once and
reused by evaluation (they change only with the base model, the items or the lengths).

    python -m stages.embed_items redial
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from pipeline import schemas, templates
from pipeline.io import atomic_path
from stages._common import ROOT, load_params, setup_logging
from stages._model import lengths, load_lm

log = logging.getLogger("stages.embed_items")


def main(dataset: str) -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    items = schemas.read_table(f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
    lm = load_lm(params)
    log.info("%s: embedding %d item descriptions with the base model", dataset, len(items))
    vectors = lm.embed(items["description"].tolist(), templates.CONV2ITEM_SAMPLE, batch_size=params["embed"]["batch_size"],
                       max_length=lengths(params).document)
    with atomic_path(ROOT / f"data/embeddings/base/{dataset}_items.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
