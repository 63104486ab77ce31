"""DVC stage `ingest@<dataset>`: data/raw -> data/interim/<dataset>/*.parquet + ingest_report.json.

    python -m stages.ingest redial     # or inspired, iard
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.data.ingest import DATASETS, ingest, write_ingest
from pipeline.errors import ParamError
from stages.common import ROOT, load_params, setup_logging, user_errors

log = logging.getLogger("stages.ingest")


def main(dataset: str) -> None:
    setup_logging()
    if dataset not in DATASETS:
        raise ParamError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    params = load_params(f"ingest@{dataset}")
    os.chdir(ROOT)  # paths in the report are relative to the project: the same on every machine
    result = ingest(
        dataset,
        Path("data/raw"),
        seed=params["seed"],
        redial_valid_fraction=params["data"]["redial"]["valid_fraction"],
        iard_heldout_fraction=params["data"]["iard"]["heldout_fraction"],
        max_utterance_chars=params["data"]["max_utterance_chars"],
        max_record_chars=params["data"]["max_record_chars"],
    )
    write_ingest(result, Path("data/interim") / dataset)
    log.info("%s: %s", dataset, {k: v for k, v in result.report.items() if k in ("items", "splits")})


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
