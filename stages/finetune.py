"""DVC stage `finetune` (Eq. 4-7): from the base model (INIT only mines), LoRA/QLoRA per profile; each step
a batch of retrieval queries and a batch of generation instances (ranking, dialogue management, response
generation; drawn by `finetune.generation_weights`). Conv2Item is the paper's (1 positive + `negatives` mined
negatives, plus in-batch negatives, a parameter) or, with `finetune.retrieval_objective: catalogue`, a softmax
over the whole catalogue against the base model's item table with an optional learned item bias and optional
learned item offsets (``pipeline.training.catalogue``: extensions). With ``finetune.trunk_pass.passes`` > 0 (an
extension), the joint steps are followed by full passes of the catalogue objective over every training turn on the
frozen trunk's states (``pipeline.training.trunk_pass``), then one more validation pass; the adapter as the joint
steps left it is kept as models/reficr/generation, which generates (the pass trains retrieval alone).
Output: models/reficr (adapter [+ item_bias.safetensors: biases, offsets] [+ generation/: the generating adapter]),
plots/finetune_loss.csv, plots/finetune_validation.csv.

    python -m stages.finetune
    accelerate launch --num_processes 4 -m stages.finetune     # several GPUs (DDP)
"""

from __future__ import annotations

import logging
import os

import pandas as pd
import torch

from pipeline.data.splits import validation_split
from pipeline.errors import ParamError
from pipeline.hardware import resolve_dtype
from pipeline.model.lm import resolve_device
from pipeline.training.catalogue import BIAS_FILE, CatalogueValidation
from pipeline.training.objectives import FinetuneObjective, finetune_tasks
from pipeline.training.trunk_pass import PassSettings, trunk_pass
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import lengths
from stages.training import CATALOGUE_INPUTS, catalogue_objective, read_items, train_adapter, training_log_counts

log = logging.getLogger("stages.finetune")
INPUTS = (
    "data/negatives/conv2item.parquet",
    "data/negatives/conv2conv.parquet",
    "data/negatives/ranking_train.parquet",
    "data/instructions/dm_train.parquet",
    "data/instructions/response_train.parquet",
)
# also fingerprinted (a checkpoint resumes only on the same inputs): what the catalogue objective and validation read
VALIDATION_INPUTS = CATALOGUE_INPUTS + ("data/instructions/turns_valid.parquet",)
USED = ("seed", "negatives", "model", "lengths", "embed", "finetune", "eval")  # eval: prior_betas, dm_validation


def catalogue_inputs(params: dict):
    """The catalogue tasks (empty for the paper's objective) and the validator of the validation split (every
    ``validate_every`` steps and at the end; 0 = none, the curve is then empty). With the paper's objective the
    validator re-embeds both catalogues each time (minutes on a CPU); with the catalogue objective only queries.
    Each pass also chooses retrieval+prior's beta (``eval.prior_betas``); evaluation takes the last pass's."""
    f, ln = params["finetune"], lengths(params)
    items = read_items()
    tasks = catalogue_objective(params, "finetune", items)
    if not f["validate_every"]:
        return tasks, None
    turns = pd.read_parquet(ROOT / "data/instructions/turns_valid.parquet")
    return tasks, CatalogueValidation.build(turns, items, tasks, limit=f["validation_queries"], seed=params["seed"],
                                            temperature=f["temperature"], query_length=ln.query, document_length=ln.document,
                                            batch_size=params["embed"]["batch_size"], priors=training_log_counts(items),
                                            betas=params["eval"]["prior_betas"])


def dm_training_turns(params: dict, dm_train: pd.DataFrame) -> pd.DataFrame:
    """Dialogue management's training turns less the dialogues ``validate_dm`` holds out (the same seeded split), so
    its weight is chosen on dialogues the model was not trained on."""
    v = params["eval"]["dm_validation"]
    fit, _ = validation_split(dm_train, v["fraction"], 0, params["seed"])
    log.info("dialogue management: %d of %d training turns (%d dialogues held out for validate_dm)", len(fit),
             len(dm_train), dm_train["dialogue_id"].nunique() - fit["dialogue_id"].nunique())
    return fit


def pass_settings(params: dict) -> PassSettings | None:
    """``finetune.trunk_pass`` as settings, or None with 0 passes; the trunk runs in ``model.inference_dtype`` (auto:
    bfloat16 where it is fast), the adapter's layers train in ``model.dtype``."""
    f, t = params["finetune"], params["finetune"]["trunk_pass"]
    if not t["passes"]:
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ParamError("params.yaml: finetune.trunk_pass runs in one process; set finetune.trunk_pass.passes: 0 under "
                         "`accelerate launch` with several processes")
    if f["retrieval_objective"] != "catalogue" or not params["model"]["lora"]["layers"]:
        raise ParamError("params.yaml: finetune.trunk_pass.passes > 0 needs finetune.retrieval_objective: catalogue and "
                         "model.lora.layers > 0 (LoRA on the top layers only, so the layers below are frozen)")
    device = resolve_device(params["model"]["device"]).type
    cache = resolve_dtype(params["model"]["inference_dtype"], device)
    return PassSettings(passes=t["passes"], lr=float(t["lr"]), bias_lr=float(t["bias_lr"]), batch_size=t["batch_size"],
                        temperature=f["temperature"], query_length=lengths(params).query, warmup_ratio=f["warmup_ratio"],
                        seed=params["seed"], cache_dtype=getattr(torch, cache))


def main() -> None:
    setup_logging()
    params = load_params("finetune")
    f = params["finetune"]
    frames = [pd.read_parquet(ROOT / p) for p in INPUTS]
    dm = INPUTS.index("data/instructions/dm_train.parquet")
    frames[dm] = dm_training_turns(params, frames[dm])
    retrieval, generation = finetune_tasks(*frames, weights=f["generation_weights"])
    catalogue, validate = catalogue_inputs(params)
    if catalogue:  # Conv2Item against the whole catalogue replaces its mined form; Conv2Conv stays the paper's
        retrieval = [t for t in retrieval if t.name != "conv2item"]
    objective = FinetuneObjective(retrieval, generation, retrieval_batch=f["retrieval_batch"],
                                  generation_batch=f["generation_batch"], temperature=f["temperature"],
                                  lengths=lengths(params), lambda_cl=f["lambda_cl"], lambda_gen=f["lambda_gen"],
                                  in_batch_negatives=f["in_batch_negatives"], catalogue=catalogue,
                                  catalogue_batch=f["catalogue_batch"])
    extra = {"negatives": params["negatives"], "retrieval_objective": f["retrieval_objective"], "temperature": f["temperature"],
             "item_table": f["item_table"]}  # learned item offsets are recorded by their presence in BIAS_FILE
    passes = pass_settings(params)
    if passes is not None:
        extra["trunk_passes"] = passes.passes
    after = None if passes is None else (lambda lm: trunk_pass(lm, catalogue, passes))
    train_adapter(params, "finetune", USED, INPUTS + VALIDATION_INPUTS, objective, "models/reficr", extra, validate, BIAS_FILE,
                  after)
    log.info("ReFICR written to models/reficr")


if __name__ == "__main__":
    with user_errors():
        main()
