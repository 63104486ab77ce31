"""The whole DAG (`dvc repro`) in a temporary copy of the repo, on the committed slices, with the tiny profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1500) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def test_dvc_repro_runs_the_whole_dag_on_fixture_slices(tmp_path):
    repo = tmp_path / "repo"
    for rel in tracked_files():
        dest = repo / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    env = dict(os.environ, REFICR_DATA_MIRROR=str(repo / "tests/fixtures/raw"), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    params = yaml.safe_load((repo / "profiles/tiny.yaml").read_text())
    params["data"]["manifest"] = "tests/fixtures/raw/manifest.json"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "repro"], repo, env)
    for dataset in ("redial", "inspired"):
        metrics = json.loads((repo / f"metrics/{dataset}.json").read_text())
        for system in ("retrieval", "base_embedder", "bm25", "popularity", "context_echo", "ranked", "ranked+knowledge",
                       "ranked+knowledge/base", "random_ranking", "retrieval/no_instruction"):
            for variant in ("full", "dedup"):
                key = f"{system}.{variant}.recall@10.per_item"
                assert key in metrics and f"{key}.ci_low" in metrics and f"{key}.n" in metrics, key
        assert "response.ppl.gold_items" in metrics and "response.distinct@2.per_response" in metrics
        predictions = __import__("pandas").read_parquet(repo / f"data/eval/{dataset}/predictions.parquet")
        assert {"instance_id", "dialogue_id", "system", "ranked_item_ids", "gold_item_ids", "gold_seen_in_context"} <= set(predictions.columns)
    assert "dm.accuracy" in json.loads((repo / "metrics/redial.json").read_text())
    assert (repo / "metrics/summary.md").read_text().startswith("# reficr evaluation summary")
    # the trained recommender answers from the command line
    (tmp_path / "in.jsonl").write_text(json.dumps({"context": [{"speaker": "seeker", "text": "I loved Super Troopers (2001), any other comedies?"}]}) + "\n")
    run([str(Path(sys.executable).parent / "reficr"), "recommend", "--dataset", "redial", "--input", str(tmp_path / "in.jsonl"),
         "--output", str(tmp_path / "out.jsonl"), "--force-recommend", "--root", str(repo)], repo, env)
    turn = json.loads((tmp_path / "out.jsonl").read_text())
    assert len(turn["candidates"]) == 10 and turn["recommended"] and isinstance(turn["response"], str)
    assert all(c.startswith("redial:") for c in turn["candidates"])
    # a second repro does nothing
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo, env)
    # changing the number of negatives re-runs mining, fine-tuning and evaluation only
    params["negatives"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], repo, env)
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith("\t") and line.strip().endswith(":")}
    assert changed == {"mine_negatives", "finetune"}, status
