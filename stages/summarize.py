"""DVC stage `summarize`: metrics/<dataset>.json -> metrics/summary.md (``pipeline.summary``).

    python -m stages.summarize
"""

from __future__ import annotations

import json

from pipeline.io import atomic_path
from pipeline.summary import DATASETS, summary_markdown
from stages._common import ROOT, user_errors


def main() -> None:
    metrics = {d: json.loads((ROOT / f"metrics/{d}.json").read_text()) for d, _ in DATASETS}
    with atomic_path(ROOT / "metrics/summary.md") as tmp:
        tmp.write_text(summary_markdown(metrics))


if __name__ == "__main__":
    with user_errors():
        main()
