"""bench/gpu_full_scale.py runs dvc.yaml's stages without DVC (on a lent GPU machine): its order must be the DAG's,
and a failed stage must skip exactly what depends on it. Checked on the real dvc.yaml."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_full_scale", ROOT / "bench/gpu_full_scale.py")
gpu_full_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_full_scale)


def test_the_plan_is_the_dags_order_without_the_provided_stages():
    stages = gpu_full_scale.plan(ROOT / "dvc.yaml", ("data/raw", "data/interim"))
    names = [s["name"] for s in stages]
    every = [s["name"] for s in gpu_full_scale.stage_graph(ROOT / "dvc.yaml")]
    assert set(every) - set(names) == {"download", "ingest@redial", "ingest@inspired", "ingest@iard"}
    assert names[-1] == "summarize" and names.index("warmup") < names.index("mine_negatives") < names.index("finetune")
    position = {name: i for i, name in enumerate(names)}
    for stage in stages:
        for other in stages:
            produces = any(d == o or d.startswith(o + "/") or o.startswith(d + "/")
                           for d in stage["deps"] for o in other["outs"])
            if other is not stage and produces:
                assert position[other["name"]] < position[stage["name"]], (other["name"], stage["name"])


def test_a_failed_stage_skips_only_what_depends_on_it():
    stages = gpu_full_scale.plan(ROOT / "dvc.yaml", ("data/raw", "data/interim"))
    assert gpu_full_scale.downstream(stages, "warmup") == {
        "mine_negatives", "finetune", "validate_dm", "embed_contexts@redial", "embed_contexts@inspired", "fit_items@redial",
        "fit_items@inspired", "evaluate@redial", "evaluate@inspired", "simulate@redial", "simulate@inspired", "summarize"}
    assert gpu_full_scale.downstream(stages, "fit_items@inspired") == {"evaluate@inspired", "simulate@inspired", "summarize"}
    assert gpu_full_scale.downstream(stages, "embed_contexts@redial") == {"fit_items@redial", "evaluate@redial",
                                                                          "simulate@redial", "summarize"}
    assert gpu_full_scale.downstream(stages, "validate_dm") == {"evaluate@redial", "evaluate@inspired", "simulate@redial",
                                                                "simulate@inspired", "summarize"}
    assert gpu_full_scale.downstream(stages, "evaluate@redial") == {"simulate@redial", "summarize"}
    assert gpu_full_scale.downstream(stages, "simulate@inspired") == {"summarize"}


def test_a_cycle_is_an_error_naming_the_file(tmp_path):
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  a: {cmd: python -m a, deps: [b.txt], outs: [a.txt]}\n"
                   "  b: {cmd: python -m b, deps: [a.txt], outs: [b.txt]}\n")
    with pytest.raises(ValueError, match="dvc.yaml: the stages' deps and outs form a cycle"):
        gpu_full_scale.plan(dvc)
