"""The whole DAG (`dvc repro`) in a temporary copy of the repo, on the committed slices, with the tiny profile
(built once per session by conftest's ``tiny_run``; this test works on a copy of it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.evaluation.protocol import SYSTEM_NAMES
from tests.conftest import repo_env, run

pytestmark = pytest.mark.slow


def stale_stages(status: str) -> set[str]:
    """Stage names in `dvc status` output (its unindented 'name:' lines)."""
    return {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith("\t") and line.strip().endswith(":")}


def echo_recall(repo: Path, dataset: str, instance_ids: list[str], k: int) -> float:
    """context_echo's Recall@k per item, worked out from the ingested tables alone: the items mentioned before the
    turn, most recent first, then the items recommenders mention most in the training split."""
    dialogues = pd.read_parquet(repo / f"data/interim/{dataset}/dialogues.parquet")
    turns = pd.read_parquet(repo / f"data/interim/{dataset}/rec_turns.parquet").set_index("instance_id")
    items = pd.read_parquet(repo / f"data/interim/{dataset}/items.parquet").item_id.tolist()
    counts = pd.Series([i for g in turns[turns.split == "train"].gold_item_ids for i in g]).value_counts()
    popular = sorted(items, key=lambda i: (-counts.get(i, 0), items.index(i)))
    hits = []
    for instance in instance_ids:
        dialogue, start = instance.rsplit("#", 1)
        before = dialogues[(dialogues.dialogue_id == dialogue) & (dialogues.turn_index < int(start))].sort_values("turn_index")
        echoed = list(dict.fromkeys(i for ids in reversed(before.item_ids.tolist()) for i in ids))
        top = (echoed + [p for p in popular if p not in echoed])[:k]
        hits += [g in top for g in turns.loc[instance, "gold_item_ids"]]
    return sum(hits) / len(hits)


def test_dvc_repro_runs_the_whole_dag_on_fixture_slices(tiny_run, tmp_path):
    repo = tiny_run.copy(tmp_path / "repo")  # `dvc repro` ran in tiny_run (conftest); this test changes its copy
    env = repo_env(repo)
    params = yaml.safe_load(yaml.safe_dump(tiny_run.params))
    for dataset in ("redial", "inspired"):
        metrics = json.loads((repo / f"metrics/{dataset}.json").read_text())
        for system in SYSTEM_NAMES:
            for variant in ("full", "dedup"):
                key = f"{system}.{variant}.recall@10.per_item"
                assert key in metrics and f"{key}.ci_low" in metrics and f"{key}.n" in metrics, key
        assert "response.ppl.gold_items" in metrics and "response.distinct@2.per_response" in metrics
        # the collaborative baselines and retrieval+knowledge: settings chosen on validation, paired with every baseline
        assert metrics["knowledge.validation_n"] > 0
        assert sum(v for k, v in metrics.items() if k.startswith("knowledge.retrieval+knowledge.weight.")) == pytest.approx(1)
        assert sum(v for k, v in metrics.items() if k.startswith("knowledge.collaborative_mix.weight.")) == pytest.approx(1)
        assert "paired.retrieval+knowledge-collaborative_mix.dedup.recall@50.per_item.ci_low" in metrics
        for system in ("popularity", "collaborative_mix", "retrieval+knowledge"):  # as a product shows them: no named items
            assert f"{system}.filtered.dedup.recall@10.per_item" in metrics
            assert not any(k.startswith(f"{system}.filtered.full.") for k in metrics)
        predictions = pd.read_parquet(repo / f"data/eval/{dataset}/predictions.parquet")
        assert {"instance_id", "dialogue_id", "system", "ranked_item_ids", "gold_item_ids", "gold_seen_in_context"} <= set(predictions.columns)
        # the LLM ranks retrieval+knowledge's candidates: its lists continue in that order after the ranked ones
        by_system = {name: dict(zip(g.instance_id, g.ranked_item_ids)) for name, g in predictions.groupby("system")}
        n = params["ranking"]["candidates"]
        for instance, fused in by_system["retrieval+knowledge@gen"].items():
            ranked = list(by_system["ranked+knowledge"][instance])
            assert sorted(ranked[:n]) == sorted(list(fused)[:n]) and ranked[n:50] == list(fused)[n:50]
        sample = predictions[predictions.system == "context_echo"].instance_id.tolist()
        for k in (1, 10):
            assert metrics[f"context_echo.full.recall@{k}.per_item"] == pytest.approx(echo_recall(repo, dataset, sample, k), abs=1e-6)
    redial = json.loads((repo / "metrics/redial.json").read_text())
    assert {"dm.accuracy", "dm.majority.accuracy", "dm.majority.micro_f1", "paired.dm-majority.accuracy.ci_low",
            "dm.free_generation.parse_rate", "dm.validation.accuracy"} <= set(redial)
    assert redial["dm.parse_rate"] == 1.0  # the scored choice always names an action the chat can act on
    assert redial["content_check.n"] + redial["content_check.skipped"] == 16  # requests the slice cannot answer are counted
    validation = json.loads((repo / "metrics/dm_validation.json").read_text())
    sweep = pd.read_csv(repo / "plots/dm_validation.csv")
    v = params["eval"]["dm_validation"]
    assert sweep.weight.tolist() == v["weights"] * (1 + len(v["head_l2"])) and set(sweep.n) == {validation["n"]}
    assert sweep.prior.tolist() == ["shares"] * len(v["weights"]) + ["head"] * len(v["weights"]) * len(v["head_l2"])
    assert (redial["dm.weight"], redial["dm.prior"]) == (validation["weight"], validation["prior"])
    assert validation["accuracy"] == sweep.accuracy.max()
    free = json.loads((repo / "metrics/dm_validation_generation.json").read_text())  # the paper's DM, on validation
    assert free["n"] == min(params["eval"]["max_dm_generation"], validation["n"]) and 0 <= free["parse_rate"] <= 1
    saved = json.loads((repo / "data/eval/inspired/recommender.json").read_text())["settings"]
    assert saved["dm_weight"] == validation["weight"] and bool(saved["dm_head"]) == (validation["prior"] == "head")
    assert (repo / "metrics/summary.md").read_text().startswith("# reficr evaluation summary")
    for dataset in ("redial", "inspired"):  # the paper's objective: no fixed item table, so no item offsets
        offsets = json.loads((repo / f"metrics/item_offsets_{dataset}.json").read_text())
        assert (offsets["fitted"], offsets["adopted"]) == (False, False) and "paper's objective" in offsets["reason"]
        assert "item_offsets.adopted" not in json.loads((repo / f"metrics/{dataset}.json").read_text())
    # the trained recommender answers from the command line
    (tmp_path / "in.jsonl").write_text(json.dumps({"context": [{"speaker": "seeker", "text": "I loved Super Troopers (2001), any other comedies?"}]}) + "\n")
    run([str(Path(sys.executable).parent / "reficr"), "recommend", "--dataset", "redial", "--input", str(tmp_path / "in.jsonl"),
         "--output", str(tmp_path / "out.jsonl"), "--force-recommend", "--root", str(repo)], repo, env)
    turn = json.loads((tmp_path / "out.jsonl").read_text())
    assert len(turn["candidates"]) == 10 and turn["recommended"] and isinstance(turn["response"], str)
    assert all(c["item_id"].startswith("redial:") for c in turn["candidates"])
    # a second repro does nothing
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo, env)
    # changing the number of negatives re-runs mining, fine-tuning and evaluation only
    original = yaml.safe_load(yaml.safe_dump(params))
    params["negatives"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], repo, env)
    changed = stale_stages(status)
    assert changed == {"mine_negatives", "finetune"}, status
    # an inference-only setting leaves training alone; an evaluation sample size touches one evaluation only; the
    # dialogue-management validation split also shapes fine-tuning's DM turns
    for key, value, expected in ((("model", "inference_dtype"), "float32",
                                  {"mine_negatives", "embed_base_items@redial", "embed_base_items@inspired", "validate_dm",
                                   "embed_contexts@redial", "embed_contexts@inspired", "evaluate@redial", "evaluate@inspired"}),
                                 (("eval", "max_retrieval", "redial"), 29, {"evaluate@redial"}),
                                 (("simulate", "dialogues", "redial"), 5, {"simulate@redial"}),
                                 (("simulate", "turns"), 2, {"simulate@redial", "simulate@inspired"}),
                                 (("eval", "dm_validation", "weights"), [0, 0.5], {"validate_dm"}),
                                 (("eval", "dm_validation", "fraction"), 0.5, {"finetune", "validate_dm"})):  # tiny: 0.3
        changed_params = yaml.safe_load(yaml.safe_dump(original))
        node = changed_params
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(changed_params, sort_keys=False))
        assert stale_stages(run(["dvc", "status"], repo, env)) == expected, key
    (repo / "params.yaml").write_text(yaml.safe_dump(original, sort_keys=False))
    # an edit to evaluation, reply grounding, the DM head or the service leaves training up to date
    for edited in ("pipeline/evaluation/metrics.py", "pipeline/workflow/grounding.py", "pipeline/workflow/dialogue.py",
                   "pipeline/service/serve.py"):
        source = (repo / edited).read_text()
        (repo / edited).write_text(source + "\n# an edit\n")
        changed = stale_stages(run(["dvc", "status"], repo, env))
        assert not changed & {"warmup", "mine_negatives", "finetune"}, (edited, changed)
        assert ("evaluate@redial" in changed) == (not edited.startswith("pipeline/service/")), (edited, changed)
        (repo / edited).write_text(source)
    # the catalogue objective (pipeline.training.catalogue): re-runs fine-tuning and evaluation; the item bias travels to the CLI
    catalogue = yaml.safe_load(yaml.safe_dump(original))
    catalogue["finetune"].update(retrieval_objective="catalogue", validate_every=2)
    catalogue["warmup"].update(retrieval_objective="catalogue")
    (repo / "params.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False))
    assert stale_stages(run(["dvc", "status"], repo, env)) == {"warmup", "finetune"}
    run(["dvc", "repro"], repo, env)
    assert (repo / "models/reficr/item_bias.safetensors").exists() and (repo / "models/init/item_bias.safetensors").exists()
    mining = json.loads((repo / "data/negatives/mining_report.json").read_text())
    assert {d["item_table"] for d in mining["datasets"].values()} == {"base (INIT trained against it)"}
    curve = pd.read_csv(repo / "plots/finetune_validation.csv")
    assert curve.step.tolist() == [0, 0, 2, 2, 3, 3] and set(curve.dataset) == {"redial", "inspired"}
    assert (repo / "data/eval/redial/reficr_item_bias.npy").exists()
    metrics = json.loads((repo / "metrics/redial.json").read_text())
    assert "retrieval+prior.beta" in metrics and "paired.retrieval-popularity.dedup.recall@50.per_item.ci_low" in metrics
    # item offsets fitted after fine-tuning (stage fit_items) on the fixed table, kept only where validation says so
    params_now = yaml.safe_load((repo / "params.yaml").read_text())["embed"]
    for dataset in ("redial", "inspired"):
        choice = json.loads((repo / f"metrics/item_offsets_{dataset}.json").read_text())
        assert choice["fitted"] and 0 < choice["settings"]["contexts"] <= params_now["train_contexts"]  # the slices: fewer
        assert choice["with_offsets"]["retrieval"]["full"]["n"] == choice["without"]["retrieval"]["full"]["n"] > 0
        assert (repo / f"models/item_offsets/{dataset}/offsets.safetensors").exists()
        evaluated = json.loads((repo / f"metrics/{dataset}.json").read_text())
        assert evaluated["item_offsets.adopted"] == choice["adopted"]
        if choice["adopted"]:
            assert evaluated["retrieval+prior.beta"] == choice["with_offsets"]["prior_beta"]
            assert evaluated["retrieval+prior.chosen_at"].startswith("fit_items validation")
    run([str(Path(sys.executable).parent / "reficr"), "recommend", "--dataset", "redial", "--input", str(tmp_path / "in.jsonl"),
         "--output", str(tmp_path / "out2.jsonl"), "--force-recommend", "--root", str(repo)], repo, env)
    assert len(json.loads((tmp_path / "out2.jsonl").read_text())["candidates"]) == 10
