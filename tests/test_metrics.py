"""Every metric against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    Instance,
    bootstrap_ci,
    dialogue_management_metrics,
    distinct_n,
    majority_action_set,
    paired_difference,
    perplexity,
    recommendation_metrics,
)
from pipeline.tasks.actions import parse_actions

A = Instance("A", "d1", ["x", "y"], [True, False])  # two gold items, x already seen in the context
B = Instance("B", "d2", ["z"], [False])
C = Instance("C", "d3", ["w"], [True])  # dropped from the dedup set
RANKED = {"A": ["y", "a", "x"], "B": ["q", "z"], "C": ["w"]}


def metrics():
    return recommendation_metrics(RANKED, [A, B, C], "sys", ks=(1, 3), bootstrap=200, seed=0)


def test_per_item_and_per_turn_recall_differ_on_a_two_gold_turn():
    m = metrics()
    # per item @1: A:x 0, A:y 1, B:z 0, C:w 1 -> 2/4 ; per turn @1: A 1/2, B 0, C 1 -> 1.5/3
    assert m["sys.full.recall@1.per_item"] == pytest.approx(0.5)
    assert m["sys.full.recall@1.per_turn"] == pytest.approx(0.5)
    assert m["sys.full.recall@1.per_item.n"] == 4 and m["sys.full.recall@1.per_turn.n"] == 3
    # without C: per item 1/3, per turn 0.25 -- the two conventions disagree
    m2 = recommendation_metrics(RANKED, [A, B], "s", ks=(1,), bootstrap=10)
    assert m2["s.full.recall@1.per_item"] == pytest.approx(1 / 3)
    assert m2["s.full.recall@1.per_turn"] == pytest.approx(0.25)


def test_ndcg_and_mrr_by_hand():
    m = recommendation_metrics(RANKED, [A, B], "s", ks=(3,), bootstrap=10)
    # ranks: x 3, y 1, z 2 -> NDCG (1/log2 4 + 1 + 1/log2 3) / 3 ; MRR (1/3 + 1 + 1/2) / 3
    assert m["s.full.ndcg@3"] == pytest.approx((0.5 + 1 + 0.630930) / 3, abs=1e-6)
    assert m["s.full.mrr@3"] == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    assert m["s.full.recall@3.per_item"] == 1.0


def test_dedup_drops_seen_items_and_empty_instances():
    m = metrics()
    # dedup: A -> [y] (hit @1), B -> [z] (miss @1), C dropped
    assert m["sys.dedup.recall@1.per_item"] == pytest.approx(0.5)
    assert m["sys.dedup.recall@1.per_item.n"] == 2
    assert m["sys.dedup.recall@1.per_turn.n"] == 2


def test_bootstrap_ci_on_fixed_samples():
    assert bootstrap_ci([1.0, 1.0, 1.0], ["a", "b", "c"], 100, 0) == (1.0, 1.0)
    # two dialogues with means 0 and 1: resampled means are 0, 0.5, 1 with p = 1/4, 1/2, 1/4
    low, high = bootstrap_ci([0.0, 1.0], ["a", "b"], 4000, 0)
    assert (low, high) == (0.0, 1.0)
    # resampling is by dialogue: three samples of one dialogue move together
    low, high = bootstrap_ci([1.0, 1.0, 1.0, 0.0], ["a", "a", "a", "b"], 4000, 0)
    assert low == 0.0 and high == 1.0
    assert bootstrap_ci([0.3, 0.7], ["a", "b"], 500, seed=3) == bootstrap_ci([0.3, 0.7], ["a", "b"], 500, seed=3)
    m = metrics()
    assert m["sys.full.recall@1.per_item.ci_low"] <= m["sys.full.recall@1.per_item"] <= m["sys.full.recall@1.per_item.ci_high"]


def test_distinct_n_both_definitions():
    responses = [["a", "b", "a", "b"], ["a", "b", "c"]]
    # bigrams: ab ba ab | ab bc -> 5 total, 3 unique
    assert distinct_n(responses, 2) == {"ratio": pytest.approx(0.6), "per_response": pytest.approx(1.5)}
    assert distinct_n([["a"]], 2) == {"ratio": 0.0, "per_response": 0.0}


def test_perplexity_is_exp_of_mean_token_nll():
    assert perplexity([np.array([-1.0, -2.0]), np.array([-3.0])]) == pytest.approx(math.exp(2.0))


def test_dialogue_management_accuracy_and_micro_f1():
    actions = ("Recommend", "Explain", "Chat", "Respond", "Request")
    assert parse_actions("because ... <a>Recommend</a><a>Explain</a><a>Dance</a>", actions) == ["Recommend", "Explain"]
    assert parse_actions("no tags", actions) is None
    m = dialogue_management_metrics([["Recommend"], ["Recommend", "Explain"], None], [["Recommend"], ["Recommend"], ["Chat"]], actions)
    # exact 1/3; tp 2, fp 1 (Explain), fn 1 (Chat) -> P = R = F1 = 2/3; parsed 2/3
    assert m["accuracy"] == pytest.approx(1 / 3) and m["micro_f1"] == pytest.approx(2 / 3)
    assert m["parse_rate"] == pytest.approx(2 / 3) and m["n"] == 3


def test_paired_difference_is_per_sample_and_resamples_dialogues_together():
    instances = [Instance("d1#1", "d1", ["x", "y"], [False, False]), Instance("d2#1", "d2", ["z"], [False])]
    a = {"d1#1": ["x", "q", "y"], "d2#1": ["q", "z"]}  # @1: x hit, y miss, z miss
    b = {"d1#1": ["q", "y", "x"], "d2#1": ["z", "q"]}  # @1: x miss, y miss, z hit
    diff = paired_difference(a, b, instances, k=1, bootstrap=200, seed=0)
    assert diff[""] == pytest.approx((1 + 0 - 1) / 3) and diff[".n"] == 3
    # dialogue d1 contributes (+1, 0), d2 (-1): resampled means lie in [-1, 0.5]; both dialogues drawn twice is -1 or 0.5
    assert -1.0 <= diff[".ci_low"] <= diff[""] <= diff[".ci_high"] <= 0.5
    same = paired_difference(a, a, instances, k=2)
    assert same == {"": 0.0, ".ci_low": 0.0, ".ci_high": 0.0, ".n": 3}


def test_majority_action_set_is_the_most_frequent_set():
    train = [["Request"], ["Recommend", "Explain"], ["Explain", "Recommend"], ["Chat"], ["Request"], ["Recommend", "Explain"]]
    assert majority_action_set(train) == ["Explain", "Recommend"]
    assert majority_action_set([]) == []
