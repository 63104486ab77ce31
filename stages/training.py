"""What the two training stages (warmup, finetune) share: their settings and the run around the objective."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from pipeline.data import schemas
from pipeline.errors import MissingArtifactError, ParamError
from pipeline.model.base_model import MANIFEST
from pipeline.model.lm import RetrievableLM, resolve_device
from pipeline.model.settings import GENERATION_ADAPTER
from pipeline.retrieval.popularity import log_counts, training_gold
from pipeline.training.catalogue import ITEM_TABLES, OFFSET, CatalogueTask, catalogue_tasks, item_table
from pipeline.training.loop import LossFn, TrainConfig, TrainLoop, Validator, run_fingerprint
from stages.common import ROOT
from stages.settings import lora, model_settings

BASE = ROOT / "models/base"
DATASETS = ("redial", "inspired")
# what the catalogue objective reads (also fingerprinted: a checkpoint resumes only on the same inputs)
CATALOGUE_PAIRS = "data/instructions/catalogue_train.parquet"  # Conv2Item pairs of every training turn (uncapped)
CATALOGUE_INPUTS = (CATALOGUE_PAIRS,) + tuple(f"data/embeddings/base/{d}_items.npy" for d in DATASETS) + tuple(
    f"data/interim/{d}/items.parquet" for d in DATASETS) + tuple(f"data/interim/{d}/rec_turns.parquet" for d in DATASETS)
OBJECTIVES = {"warmup": ("in_batch", "catalogue"), "finetune": ("mined", "catalogue")}
BIAS_STARTS = ("zero", "log_count")


def read_items() -> dict[str, pd.DataFrame]:
    return {d: schemas.read_table(ROOT / f"data/interim/{d}/items.parquet", schemas.ITEMS) for d in DATASETS}


def catalogue_objective(params: dict, section: str, items: dict[str, pd.DataFrame]) -> list[CatalogueTask]:
    """``params[section]``'s Conv2Item catalogue tasks against the base model's item tables (``embed_base_items``,
    as ``item_table`` transforms them), their queries every training turn (``CATALOGUE_PAIRS``, not only the
    ``instructions.max_train_turns`` that are mined), or none when the section trains the paper's Conv2Item objective."""
    s = params[section]
    if s["retrieval_objective"] not in OBJECTIVES[section]:
        raise ParamError(f"params.yaml: {section}.retrieval_objective {s['retrieval_objective']!r}; "
                         f"expected one of {', '.join(OBJECTIVES[section])}")
    if s["item_bias_init"] not in BIAS_STARTS:
        raise ParamError(f"params.yaml: {section}.item_bias_init {s['item_bias_init']!r}; expected one of {', '.join(BIAS_STARTS)}")
    if s["item_table"] not in ITEM_TABLES:
        raise ParamError(f"params.yaml: {section}.item_table {s['item_table']!r}; expected one of {', '.join(ITEM_TABLES)}")
    if s["retrieval_objective"] != "catalogue":
        return []
    tables = {d: item_table(np.load(ROOT / f"data/embeddings/base/{d}_items.npy", allow_pickle=False), s["item_table"])
              for d in DATASETS}
    starts = None
    if s["item_bias"] and s["item_bias_init"] == "log_count":
        starts = training_log_counts(items)
    return catalogue_tasks(read_catalogue_pairs(), items, tables, s["item_bias"],
                           device=resolve_device(params["model"]["device"]), bias_init=starts,
                           item_offset=s.get("item_offset", False))  # warm-up has none: its table feeds mining


def training_log_counts(items: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per dataset, log(1 + training-split recommendation count) of each item, in ``items`` order."""
    return {d: log_counts(training_gold(read_rec_turns(d)), frame["item_id"]) for d, frame in items.items()}


def read_catalogue_pairs() -> pd.DataFrame:
    path = ROOT / CATALOGUE_PAIRS
    if not path.exists():  # instruction data from before the catalogue pairs were written
        raise MissingArtifactError(f"{path}: no catalogue pairs; run `dvc repro build_instructions`")
    return pd.read_parquet(path)


def read_rec_turns(dataset: str) -> pd.DataFrame:
    return schemas.read_table(ROOT / f"data/interim/{dataset}/rec_turns.parquet", schemas.REC_TURNS)


def extra_learning_rates(s: dict, extra_params: dict) -> dict[str, float]:
    """The catalogue objective's own learning rates: ``item_offset_lr`` for item offsets, ``item_bias_lr`` for biases."""
    return {name: s["item_offset_lr"] if name.startswith(OFFSET) else s["item_bias_lr"] for name in extra_params}


def train_config(params: dict, section: str) -> TrainConfig:
    s = params[section]
    return TrainConfig(steps=s["steps"], lr=s["lr"], warmup_ratio=s["warmup_ratio"], grad_accum=s["grad_accum"],
                       save_every=s["save_every"], seed=params["seed"], mixed_precision=params["model"]["mixed_precision"],
                       gradient_checkpointing=s["gradient_checkpointing"])


def train_adapter(params: dict, section: str, used: tuple[str, ...], inputs: tuple[str, ...], objective: LossFn,
                  model_dir: str, extra: dict, validate: Validator | None = None, tensor_file: str = "",
                  after_steps: Callable[[RetrievableLM], list[dict]] | None = None) -> None:
    """LoRA on the base model, trained with ``objective`` (resuming a checkpoint of the same settings and
    inputs), then by ``after_steps`` (more training outside the loop for retrieval alone, e.g. ``trunk_pass``; its
    loss rows join the loss log, and a validation pass follows; the adapter before it is kept as ``model_dir``'s
    ``GENERATION_ADAPTER``, the one that generates), saved to ``model_dir`` (with the objective's own parameters, if
    any, as ``tensor_file``); the loss curve goes to plots/<section>_loss.csv, the validation curve (with ``validate``) to
    plots/<section>_validation.csv."""
    lm = model_settings(params).load(BASE, trainable=True)
    lm.attach_lora(lora(params), seed=params["seed"])  # a fresh process's torch RNG is seeded at random
    # the base model's manifest carries its weights' sha256: other base weights are never resumed on
    fingerprint = run_fingerprint({k: params[k] for k in used}, *(ROOT / i for i in inputs), BASE / MANIFEST)
    s = params[section]
    extra_params = objective.extra_parameters() if hasattr(objective, "extra_parameters") else {}
    loop = TrainLoop(lm, train_config(params, section), objective, ROOT / "checkpoints" / section, fingerprint=fingerprint,
                     extra_params=extra_params, extra_lr=extra_learning_rates(s, extra_params), validate=validate,
                     validate_every=s.get("validate_every") or s["steps"])
    loop.run()
    manifest = {"stage": section, "steps": s["steps"]} | extra
    if after_steps is not None:  # the joint steps' adapter generates; what trains after them is for retrieval alone
        loop.snapshot(GENERATION_ADAPTER, manifest | {"role": "generation"})
        loop.add_steps(after_steps(lm))
    loop.finish(ROOT / model_dir, ROOT / f"plots/{section}_loss.csv", manifest, tensor_file,
                ROOT / f"plots/{section}_validation.csv" if section == "finetune" else None)

