"""What the two training stages (warmup, finetune) share: their settings and the run around the objective."""

from __future__ import annotations


from pipeline.training import LossFn, TrainConfig, TrainLoop, Validator, run_fingerprint
from stages._common import ROOT
from stages._params import lora, model_settings

BASE = ROOT / "models/base"


def train_config(params: dict, section: str) -> TrainConfig:
    s = params[section]
    return TrainConfig(steps=s["steps"], lr=s["lr"], warmup_ratio=s["warmup_ratio"], grad_accum=s["grad_accum"],
                       save_every=s["save_every"], seed=params["seed"], mixed_precision=params["model"]["mixed_precision"],
                       gradient_checkpointing=s["gradient_checkpointing"])


def train_adapter(params: dict, section: str, used: tuple[str, ...], inputs: tuple[str, ...], objective: LossFn,
                  model_dir: str, extra: dict, validate: Validator | None = None, tensor_file: str = "") -> None:
    """LoRA on the base model, trained with ``objective`` (resuming a checkpoint of the same settings and
    inputs), saved to ``model_dir`` (with the objective's own parameters, if any, as ``tensor_file``); the loss
    curve goes to plots/<section>_loss.csv, the validation curve (with ``validate``) to plots/<section>_validation.csv."""
    lm = model_settings(params).load(BASE, trainable=True)
    lm.attach_lora(lora(params), seed=params["seed"])  # a fresh process's torch RNG is seeded at random
    fingerprint = run_fingerprint({k: params[k] for k in used}, *(ROOT / i for i in inputs))
    s = params[section]
    extra_params = objective.extra_parameters() if hasattr(objective, "extra_parameters") else {}
    loop = TrainLoop(lm, train_config(params, section), objective, ROOT / "checkpoints" / section, fingerprint=fingerprint,
                     extra_params=extra_params, extra_lr=s.get("item_bias_lr"), validate=validate,
                     validate_every=s.get("validate_every") or s["steps"])
    loop.run()
    loop.finish(ROOT / model_dir, ROOT / f"plots/{section}_loss.csv", {"stage": section, "steps": s["steps"]} | extra,
                tensor_file, ROOT / f"plots/{section}_validation.csv" if section == "finetune" else None)

