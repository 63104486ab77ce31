"""The download stage's library, against a real HTTP server on 127.0.0.1 serving fixture files."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from pipeline.data.download import DownloadError, download, file_digests
from pipeline.data.sources import RawFile, sources_for
from tests.conftest import RAW

TEST_FILE = RAW / "redial/test_data.jsonl"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support (206), as GitHub's raw server has."""

    log_message = lambda *args: None  # noqa: E731 - keep test output quiet

    def do_GET(self):  # noqa: N802
        # recorded before the reply: the client can finish reading it before this thread would run another line
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (header := self.headers.get("Range")) and header.startswith("bytes="):
            start = int(header[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: RangeHandler(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def test_http_download_verifies_and_lands_atomically(server, tmp_path):
    root, base, _ = server
    (root / "test_data.jsonl").write_bytes(TEST_FILE.read_bytes())
    src = RawFile("redial", "redial/test_data.jsonl", f"{base}/test_data.jsonl", sha256=sha256(TEST_FILE))
    report = download(["redial"], tmp_path / "out", sources=[src])
    assert report.files["redial/test_data.jsonl"]["status"] == "downloaded"
    assert (tmp_path / "out/redial/test_data.jsonl").read_bytes() == TEST_FILE.read_bytes()
    # a second run only re-verifies the file
    report = download(["redial"], tmp_path / "out", sources=[src])
    assert report.files["redial/test_data.jsonl"]["status"] == "present"


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    root, base, _ = server
    (root / "test_data.jsonl").write_bytes(TEST_FILE.read_bytes())
    src = RawFile("redial", "redial/test_data.jsonl", f"{base}/test_data.jsonl", sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 .* does not match the pinned 0000"):
        download(["redial"], tmp_path / "out", sources=[src])
    leftovers = list((tmp_path / "out").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []


def test_git_blob_pin(server, tmp_path):
    root, base, _ = server
    (root / "f.tsv").write_bytes(b"a\tb\n")
    _, blob = file_digests(root / "f.tsv")
    assert blob == hashlib.sha1(b"blob 4\0a\tb\n").hexdigest()
    src = RawFile("inspired", "inspired/f.tsv", f"{base}/f.tsv", git_blob=blob)
    assert download(["inspired"], tmp_path / "out", sources=[src]).files["inspired/f.tsv"]["status"] == "downloaded"


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    root, base, httpd = server
    payload = TEST_FILE.read_bytes()
    (root / "test_data.jsonl").write_bytes(payload)
    part = tmp_path / "out/redial/test_data.jsonl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:5000])  # what an interrupted run left
    src = RawFile("redial", "redial/test_data.jsonl", f"{base}/test_data.jsonl", sha256=sha256(TEST_FILE))
    download(["redial"], tmp_path / "out", sources=[src])
    assert httpd.requests == [("/test_data.jsonl", "bytes=5000-")]
    assert (tmp_path / "out/redial/test_data.jsonl").read_bytes() == payload
    assert not part.exists()


def test_missing_optional_file_is_reported_absent_required_is_an_error(server, tmp_path):
    _, base, _ = server
    optional = RawFile("inspired", "inspired/train.tsv", f"{base}/nope.tsv", sha256="0" * 64, required=False)
    report = download(["inspired"], tmp_path / "out", sources=[optional])
    assert report.files["inspired/train.tsv"]["status"] == "absent"
    required = RawFile("inspired", "inspired/dev.tsv", f"{base}/nope.tsv", sha256="0" * 64)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(["inspired"], tmp_path / "out", sources=[required])


def test_zip_release_is_verified_then_extracted(server, tmp_path):
    root, base, _ = server
    with zipfile.ZipFile(root / "redial_dataset.zip", "w") as archive:
        archive.write(TEST_FILE, "test_data.jsonl")
        archive.write(RAW / "redial/movies_with_mentions.csv", "movies_with_mentions.csv")
    src = RawFile("redial", "redial/redial_dataset.zip", f"{base}/redial_dataset.zip", sha256=sha256(root / "redial_dataset.zip"),
                  members={"test_data.jsonl": "redial/test_data.jsonl", "movies_with_mentions.csv": "redial/movies.csv"})
    download(["redial"], tmp_path / "out", sources=[src])
    assert (tmp_path / "out/redial/test_data.jsonl").read_bytes() == TEST_FILE.read_bytes()
    assert (tmp_path / "out/redial/movies.csv").exists()


def test_offline_gives_a_clear_error_naming_the_mirror_variable(tmp_path):
    src = RawFile("iard", "iard/x.json", "http://127.0.0.1:9/x.json", sha256="0" * 64)  # port 9: nothing listens
    with pytest.raises(DownloadError, match="REFICR_DATA_MIRROR"):
        download(["iard"], tmp_path / "out", sources=[src], timeout=5)


def test_mirror_copy_verifies_checksums(tmp_path):
    good = RawFile("redial", "redial/test_data.jsonl", "unused", sha256=sha256(TEST_FILE))
    report = download(["redial"], tmp_path / "out", mirror=RAW, sources=[good])
    assert report.files["redial/test_data.jsonl"]["status"] == "copied"
    bad = RawFile("redial", "redial/movies_with_mentions.csv", "unused", sha256="f" * 64)
    with pytest.raises(DownloadError, match="movies_with_mentions.csv: sha256"):
        download(["redial"], tmp_path / "out", mirror=RAW, sources=[bad])
    assert not (tmp_path / "out/redial/movies_with_mentions.csv").exists()
    missing = RawFile("redial", "redial/nothing.jsonl", "unused", sha256="f" * 64)
    with pytest.raises(DownloadError, match="required raw file missing from the mirror"):
        download(["redial"], tmp_path / "out", mirror=RAW, sources=[missing])


def test_manifest_pins_every_file_and_matches_the_shared_mirror_checksums():
    for src in sources_for(["redial", "inspired", "iard"]):
        assert src.sha256 or src.git_blob, src.path
        assert src.url.startswith("https://"), src.path
    sums = Path(__file__).resolve().parents[3] / "shared/data/raw/SHA256SUMS"
    if not sums.exists():
        pytest.skip("no shared mirror beside this checkout")
    pinned = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        pinned[name.lstrip("*").removeprefix("./")] = digest
    for src in sources_for(["redial", "inspired", "iard"]):
        if src.sha256 and src.path in pinned:
            assert pinned[src.path] == src.sha256, src.path
