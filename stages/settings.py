"""params.yaml -> the library's settings records that several stages share (stage-specific ones live in their stage)."""

from __future__ import annotations

from pipeline.model.lm import LoraSettings
from pipeline.model.settings import Lengths, ModelSettings


def lengths(params: dict) -> Lengths:
    return Lengths(**params["lengths"])


def model_settings(params: dict) -> ModelSettings:
    m = params["model"]
    return ModelSettings(device=m["device"], dtype=m["dtype"], quantization=m["quantization"] or None,
                         inference_dtype=m["inference_dtype"])


def lora(params: dict) -> LoraSettings:
    """``model.lora``; ``layers: all`` adapts every decoder layer, a number N only the top N."""
    settings = dict(params["model"]["lora"])
    settings["layers"] = None if settings.get("layers", "all") == "all" else int(settings["layers"])
    return LoraSettings(**settings)
