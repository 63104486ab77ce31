"""What every stage entry shares: the project root, params loading, logging, and the user-error path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from pipeline.errors import MissingArtifactError, user_errors
from pipeline.params import validate

__all__ = ["ROOT", "load_params", "project_root", "setup_logging", "user_errors"]


def project_root() -> Path:
    """Where the stages read and write: ``$REFICR_ROOT``, else the working directory (``dvc repro`` runs every
    stage in the project root). Never where the code is installed: two clones sharing one virtualenv (an
    editable install) each write only into their own checkout."""
    return Path(os.environ.get("REFICR_ROOT") or Path.cwd()).resolve()


ROOT = project_root()


def load_params(stage: str | None = None, path: str | Path | None = None) -> dict:
    """params.yaml, validated against the schema (``pipeline.params``) before any work; with ``stage`` (its name in
    dvc.yaml, e.g. ``evaluate@redial``), its input artifacts are checked too (``check_inputs``)."""
    path = Path(path) if path is not None else ROOT / "params.yaml"
    if not path.exists():
        raise MissingArtifactError(f"{path}: not found; expected params.yaml in the project root: run the stage "
                                   "from the checkout's root (where dvc.yaml is) or set REFICR_ROOT")
    with open(path, encoding="utf-8") as fh:
        params = validate(yaml.safe_load(fh), str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    if stage:
        check_inputs(stage)
    return params


def stage_table(dvc_yaml: Path) -> dict[str, dict]:
    """Every stage of dvc.yaml under its run name (``foreach`` stages expanded: ``evaluate@redial``)."""
    out = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def outputs(stage: dict) -> list[str]:
    """What a dvc.yaml stage writes: its outs, metrics and plots."""
    return [p for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key))]


def check_inputs(stage: str, root: Path | None = None) -> None:
    """Each data or model input of ``stage`` (its non-code deps in dvc.yaml) exists; else one line naming the
    missing artifact and the stage that makes it. Nothing is checked where there is no dvc.yaml (a library use)."""
    root = root or ROOT
    if not (root / "dvc.yaml").exists():
        return
    table = stage_table(root / "dvc.yaml")
    if stage not in table:
        raise MissingArtifactError(f"dvc.yaml: no stage {stage!r}; expected one of {', '.join(table)}")
    for dep in _paths(table[stage].get("deps")):
        if dep.startswith(("pipeline/", "stages/")) or (root / dep).exists():
            continue
        maker = next((name for name, s in table.items() for out in outputs(s)
                      if dep == out or dep.startswith(out.rstrip("/") + "/")), None)
        how = f"run `dvc repro {maker}` (or `dvc repro` for the whole pipeline)" if maker else "it is not made by any stage"
        raise MissingArtifactError(f"{dep}: not found; expected the output of stage {maker or '?'} before {stage}: {how}")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
