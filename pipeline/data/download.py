"""The ``download`` stage's library: fetch pinned raw files, or copy them from a local mirror.

Policy:
- every file is checked against its pin (sha256, or git blob id where only that is known); a mismatch
  is an error naming the file, and nothing is left at the destination;
- HTTP downloads resume from ``<file>.part`` (Range requests) after an interruption; the final path only
  ever holds a complete, verified file (rename after verification);
- an optional file the source does not have (mirror: absent; online: HTTP 404) is counted in the report,
  never silently skipped;
- no network at all gives an error that says how to use a mirror (``REFICR_DATA_MIRROR``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.data.sources import RawFile, load_manifest, sources_for
from pipeline.errors import DataError
from pipeline.io import write_json

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class DownloadError(DataError, RuntimeError):
    """A raw file could not be obtained or failed its checksum."""


@dataclass
class DownloadReport:
    mode: str
    files: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        status = {}
        for info in self.files.values():
            status[info["status"]] = status.get(info["status"], 0) + 1
        return {"mode": self.mode, "counts": status, "files": self.files}


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one pass."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            blob.update(chunk)
    return sha.hexdigest(), blob.hexdigest()


def verify(path: Path, src: RawFile, shown_as: str) -> str:
    """Check ``path`` against the pin of ``src``; return its sha256. Raises DownloadError on mismatch."""
    sha, blob = file_digests(path)
    if src.sha256 and sha != src.sha256:
        raise DownloadError(f"{shown_as}: sha256 {sha} does not match the pinned {src.sha256}")
    if not src.sha256 and src.git_blob and blob != src.git_blob:
        raise DownloadError(f"{shown_as}: git blob id {blob} does not match the pinned {src.git_blob}")
    if not src.sha256 and not src.git_blob:
        raise DownloadError(f"{src.path}: no checksum pinned; refusing an unverified file")
    return sha


def _already_there(dest: Path, src: RawFile) -> str | None:
    if not dest.exists():
        return None
    try:
        return verify(dest, src, str(dest))
    except DownloadError:
        log.warning("%s exists but fails its checksum; fetching it again", dest)
        return None


def copy_from_mirror(src: RawFile, mirror: Path, out_dir: Path) -> dict:
    origin = mirror / src.path
    dest = out_dir / src.path
    if (sha := _already_there(dest, src)) is not None:
        return {"status": "present", "sha256": sha, "from": str(origin)}
    if not origin.exists():
        if src.required:
            raise DownloadError(f"{origin}: required raw file missing from the mirror {mirror}")
        return {"status": "absent", "from": str(origin)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        shutil.copyfile(origin, tmp)
        sha = verify(tmp, src, str(origin))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"status": "copied", "sha256": sha, "from": str(origin)}


def fetch_url(url: str, dest: Path, src: RawFile, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, then rename. Returns sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "reficr-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file is already complete
            response = None
        else:
            raise
    if response is not None:
        with response:
            resumed = response.status == 206
            if have and not resumed:
                have = 0  # server ignored the Range header: start over
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False
            ) as bar:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
    try:
        sha = verify(part, src, url)
    except DownloadError:
        part.unlink(missing_ok=True)  # a corrupt download is never resumed
        raise
    os.replace(part, dest)
    return sha


def extract_members(zip_path: Path, src: RawFile, out_dir: Path) -> None:
    with zipfile.ZipFile(zip_path) as archive:
        names = {Path(n).name: n for n in archive.namelist() if not n.endswith("/")}
        for member, target in src.members.items():
            if member not in names:
                raise DownloadError(f"{zip_path}: member {member!r} not found; archive holds {sorted(names)}")
            dest = out_dir / target
            tmp = dest.with_name(dest.name + ".part")
            with archive.open(names[member]) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, dest)


def download(
    datasets: list[str],
    out_dir: str | Path,
    mirror: str | Path | None = None,
    timeout: float = 60.0,
    sources: list[RawFile] | None = None,
) -> DownloadReport:
    """Obtain every raw file the datasets need into ``out_dir``.

    ``sources`` overrides the built-in manifest (tests point it at a local server).
    """
    out_dir = Path(out_dir)
    files = sources if sources is not None else sources_for(datasets)
    report = DownloadReport(mode="mirror" if mirror else "online")
    if mirror:
        mirror = Path(mirror)
        if not mirror.is_dir():
            raise DownloadError(f"{mirror}: mirror folder does not exist (REFICR_DATA_MIRROR)")
        for src in files:
            if src.mirror:
                report.files[src.path] = copy_from_mirror(src, mirror, out_dir)
                log.info("%s: %s", src.path, report.files[src.path]["status"])
        return report
    for src in files:
        if not src.online:
            continue
        dest = out_dir / src.path
        if (sha := _already_there(dest, src)) is not None:
            report.files[src.path] = {"status": "present", "sha256": sha, "from": src.url}
        else:
            try:
                sha = fetch_url(src.url, dest, src, timeout=timeout)
                report.files[src.path] = {"status": "downloaded", "sha256": sha, "from": src.url}
            except urllib.error.HTTPError as err:
                if err.code == 404 and not src.required:
                    report.files[src.path] = {"status": "absent", "from": src.url}
                    continue
                raise DownloadError(f"{src.url}: HTTP {err.code} {err.reason} (for {src.path})") from err
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as err:
                raise DownloadError(
                    f"{src.url}: cannot reach the server ({getattr(err, 'reason', err)}). Offline? "
                    "Point REFICR_DATA_MIRROR at a folder laid out like data/raw "
                    "(e.g. REFICR_DATA_MIRROR=../shared/data/raw make run)."
                ) from err
        if src.members:
            extract_members(dest, src, out_dir)
        log.info("%s: %s", src.path, report.files[src.path]["status"])
    return report


def fetch_raw(datasets: list[str], out_dir: str | Path, mirror: str | Path | None, timeout: float,
              manifest: str | Path | None = None) -> dict:
    """The ``download`` stage: every raw file of ``datasets`` into ``out_dir`` (from ``mirror`` when given; from a
    custom ``manifest`` of pinned files when given), then ``download_report.json`` (written last, so that its
    presence means a complete folder). The report is machine-independent: where a file came from is not part
    of its content. Returns it."""
    out_dir = Path(out_dir)
    # Each file lands atomically (verified ``.part`` renamed), and ``.part`` files survive a failed run so
    # the next run resumes them (the DVC output is ``persist: true``).
    (out_dir / "download_report.json").unlink(missing_ok=True)
    sources = [s for s in load_manifest(manifest) if s.dataset in datasets] if manifest else None
    report = download(datasets, out_dir, mirror=mirror, timeout=timeout, sources=sources)
    for path, info in report.files.items():
        if info["status"] == "absent":
            log.info("optional file not available: %s", path)
    summary = report.as_dict()
    for info in summary["files"].values():
        info["from"] = "mirror" if mirror else info["from"]
        if info["status"] in ("copied", "downloaded"):
            info["status"] = "present"
    summary["counts"] = {s: sum(1 for i in summary["files"].values() if i["status"] == s) for s in ("present", "absent")}
    write_json(out_dir / "download_report.json", summary)
    return summary
