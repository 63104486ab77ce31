"""The evaluation library's pieces that need no model: the registry and top-k selection."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.protocol import PAIRED, SYSTEM_NAMES, SYSTEMS
from pipeline.retrieval.corpus import top_rows


def test_registry_names_are_unique_and_paired_systems_are_scored_on_the_same_sample():
    assert len(SYSTEM_NAMES) == len(set(SYSTEM_NAMES))
    sample = {s.name: s.sample for s in SYSTEMS}
    assert all(sample[a] == sample[b] == "retrieval" for a, b in PAIRED)
    # the base model's systems come before the fine-tuned model is needed, so it is dropped before that one loads
    assert SYSTEM_NAMES.index("base_embedder") < SYSTEM_NAMES.index("retrieval/no_instruction")
    # the collaborative baselines share their scores with retrieval+knowledge, which needs the fine-tuned model
    assert SYSTEM_NAMES.index("base_embedder") < min(SYSTEM_NAMES.index(s) for s in ("co_mention", "collaborative_mix"))


def test_top_rows_orders_by_score_then_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_rows(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_rows(scores, 10).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]


def test_beta_ties_within_float_noise_go_to_the_smaller_prior():
    """Two betas with the same validation hits can differ in the last bits (measured on INSPIRED: 0.5 and 2);
    the smaller beta wins such a tie, a real difference still wins."""
    from pipeline.training.catalogue import choose_beta

    tried = {0: 0.1786833855799373, 0.5: 0.18652037617554856, 1: 0.18495297805642633, 2: 0.1865203761755486}
    assert tried[2] > tried[0.5]  # the float noise that used to pick beta 2
    assert choose_beta(tried) == 0.5
    assert choose_beta(tried | {4: 0.1866}) == 4


def test_evaluation_takes_the_beta_of_the_last_validation_pass():
    import pandas as pd

    from pipeline.training.catalogue import prior_choice

    curve = pd.DataFrame({"step": [0, 0, 72, 72], "dataset": ["redial", "inspired"] * 2, "recall@10": [0.1, 0.2, 0.3, 0.4],
                          "recall@50": [0.2, 0.3, 0.5, 0.6], "n": [9, 5, 9, 5], "prior_beta": [4.0, 2.0, 1.0, 0.5],
                          "prior_recall@10": [0.15, 0.2, 0.32, 0.4], "prior_recall@50": [0.25, 0.3, 0.54, 0.6]})
    chosen = prior_choice(curve, "redial")
    assert (chosen.beta, chosen.n, chosen.step) == (1, 9, 72) and isinstance(chosen.beta, int)  # named as params.yaml names it
    assert chosen.score == pytest.approx((0.32 + 0.54) / 2) and chosen.score_without == pytest.approx((0.3 + 0.5) / 2)
    assert prior_choice(curve, "inspired").beta == 0.5
    assert prior_choice(curve.drop(columns=["prior_beta", "prior_recall@10", "prior_recall@50"]), "redial") is None
    assert prior_choice(pd.DataFrame({"step": []}), "redial") is None  # no validation ran (a header-only curve)


def test_the_evaluate_stage_reads_the_beta_from_the_validation_curve(tmp_path, monkeypatch):
    import yaml

    import stages.evaluate as stage

    params = yaml.safe_load((stage.ROOT / "profiles/small.yaml").read_text())
    monkeypatch.setattr(stage, "ROOT", tmp_path)
    assert stage.eval_settings(params, "redial").prior is None  # no curve: evaluate chooses beta itself
    (tmp_path / "plots").mkdir()
    curve = tmp_path / stage.VALIDATION_CURVE
    curve.write_text("step\n")  # fine-tuning without validation
    assert stage.eval_settings(params, "redial").prior is None
    curve.write_text("step,dataset,recall@10,recall@50,n,prior_beta,prior_recall@10,prior_recall@50\n"
                     "0,redial,0.04,0.10,1239,8,0.07,0.18\n72,redial,0.08,0.19,1239,1,0.08,0.20\n"
                     "72,inspired,0.14,0.28,319,0.5,0.15,0.29\n")
    chosen = stage.eval_settings(params, "redial").prior
    assert (chosen.beta, chosen.step, chosen.n) == (1, 72, 1239)
    assert stage.eval_settings(params, "inspired").prior.beta == 0.5


def test_the_evaluate_stage_takes_the_dm_prior_and_weight_validate_dm_chose(tmp_path, monkeypatch):
    import json
    import math

    import pandas as pd
    import yaml

    import stages.evaluate as stage
    from pipeline.errors import MissingArtifactError
    from pipeline.tasks import templates

    params = yaml.safe_load((stage.ROOT / "profiles/small.yaml").read_text())
    with pytest.raises(MissingArtifactError, match="validate_dm"):
        stage.dm_validation(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / stage.DM_VALIDATION).write_text(json.dumps({"weight": 0.5, "accuracy": 0.4, "n": 150}))
    assert stage.dm_validation(tmp_path)["weight"] == 0.5
    dm_train = pd.DataFrame({"actions": [["Recommend", "Explain"]] * 3 + [["Chat"]] + [[]],
                             "prompt": [templates.dialogue_management_prompt(f"Seeker: {t}")
                                        for t in ("a movie please", "any movie please", "movie please", "bye now", "hm")]})
    settings = stage.recommender_settings(params, dm_train, stage.dm_validation(tmp_path))  # no prior named: shares
    assert settings.dm_choices == [["Recommend", "Explain"], ["Chat"]] and settings.dm_weight == 0.5
    assert settings.dm_log_prior == pytest.approx([math.log(0.75), math.log(0.25)]) and settings.dm_head == {}
    head = stage.recommender_settings(params, dm_train, {"prior": "head", "l2": 0.01, "weight": 0.0}).dm_head
    assert head["choices"] == settings.dm_choices and head["l2"] == 0.01 and "last:please" in head["vocabulary"]
    monkeypatch.setattr(stage, "ROOT", tmp_path)
    assert stage.eval_settings(params, "redial").max_dm_generation == params["eval"]["max_dm_generation"]


def test_a_list_without_the_named_items_is_scored_on_the_dedup_gold_by_hand():
    from pipeline.evaluation.metrics import Instance, without_named

    lists = {"a": ["x", "g1", "y"], "b": ["y", "z", "g2"]}
    named = {"a": {"x"}, "b": set()}
    instances = [Instance("a", "d1", ["g1", "x"], [False, True]), Instance("b", "d2", ["g2"], [False])]
    out = without_named(lists, named, instances, 2, "sys", bootstrap=10, seed=0)
    # a: [g1, y] finds g1 at rank 1 (x, named and seen, is neither kept nor gold); b: [y, z] misses g2 within k = 2
    assert out["sys.filtered.dedup.recall@1.per_item"] == 0.5 and out["sys.filtered.dedup.recall@10.per_item"] == 0.5
    assert out["sys.filtered.dedup.recall@1.per_item.n"] == 2
    assert not any(".full." in key for key in out)
