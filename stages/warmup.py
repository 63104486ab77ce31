"""DVC stage `warmup` (ReFICR_INIT, Eq. 1): LoRA on the base model, InfoNCE with in-batch negatives over
Conv2Item and Conv2Conv pairs. Output: models/init (adapter), plots/warmup_loss.csv.

    python -m stages.warmup
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.objectives import WarmupObjective, warmup_tasks
from stages._common import ROOT, load_params, setup_logging
from stages._params import lengths
from stages._training import train_adapter

log = logging.getLogger("stages.warmup")
INPUTS = ("data/instructions/conv2item_train.parquet", "data/instructions/conv2conv_train.parquet")


def main() -> None:
    setup_logging()
    params = load_params()
    w = params["warmup"]
    conv2item, conv2conv = (pd.read_parquet(ROOT / p) for p in INPUTS)
    objective = WarmupObjective(warmup_tasks(conv2item, conv2conv), w["batch_size"], w["temperature"], lengths(params))
    train_adapter(params, "warmup", ("seed", "model", "lengths", "warmup"), INPUTS, objective, "models/init", {})
    log.info("ReFICR_INIT written to models/init")


if __name__ == "__main__":
    main()
