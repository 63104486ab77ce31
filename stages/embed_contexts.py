"""DVC stage `embed_contexts@<dataset>`: the fine-tuned model's Conv2Item query embeddings of a seeded sample of
``embed.train_contexts`` training contexts (0 = all) and of the validation split (``eval.max_validation``, 0 = all),
computed once for ``fit_items`` and ``evaluate`` (``pipeline.retrieval.context_embeddings``). The test split is not read.

    python -m stages.embed_contexts redial      # or inspired

Writes data/embeddings/reficr/<dataset>/{train,valid}.{npy,parquet}.
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from pipeline.data.splits import seeded_sample
from pipeline.errors import DataError, ParamError
from pipeline.io import atomic_dir
from pipeline.model.encoder import Encoder
from pipeline.retrieval.context_embeddings import ContextEmbeddings, training_contexts
from pipeline.tasks import templates
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import lengths, model_settings

log = logging.getLogger("stages.embed_contexts")
CATALOGUE_PAIRS = ROOT / "data/instructions/catalogue_train.parquet"
VALID_TURNS = ROOT / "data/instructions/turns_valid.parquet"


def main(dataset: str) -> None:
    setup_logging()
    params = load_params(f"embed_contexts@{dataset}")
    limit = params["embed"]["train_contexts"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ParamError(f"params.yaml: embed.train_contexts {limit!r}; expected a non-negative int (0 = all)")
    pairs = pd.read_parquet(CATALOGUE_PAIRS)
    train = training_contexts(pairs[pairs["dataset"] == dataset], limit, params["seed"])
    valid = pd.read_parquet(VALID_TURNS)
    valid = seeded_sample(valid[valid["dataset"] == dataset], params["eval"]["max_validation"] or None, params["seed"])
    if train.empty or valid.empty:
        raise DataError(f"{CATALOGUE_PAIRS} / {VALID_TURNS}: no {dataset} training or validation contexts; expected both")
    ln = lengths(params)
    encoder = Encoder(model_settings(params).load(ROOT / "models/base", adapter=ROOT / "models/reficr", merge=True),
                      ln.query, ln.document, params["embed"]["batch_size"])
    log.info("%s: embedding %d training and %d validation contexts with the fine-tuned model (~0.05-0.2 s each on 2 cores)",
             dataset, len(train), len(valid))
    with atomic_dir(ROOT / "data/embeddings/reficr" / dataset) as out:
        for split, frame in (("train", train), ("valid", valid)):
            vectors = encoder.conversations(frame["query"].tolist(), templates.CONV2ITEM_QUERY)
            ContextEmbeddings(frame.reset_index(drop=True), vectors).save(out, split)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
