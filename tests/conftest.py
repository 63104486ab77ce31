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
