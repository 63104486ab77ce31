"""DVC stage `finetune` (Eq. 4-7): from the base model (INIT only mines), LoRA/QLoRA per profile; each step
a batch of retrieval queries with 1 positive + `negatives` mined negatives (plus in-batch negatives, a
parameter) and a batch of generation instances (ranking, dialogue management, response generation).
Output: models/reficr (adapter), plots/finetune_loss.csv.

    python -m stages.finetune
    accelerate launch --num_processes 4 -m stages.finetune     # several GPUs (DDP)
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from pipeline import templates
from pipeline.objectives import FinetuneObjective, GenerationTask, RetrievalTask
from pipeline.training import TrainLoop
from stages._common import ROOT, load_params, setup_logging
from stages._model import finish_training, fingerprint, lengths, load_lm, lora, train_config

log = logging.getLogger("stages.finetune")
INPUTS = (
    "data/negatives/conv2item.parquet",
    "data/negatives/conv2conv.parquet",
    "data/negatives/ranking_train.parquet",
    "data/instructions/dm_train.parquet",
    "data/instructions/response_train.parquet",
)


def tasks() -> tuple[list[RetrievalTask], list[GenerationTask]]:
    c2i, c2c, rank, dm, resp = (pd.read_parquet(p) for p in INPUTS)
    retrieval = [
        RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, c2i["query"].tolist(),
                      [[p, *list(n)] for p, n in zip(c2i["positive"], c2i["negatives"])],
                      [set(g) for g in c2i["gold_item_ids"]],
                      [[{i}, *({x} for x in n)] for i, n in zip(c2i["item_id"], c2i["negative_ids"])]),
        RetrievalTask("conv2conv", templates.CONV2CONV_QUERY, templates.CONV2CONV_SAMPLE, c2c["query"].tolist(),
                      [[p, *list(n)] for p, n in zip(c2c["positive"], c2c["negatives"])],
                      [set(g) for g in c2c["gold_item_ids"]],
                      [[set(pg), *(set(x) for x in ng)] for pg, ng in zip(c2c["positive_gold_item_ids"], c2c["negative_gold_item_ids"])],
                      doc_truncation="left"),
    ]
    generation = [GenerationTask(name, f["prompt"].tolist(), f["target"].tolist())
                  for name, f in (("ranking", rank), ("dm", dm), ("response", resp))]
    return retrieval, generation


def main() -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    f = params["finetune"]
    used = {k: params[k] for k in ("seed", "negatives", "model", "lengths", "finetune")}
    lm = load_lm(params, trainable=True)
    lm.attach_lora(lora(params))
    retrieval, generation = tasks()
    objective = FinetuneObjective(retrieval, generation, f["retrieval_batch"], f["generation_batch"], f["temperature"],
                                  f["lambda_cl"], f["lambda_gen"], f["in_batch_negatives"], lengths(params))
    work = ROOT / "checkpoints/finetune"
    loop = TrainLoop(lm, train_config(params, "finetune"), objective, work, fingerprint=fingerprint(used, *INPUTS))
    loop.run()
    finish_training(loop, lm, ROOT / "models/reficr", ROOT / "plots/finetune_loss.csv", {"stage": "finetune", "steps": f["steps"], "negatives": params["negatives"]})
    log.info("ReFICR written to models/reficr")


if __name__ == "__main__":
    main()
