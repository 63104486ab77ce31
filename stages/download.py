"""DVC stage `download`: raw files into data/raw (from the official URLs, or a mirror).

    python -m stages.download                                  # online
    REFICR_DATA_MIRROR=../shared/data/raw python -m stages.download   # offline, from a local mirror

The report (data/raw/download_report.json) says where each file came from and its sha256.
"""

from __future__ import annotations

import logging
import os

from pipeline.data.download import download
from pipeline.data.sources import load_manifest
from pipeline.io import write_json
from stages._common import ROOT, load_params, setup_logging

log = logging.getLogger("stages.download")


def main() -> None:
    setup_logging()
    params = load_params()
    mirror = os.environ.get("REFICR_DATA_MIRROR") or None
    out = ROOT / "data/raw"
    # Each file lands atomically (verified ``.part`` renamed), and ``.part`` files survive a failed run
    # so the next run resumes them (the DVC output is ``persist: true``). The report is written last.
    (out / "download_report.json").unlink(missing_ok=True)
    manifest = params["data"].get("manifest") or ""
    sources = [s for s in load_manifest(ROOT / manifest) if s.dataset in params["data"]["datasets"]] if manifest else None
    report = download(params["data"]["datasets"], out, mirror=mirror, timeout=params["data"]["download_timeout_s"], sources=sources)
    for path, info in report.files.items():
        if info["status"] == "absent":
            log.info("optional file not available: %s", path)
    # Where a file came from is not part of its content: keep the report machine-independent.
    summary = report.as_dict()
    for info in summary["files"].values():
        info["from"] = "mirror" if mirror else info["from"]
        if info["status"] in ("copied", "downloaded"):
            info["status"] = "present"
    summary["counts"] = {s: sum(1 for i in summary["files"].values() if i["status"] == s) for s in ("present", "absent")}
    write_json(out / "download_report.json", summary)
    log.info("data/raw ready: %s", summary["counts"])


if __name__ == "__main__":
    main()
