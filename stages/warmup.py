"""DVC stage `warmup` (ReFICR_INIT, Eq. 1): LoRA on the base model, InfoNCE with in-batch negatives over
Conv2Item and Conv2Conv pairs; with `warmup.retrieval_objective: catalogue` Conv2Item is scored against the
whole catalogue in the base model's item table instead (``pipeline.training.catalogue``: an extension; mining then
needs no re-embedding of the items). Output: models/init (adapter [+ item_bias.safetensors]), plots/warmup_loss.csv.

    python -m stages.warmup
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.training.catalogue import BIAS_FILE
from pipeline.training.objectives import WarmupObjective, warmup_tasks
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import lengths
from stages.training import CATALOGUE_INPUTS, catalogue_objective, read_items, train_adapter

log = logging.getLogger("stages.warmup")
INPUTS = ("data/instructions/conv2item_train.parquet", "data/instructions/conv2conv_train.parquet")


def main() -> None:
    setup_logging()
    params = load_params("warmup")
    w = params["warmup"]
    conv2item, conv2conv = (pd.read_parquet(ROOT / p) for p in INPUTS)
    catalogue = catalogue_objective(params, "warmup", read_items())
    tasks = [t for t in warmup_tasks(conv2item, conv2conv) if not (catalogue and t.name == "conv2item")]
    objective = WarmupObjective(tasks, batch_size=w["batch_size"], temperature=w["temperature"], lengths=lengths(params),
                                catalogue=catalogue, catalogue_batch=w["catalogue_batch"])
    extra = {"retrieval_objective": w["retrieval_objective"], "temperature": w["temperature"],
             "item_table": w["item_table"]}
    inputs = INPUTS + (CATALOGUE_INPUTS if catalogue else ())
    train_adapter(params, "warmup", ("seed", "model", "lengths", "warmup"), inputs, objective, "models/init", extra,
                  tensor_file=BIAS_FILE)
    log.info("ReFICR_INIT written to models/init")


if __name__ == "__main__":
    with user_errors():
        main()
