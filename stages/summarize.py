"""DVC stage `summarize`: metrics/<dataset>.json and metrics/simulate_<dataset>.json -> metrics/summary.md (``pipeline.evaluation.summary``).

    python -m stages.summarize
"""

from __future__ import annotations

import json

from pipeline.evaluation.summary import DATASETS, summary_markdown
from pipeline.io import atomic_path
from stages.common import ROOT, load_params, user_errors


def main() -> None:
    load_params("summarize")  # the stage reads no param; the file is still checked, and its inputs
    metrics = {d: json.loads((ROOT / f"metrics/{d}.json").read_text()) for d, _ in DATASETS}
    simulated = {d: json.loads((ROOT / f"metrics/simulate_{d}.json").read_text()) for d, _ in DATASETS}
    with atomic_path(ROOT / "metrics/summary.md") as tmp:
        tmp.write_text(summary_markdown(metrics, simulated))


if __name__ == "__main__":
    with user_errors():
        main()
