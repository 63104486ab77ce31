"""Dialogue management's choice (pipeline.dm_policy): choices, prior, the weighted decision, the validation
split and the weight sweep, with numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.dm_policy import (DMValidation, best_weight, dm_choices, dm_decide, dm_log_prior, validation_split,
                                weight_sweep)
from pipeline.errors import DataError, ParamError


def test_dm_choices_are_the_frequent_training_sequences():
    train = [["Recommend", "Explain"]] * 5 + [["Chat"]] * 3 + [["Explain", "Recommend"]] * 1 + [["Request"]] * 1 + [[]]
    assert dm_choices(train, min_share=0.1) == [["Recommend", "Explain"], ["Chat"], ["Explain", "Recommend"], ["Request"]]
    assert dm_choices(train, min_share=0.2) == [["Recommend", "Explain"], ["Chat"]]  # 5 and 3 of 10 with an action


def test_log_prior_is_the_share_among_the_choices():
    train = [["Recommend", "Explain"]] * 6 + [["Chat"]] * 2 + [["Request"]] * 1 + [[]]
    prior = dm_log_prior(train, [["Recommend", "Explain"], ["Chat"]])  # 6 and 2 of the 8 turns with a choice
    assert prior == pytest.approx([math.log(0.75), math.log(0.25)])
    with pytest.raises(DataError, match="no training turn"):
        dm_log_prior(train, [["Respond"]])


def test_decision_weighs_the_evidence_against_the_prior():
    evidence = np.array([[0.0, 1.0, 3.0],    # the third is the model's favourite by 3 nats
                         [0.5, 0.0, 0.0]])
    prior = [math.log(0.6), math.log(0.3), math.log(0.1)]  # differences: 0.69 and 1.79 nats behind the first
    assert dm_decide(evidence, prior, 0.0).tolist() == [0, 0]  # the prior alone: the majority sequence
    # weight 1: row 0 scores -0.51, 1 - 1.20 = -0.20, 3 - 2.30 = 0.70 -> the third; row 1 stays with the first
    assert dm_decide(evidence, prior, 1.0).tolist() == [2, 0]
    # weight 0.25: row 0: -0.51, 0.25 - 1.20 = -0.95, 0.75 - 2.30 = -1.55 -> the first
    assert dm_decide(evidence, prior, 0.25).tolist() == [0, 0]
    assert dm_decide(np.array([[1.0, 1.0]]), [], 1.0).tolist() == [0]  # no prior: uniform; a tie goes to the first
    with pytest.raises(ParamError, match="2 prior shares for 3 choices"):
        dm_decide(evidence, prior[:2], 1.0)


def frame(rows: list[tuple[str, list[str]]]) -> pd.DataFrame:
    return pd.DataFrame({"instance_id": [f"t{i}" for i in range(len(rows))], "dialogue_id": [d for d, _ in rows],
                         "prompt": ["p"] * len(rows), "actions": [a for _, a in rows]})


def test_validation_split_holds_out_whole_dialogues():
    rows = [(f"iard:{d}", [["Recommend"], ["Chat"], ["Respond"]][t % 3]) for d in range(40) for t in range(5)]
    fit, valid = validation_split(frame(rows), 0.25, 0, seed=0)
    assert len(fit) + len(valid) == 200 and len(valid) % 5 == 0  # every turn of a held-out dialogue
    assert not set(fit.dialogue_id) & set(valid.dialogue_id)
    assert valid.dialogue_id.nunique() == 10  # a quarter of 40
    again, capped = validation_split(frame(rows), 0.25, 7, seed=0)
    assert len(capped) == 7 and set(capped.instance_id) <= set(valid.instance_id) and again.equals(fit)
    assert set(validation_split(frame(rows), 0.25, 0, seed=1)[1].dialogue_id) != set(valid.dialogue_id)
    two = frame([("a", ["Chat"]), ("b", ["Request"]), ("b", ["Chat"])])
    for fraction in (0.0, 0.3, 1.0):  # one dialogue each way, whatever the fraction
        fit, valid = validation_split(two, fraction, 0, seed=0)
        assert fit.dialogue_id.nunique() == valid.dialogue_id.nunique() == 1
    with pytest.raises(DataError, match="at least 2"):
        validation_split(frame([("a", ["Chat"])] * 3), 0.5, 0, seed=0)


def test_weight_sweep_and_the_chosen_weight():
    choices = [["Recommend", "Explain"], ["Chat"]]
    prior = [math.log(0.75), math.log(0.25)]  # Chat is 1.10 nats behind
    evidence = np.array([[0.0, 2.0], [0.0, 0.5], [0.0, 1.5], [0.0, -1.0]])
    gold = [["Chat"], ["Explain", "Recommend"], ["Explain", "Recommend"], ["Explain", "Recommend"]]
    sweep = weight_sweep(evidence, choices, prior, gold, [0, 1, 4])
    # weight 0: Recommend+Explain everywhere -> rows 1-3 right; micro-F1 2tp / (2tp + fp + fn): tp 6, fp 2, fn 1 -> 12/15
    # weight 1: Chat where the evidence beats 1.10 nats (rows 0, 2) -> rows 0, 1, 3 right; tp 5, fp 1, fn 2 -> 10/13
    # weight 4: Chat where it beats 0.27 (rows 0, 1, 2) -> rows 0, 3 right; tp 3, fp 2, fn 4 -> 6/12
    assert sweep["accuracy"].tolist() == [0.75, 0.75, 0.5]
    assert sweep["micro_f1"].tolist() == pytest.approx([12 / 15, 10 / 13, 6 / 12])
    assert best_weight(sweep) == 0.0  # tied accuracy: the better micro-F1
    assert best_weight(sweep.assign(micro_f1=[0.7, 0.9, 0.1])) == 1.0
    assert best_weight(sweep.assign(micro_f1=0.8)) == 0.0  # a full tie: the smaller weight
    with pytest.raises(ParamError):
        best_weight(sweep.head(0))
    fit = frame([("a", ["Recommend", "Explain"])] * 3 + [("b", ["Chat"])])
    valid = frame([("c", g) for g in gold])
    chosen = DMValidation.from_sweep(sweep, fit, valid)
    assert (chosen.weight, chosen.accuracy, chosen.n, chosen.dialogues) == (0.0, 0.75, 4, 1)
    assert (chosen.majority_accuracy, chosen.majority_micro_f1) == (0.75, pytest.approx(0.8))


def test_finetune_trains_dialogue_management_on_no_validation_dialogue():
    from stages.finetune import dm_training_turns

    rows = [(f"iard:{d}", [["Recommend"], ["Chat"]][t % 2]) for d in range(20) for t in range(3)]
    params = {"seed": 3, "eval": {"dm_validation": {"fraction": 0.2, "max_turns": 2, "weights": [0]}}}
    trained = dm_training_turns(params, frame(rows))
    _, valid = validation_split(frame(rows), 0.2, 0, seed=3)  # validate_dm's whole held-out set, before its cap
    assert len(trained) == 60 - 12 and not set(trained.dialogue_id) & set(valid.dialogue_id)
