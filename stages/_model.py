"""Model and training settings from params.yaml, shared by the training and mining stages."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.model import LoraSettings, RetrievableLM
from pipeline.objectives import Lengths
from pipeline.io import atomic_dir, atomic_path
from pipeline.training import TrainConfig, TrainLoop

BASE = Path("models/base")


def lengths(params: dict) -> Lengths:
    return Lengths(**params["lengths"])


def load_lm(params: dict, adapter: str | Path | None = None, trainable: bool = False, merge: bool = False) -> RetrievableLM:
    """The base model (+ adapter). Training uses ``model.dtype``; inference (not ``trainable``) then casts
    to ``model.inference_dtype``, after any merge, unless the model is 4-bit."""
    m = params["model"]
    return RetrievableLM.load(BASE, adapter=adapter, device=m["device"], dtype=m["dtype"], quantization=m["quantization"] or None,
                              trainable=trainable, merge=merge, inference_dtype=m["inference_dtype"])


def lora(params: dict) -> LoraSettings:
    return LoraSettings(**params["model"]["lora"])


def train_config(params: dict, section: str) -> TrainConfig:
    s = params[section]
    return TrainConfig(steps=s["steps"], lr=s["lr"], warmup_ratio=s["warmup_ratio"], grad_accum=s["grad_accum"],
                       save_every=s["save_every"], seed=params["seed"], mixed_precision=params["model"]["mixed_precision"],
                       gradient_checkpointing=s["gradient_checkpointing"])


def fingerprint(params: dict, *files: str | Path) -> str:
    """Hash of the settings and input files a training run depends on (a checkpoint is resumed only if equal)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def finish_training(loop: TrainLoop, lm: RetrievableLM, model_dir: Path, plot: Path, extra: dict) -> None:
    """Save the trained adapter atomically, publish the loss curve for `dvc plots`, drop the resume state."""
    with atomic_dir(model_dir) as tmp:
        lm.model = loop.accelerator.unwrap_model(lm.model)
        lm.save_adapter(tmp, extra=extra)
    with atomic_path(plot) as tmp:
        shutil.copyfile(loop.out_dir / "loss.csv", tmp)
    shutil.rmtree(loop.out_dir)
