"""Dialogue management's choice (pipeline.workflow.dialogue: choices, prior, the weighted decision, the DM head),
its validation split (pipeline.data.splits) and sweep (pipeline.evaluation.dm_validation), with numbers worked out by
hand."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from pipeline.data.splits import validation_split
from pipeline.errors import DataError, ParamError
from pipeline.evaluation.dm_validation import DMValidation, best_setting, dm_sweep, free_generation
from pipeline.tasks import templates
from pipeline.workflow.dialogue import (
    HEAD,
    SHARES,
    DMHead,
    dm_choices,
    dm_context,
    dm_decide,
    dm_features,
    dm_log_prior,
)


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
    with pytest.raises(ParamError, match=r"a prior of shape \(2,\) for 2 turns and 3 choices"):
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


def test_sweep_and_the_chosen_setting():
    choices = [["Recommend", "Explain"], ["Chat"]]
    prior = np.log([0.75, 0.25])  # Chat is 1.10 nats behind
    evidence = np.array([[0.0, 2.0], [0.0, 0.5], [0.0, 1.5], [0.0, -1.0]])
    gold = [["Chat"], ["Explain", "Recommend"], ["Explain", "Recommend"], ["Explain", "Recommend"]]
    per_turn = np.log([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])  # a head that is right on every turn
    sweep = dm_sweep(evidence, choices, [(SHARES, None, prior), (HEAD, 0.01, per_turn)], gold, [0, 1, 4])
    assert sweep[["prior", "weight"]].values.tolist() == [[SHARES, 0.0], [SHARES, 1.0], [SHARES, 4.0],
                                                          [HEAD, 0.0], [HEAD, 1.0], [HEAD, 4.0]]
    # shares, weight 0: Recommend+Explain everywhere -> rows 1-3 right; micro-F1 2tp / (2tp + fp + fn): tp 6, fp 2, fn 1
    # weight 1: Chat where the evidence beats 1.10 nats (rows 0, 2) -> rows 0, 1, 3 right; tp 5, fp 1, fn 2 -> 10/13
    # weight 4: Chat where it beats 0.27 (rows 0, 1, 2) -> rows 0, 3 right; tp 3, fp 2, fn 4 -> 6/12
    # head (Chat 2.20 nats ahead on row 0, 2.20 behind elsewhere): weight 0 and 1 all right (row 2: 1.5 < 2.2);
    # weight 4: Chat on rows 0, 2 (6 > 2.2) -> 0.75, tp 5, fp 1, fn 2
    assert sweep["accuracy"].tolist() == [0.75, 0.75, 0.5, 1.0, 1.0, 0.75]
    assert sweep["micro_f1"].tolist() == pytest.approx([12 / 15, 10 / 13, 6 / 12, 1.0, 1.0, 10 / 13])
    assert best_setting(sweep) == {"prior": HEAD, "l2": 0.01, "weight": 0.0, "accuracy": 1.0, "micro_f1": 1.0}
    shares = sweep[sweep.prior == SHARES]
    assert best_setting(shares)["weight"] == 0.0  # tied accuracy: the better micro-F1
    assert best_setting(shares.assign(micro_f1=[0.7, 0.9, 0.1]))["weight"] == 1.0
    assert best_setting(shares.assign(micro_f1=0.8))["weight"] == 0.0  # a full tie: the smaller weight
    tie = sweep.assign(accuracy=0.5, micro_f1=0.5)  # a full tie between priors: the shares, then the stronger L2
    assert (best_setting(tie)["prior"], best_setting(tie)["l2"]) == (SHARES, None)
    heads = pd.concat([sweep[sweep.prior == HEAD], sweep[sweep.prior == HEAD].assign(l2=0.1)]).assign(accuracy=0.5)
    assert best_setting(heads.assign(micro_f1=0.5))["l2"] == 0.1
    with pytest.raises(ParamError):
        best_setting(sweep.head(0))
    fit = frame([("a", ["Recommend", "Explain"])] * 3 + [("b", ["Chat"])])
    valid = frame([("c", g) for g in gold])
    chosen = DMValidation.from_sweep(sweep, fit, valid)
    assert (chosen.prior, chosen.l2, chosen.weight, chosen.accuracy, chosen.n, chosen.dialogues) == (HEAD, 0.01, 0.0, 1.0, 4, 1)
    assert (chosen.majority_accuracy, chosen.majority_micro_f1) == (0.75, pytest.approx(0.8))


def prompt(*utterances: tuple[str, str]) -> str:
    return templates.dialogue_management_prompt(
        templates.render_context([{"speaker": s, "text": t} for s, t in utterances], 20, 10_000))


def test_head_features_of_a_built_prompt():
    p = prompt(("recommender", "Hi! What do you like?"), ("seeker", "I loved Alien (1979). Any more like it?"))
    assert dm_context(p) == ["Recommender: Hi! What do you like?", "Seeker: I loved Alien (1979). Any more like it?"]
    assert dm_features(p) == {
        "last-speaker:Seeker", "last:i", "last:loved", "last:alien", "last:1979", "last:any", "last:more",
        "last:like", "last:it", "last:?", "last:<movie>",
        "prev-speaker:Recommender", "prev:hi", "prev:!", "prev:what", "prev:do", "prev:you", "prev:like", "prev:?",
        "utterances:2"}
    assert dm_features(prompt(*[("seeker", "ok")] * 9)) >= {"last:ok", "prev:ok", "utterances:9+"}
    assert dm_features(templates.dialogue_management_prompt("")) == {"last-speaker:", "prev-speaker:", "utterances:1"}


def test_head_learns_the_action_from_the_words():
    asks = [prompt(("seeker", f"hello, can you suggest a {g} movie?")) for g in ("funny", "scary", "sad", "old")]
    likes = [prompt(("seeker", f"i loved {t} so much")) for t in ("Heat (1995)", "Up (2009)", "Jaws (1975)", "Big (1988)")]
    chat = [prompt(("seeker", f"thanks, {w} day to you")) for w in ("good", "great", "nice", "lovely")]
    choices = [["Recommend"], ["Respond", "Recommend"], ["Chat"]]
    actions = [["Recommend"]] * 4 + [["Respond", "Recommend"]] * 4 + [["Chat"]] * 4
    fitted = DMHead.fit(asks + likes + chat, actions, choices, l2=0.01)
    other = prompt(("seeker", "why is that movie good?"))  # its sequence is no choice: left out of the fit
    assert DMHead.fit(asks + likes + chat + [other], actions + [["Explain"]], choices, l2=0.01) == fitted
    assert "last:movie" in fitted.vocabulary and "last:funny" not in fitted.vocabulary  # < 3 turns: no feature
    new = [prompt(("seeker", "can you suggest a movie?")), prompt(("seeker", "i loved Speed (1994)")),
           prompt(("seeker", "thanks, have a good day"))]
    log_prior = fitted.log_prior(new)
    assert np.exp(log_prior).sum(axis=1) == pytest.approx([1, 1, 1])
    assert dm_decide(np.zeros((3, 3)), log_prior, 0.0).tolist() == [0, 1, 2]
    assert DMHead.from_dict(asdict(fitted)).log_prior(new) == pytest.approx(log_prior)  # it travels as JSON
    assert DMHead.fit(asks + likes + chat, actions, choices, l2=0.01) == fitted  # deterministic
    strong = DMHead.fit(asks + likes + chat, actions, choices, l2=1.0)
    assert np.abs(strong.weights).sum() < np.abs(fitted.weights).sum()


def test_head_rejects_what_it_cannot_fit():
    with pytest.raises(ParamError, match="2 prompts for 1 action"):
        DMHead.fit(["a", "b"], [["Chat"]], [["Chat"]], 0.01)
    with pytest.raises(DataError, match="no training turn has one of the choices"):
        DMHead.fit(["a"], [["Request"]], [["Chat"]], 0.01)


def test_decision_with_a_prior_per_turn():
    evidence = np.array([[0.0, 1.0], [0.0, 1.0]])
    per_turn = np.log([[0.9, 0.1], [0.5, 0.5]])  # row 0: 2.20 nats for the first choice; row 1: even
    assert dm_decide(evidence, per_turn, 1.0).tolist() == [0, 1]
    assert dm_decide(evidence, per_turn, 3.0).tolist() == [1, 1]
    with pytest.raises(ParamError, match=r"shape \(3, 2\) for 2 turns"):
        dm_decide(evidence, np.zeros((3, 2)), 1.0)


def test_finetune_trains_dialogue_management_on_no_validation_dialogue():
    from stages.finetune import dm_training_turns

    rows = [(f"iard:{d}", [["Recommend"], ["Chat"]][t % 2]) for d in range(20) for t in range(3)]
    params = {"seed": 3, "eval": {"dm_validation": {"fraction": 0.2, "max_turns": 2, "weights": [0]}}}
    trained = dm_training_turns(params, frame(rows))
    _, valid = validation_split(frame(rows), 0.2, 0, seed=3)  # validate_dm's whole held-out set, before its cap
    assert len(trained) == 60 - 12 and not set(trained.dialogue_id) & set(valid.dialogue_id)


def test_free_generation_scores_the_actions_each_output_names():
    turns = pd.DataFrame({"prompt": ["p1", "p2", "p3"], "actions": [["Recommend"], ["Chat"], ["Explain", "Recommend"]]})
    outputs = {"p1": "<a>Recommend</a> because they said so", "p2": "no tags at all", "p3": "<a>Explain</a>"}
    metrics, written = free_generation(lambda prompts: [outputs[p] for p in prompts], turns)
    assert written == [outputs["p1"], outputs["p2"], outputs["p3"]]
    # by hand: parsed [Recommend], none, [Explain]; one exact set of 3; tp 2 (Recommend, Explain), fp 0, fn 2 (Chat,
    # the third turn's Recommend): precision 1, recall 0.5, micro-F1 2/3; two of three outputs name an action
    assert metrics == pytest.approx({"accuracy": 1 / 3, "micro_f1": 2 / 3, "parse_rate": 2 / 3, "n": 3})
