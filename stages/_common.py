"""What every stage entry shares: the project root, params loading, logging, and the user-error path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from pipeline.errors import MissingArtifactError, user_errors

__all__ = ["ROOT", "load_params", "project_root", "setup_logging", "user_errors"]


def project_root() -> Path:
    """Where the stages read and write: ``$REFICR_ROOT``, else the working directory (``dvc repro`` runs every
    stage in the project root). Never where the code is installed: two clones sharing one virtualenv (an
    editable install) each write only into their own checkout."""
    return Path(os.environ.get("REFICR_ROOT") or Path.cwd()).resolve()


ROOT = project_root()


def load_params(path: str | Path | None = None) -> dict:
    path = Path(path) if path is not None else ROOT / "params.yaml"
    if not path.exists():
        raise MissingArtifactError(f"{path}: not found; expected params.yaml in the project root: run the stage "
                                   "from the checkout's root (where dvc.yaml is) or set REFICR_ROOT")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
