"""Dialogue management's one setting, chosen on validation dialogues: how much the fine-tuned model's calibrated
evidence (``pipeline.recommender.dm_evidence``) counts against the training prior of the action sequences
(``dm_decide``'s ``weight``).

The validation turns are the IARD *training* turns of a seeded share of the training dialogues (the held-out IARD
dialogues are the test split, read by ``evaluate`` alone); the other training turns give the choices and their
prior while the weight is chosen (``evaluate`` then refits both on every training turn). The weight that gives the
best exact-set accuracy wins (ties: the better micro-F1, then the smaller weight, i.e. the one closer to the prior
alone). Caveat: fine-tuning draws its DM examples from every training dialogue, these included (the ``small``
profile draws ~48 of 1,500), so a few validation turns may have been trained on; keeping them out of fine-tuning
is the clean fix (it re-runs training).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.data.common import hash_fraction
from pipeline.errors import DataError, ParamError
from pipeline.instructions import ACTIONS, cap
from pipeline.metrics import dialogue_management_metrics, majority_action_set

# dialogue management chooses among the action sequences of at least this share of the training turns
DM_CHOICE_MIN_SHARE = 0.01
# the columns of plots/dm_validation.csv
SWEEP_COLUMNS = ["weight", "accuracy", "micro_f1", "n"]


def dm_choices(train_actions: list[list[str]], min_share: float = DM_CHOICE_MIN_SHARE) -> list[list[str]]:
    """The action sequences of at least ``min_share`` of the training turns, most frequent first (ties: first
    seen): what dialogue management chooses among."""
    counts = Counter(tuple(a) for a in train_actions if len(a))
    floor = min_share * sum(counts.values())
    return [list(a) for a, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= floor]


def dm_log_prior(train_actions: list[list[str]], choices: list[list[str]]) -> list[float]:
    """log share of each choice among the training turns that have one of ``choices`` (the prior of ``dm_decide``)."""
    counts = Counter(tuple(a) for a in train_actions)
    n = np.array([counts[tuple(c)] for c in choices], dtype=np.float64)
    if not len(n) or n.min() <= 0:
        raise DataError("a dialogue-management choice has no training turn; expected every choice among the training turns")
    return np.log(n / n.sum()).tolist()


def fit_choices(train_actions: list[list[str]]) -> tuple[list[list[str]], list[float]]:
    """``dm_choices`` of the training turns and their ``dm_log_prior``, index-aligned (what ``dm_decide`` needs)."""
    choices = dm_choices(train_actions)
    return choices, dm_log_prior(train_actions, choices)


def dm_decide(evidence: np.ndarray, log_prior: Sequence[float], weight: float) -> np.ndarray:
    """Index of the chosen action sequence per row of ``evidence`` (``dm_evidence``): the largest
    ``weight * evidence + log prior`` (ties: the more frequent choice). ``weight`` 0 is the prior alone (the most
    frequent sequence every time: on IARD the majority action set's usual order), 1 the calibrated model taken at
    its word. Choices are sequences: two orders of one set are two choices, each with its own share."""
    prior = np.zeros(evidence.shape[1]) if not len(log_prior) else np.asarray(log_prior, dtype=np.float64)
    if prior.shape != (evidence.shape[1],):
        raise ParamError(f"dialogue management: {len(prior)} prior shares for {evidence.shape[1]} choices; expected one "
                         "per choice (dm_log_prior of the same dm_choices)")
    return np.argmax(weight * evidence + prior[None, :], axis=1)


def validation_split(dm_train: pd.DataFrame, fraction: float, limit: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, valid): the turns of ``fraction`` of the training dialogues (those with the smallest seeded hash; at
    least one, never all) are validation (at most ``limit`` of them, a seeded sample; 0 = all), the other dialogues'
    turns fit the choices and prior."""
    dialogues = sorted(dm_train["dialogue_id"].unique(), key=lambda d: (hash_fraction(f"dm-validation:{d}", seed), d))
    if len(dialogues) < 2:
        raise DataError(f"dialogue-management validation: {len(dialogues)} training dialogue(s); expected at least 2 "
                        "(one to fit the choices, one to validate)")
    held = set(dialogues[: min(max(1, round(fraction * len(dialogues))), len(dialogues) - 1)])
    in_valid = dm_train["dialogue_id"].isin(held)
    fit = dm_train[~in_valid].reset_index(drop=True)
    return fit, cap(dm_train[in_valid].reset_index(drop=True), limit or None, seed)


def weight_sweep(evidence: np.ndarray, choices: list[list[str]], log_prior: list[float], gold: list[list[str]],
                 weights: list[float]) -> pd.DataFrame:
    """Accuracy and micro-F1 of ``dm_decide`` at each weight on the validation turns (one row per weight)."""
    rows = []
    for w in weights:
        predicted = [choices[i] for i in dm_decide(evidence, log_prior, float(w))]
        m = dialogue_management_metrics(predicted, gold, ACTIONS)
        rows.append({"weight": float(w), "accuracy": m["accuracy"], "micro_f1": m["micro_f1"], "n": m["n"]})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def best_weight(sweep: pd.DataFrame) -> float:
    """The weight with the best accuracy; ties: the better micro-F1, then the smaller weight."""
    if sweep.empty:
        raise ParamError("dialogue-management validation swept no weight; expected a list in eval.dm_validation.weights")
    order = sweep.sort_values(["accuracy", "micro_f1", "weight"], ascending=[False, False, True], kind="mergesort")
    return float(order.iloc[0]["weight"])


@dataclass(frozen=True)
class DMValidation:
    """What ``validate_dm`` writes to metrics/dm_validation.json and ``evaluate`` reads."""

    weight: float
    accuracy: float
    micro_f1: float
    majority_accuracy: float  # the fitting turns' majority action set on the same validation turns
    majority_micro_f1: float
    n: int
    dialogues: int

    @classmethod
    def from_sweep(cls, sweep: pd.DataFrame, fit: pd.DataFrame, valid: pd.DataFrame) -> "DMValidation":
        weight = best_weight(sweep)
        row = sweep[sweep["weight"] == weight].iloc[0]
        gold = [list(a) for a in valid["actions"]]
        majority = majority_action_set([list(a) for a in fit["actions"]])
        base = dialogue_management_metrics([majority] * len(gold), gold, ACTIONS)
        return cls(weight, float(row["accuracy"]), float(row["micro_f1"]), base["accuracy"], base["micro_f1"],
                   len(valid), int(valid["dialogue_id"].nunique()))
