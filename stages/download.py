"""DVC stage `download`: raw files into data/raw (from the official URLs, or a mirror).

    python -m stages.download                                  # online
    REFICR_DATA_MIRROR=../shared/data/raw python -m stages.download   # offline, from a local mirror

The report (data/raw/download_report.json) says where each file came from and its sha256.
"""

from __future__ import annotations

import logging
import os

from pipeline.data.download import fetch_raw
from stages.common import ROOT, load_params, setup_logging, user_errors

log = logging.getLogger("stages.download")


def main() -> None:
    setup_logging()
    data = load_params("download")["data"]
    manifest = ROOT / data["manifest"] if data.get("manifest") else None
    summary = fetch_raw(data["datasets"], ROOT / "data/raw", os.environ.get("REFICR_DATA_MIRROR") or None,
                        data["download_timeout_s"], manifest)
    log.info("data/raw ready: %s", summary["counts"])


if __name__ == "__main__":
    with user_errors():
        main()
