"""DVC stage `warmup` (ReFICR_INIT, Eq. 1): LoRA on the base model, InfoNCE with in-batch negatives over
Conv2Item and Conv2Conv pairs. Output: models/init (adapter), plots/warmup_loss.csv.

    python -m stages.warmup
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from pipeline import templates
from pipeline.objectives import RetrievalTask, WarmupObjective
from pipeline.training import TrainLoop
from stages._common import ROOT, load_params, setup_logging
from stages._model import finish_training, fingerprint, lengths, load_lm, lora, train_config

log = logging.getLogger("stages.warmup")
INPUTS = ("data/instructions/conv2item_train.parquet", "data/instructions/conv2conv_train.parquet")


def retrieval_pairs() -> list[RetrievalTask]:
    c2i, c2c = (pd.read_parquet(p) for p in INPUTS)
    return [
        RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, c2i["query"].tolist(),
                      [[p] for p in c2i["positive"]], [set(g) for g in c2i["gold_item_ids"]],
                      [[{i}] for i in c2i["item_id"]]),
        RetrievalTask("conv2conv", templates.CONV2CONV_QUERY, templates.CONV2CONV_SAMPLE, c2c["query"].tolist(),
                      [[p] for p in c2c["positive"]], [set(g) for g in c2c["gold_item_ids"]],
                      [[set(g)] for g in c2c["positive_gold_item_ids"]], doc_truncation="left"),
    ]


def main() -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    w = params["warmup"]
    used = {k: params[k] for k in ("seed", "model", "lengths", "warmup")}
    lm = load_lm(params, trainable=True)
    lm.attach_lora(lora(params))
    objective = WarmupObjective(retrieval_pairs(), w["batch_size"], w["temperature"], lengths(params))
    work = ROOT / "checkpoints/warmup"
    loop = TrainLoop(lm, train_config(params, "warmup"), objective, work, fingerprint=fingerprint(used, *INPUTS))
    loop.run()
    finish_training(loop, lm, ROOT / "models/init", ROOT / "plots/warmup_loss.csv", {"stage": "warmup", "steps": w["steps"]})
    log.info("ReFICR_INIT written to models/init")


if __name__ == "__main__":
    main()
