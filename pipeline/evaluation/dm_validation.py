"""Choosing dialogue management's prior and weight on validation dialogues (``validate_dm``), and the paper's
free-generation dialogue management scored against gold actions.

The prior (shares, or the DM head at each L2 strength, ``pipeline.workflow.dialogue``) and the weight are chosen
together (``dm_sweep``, ``best_setting``) on IARD *training* turns of a seeded share of the training dialogues
(``pipeline.data.splits.validation_split``; the held-out IARD dialogues are the test split, read by ``evaluate``
alone). The best exact-set accuracy wins (ties: the better micro-F1, then the simpler prior: shares before the head,
the stronger L2 first; then the smaller weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.errors import ParamError
from pipeline.evaluation.metrics import dialogue_management_metrics, majority_action_set
from pipeline.tasks.actions import ACTIONS, parse_actions
from pipeline.workflow.dialogue import SHARES, dm_decide

# the columns of plots/dm_validation.csv
SWEEP_COLUMNS = ["prior", "l2", "weight", "accuracy", "micro_f1", "n"]


def free_generation(generate: Callable[[list[str]], list[str]],
                    turns: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    """The paper's unconstrained dialogue management on ``turns`` (built DM prompts and gold actions): ``generate``
    writes an output per prompt, and the actions it names (``<a>...</a>``) are scored against the turn's: (parse
    rate, accuracy, micro-F1 and n; the outputs). ``evaluate`` runs it on test turns, ``validate_dm`` on its own."""
    outputs = generate(turns["prompt"].tolist())
    parsed = [parse_actions(o, ACTIONS) for o in outputs]
    return dialogue_management_metrics(parsed, [list(a) for a in turns["actions"]], ACTIONS), outputs


def dm_sweep(evidence: np.ndarray, choices: list[list[str]], priors: list[tuple[str, float | None, np.ndarray]],
             gold: list[list[str]], weights: list[float]) -> pd.DataFrame:
    """Accuracy and micro-F1 of ``dm_decide`` on the validation turns for each prior (name, the head's L2 or None,
    its log prior: one per choice, or one row per turn) at each weight; one row per pair."""
    rows = []
    for name, l2, log_prior in priors:
        for w in weights:
            predicted = [choices[i] for i in dm_decide(evidence, log_prior, float(w))]
            m = dialogue_management_metrics(predicted, gold, ACTIONS)
            rows.append({"prior": name, "l2": l2, "weight": float(w), "accuracy": m["accuracy"],
                         "micro_f1": m["micro_f1"], "n": m["n"]})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def best_setting(sweep: pd.DataFrame) -> dict:
    """The sweep's row with the best accuracy; ties: the better micro-F1, then the simpler prior (the shares, then
    the head with the stronger L2), then the smaller weight (closer to the prior alone)."""
    if sweep.empty:
        raise ParamError("dialogue-management validation swept nothing; expected a list in eval.dm_validation.weights")
    simpler = np.where(sweep["prior"] == SHARES, -np.inf, -sweep["l2"].astype(float).fillna(0.0))
    order = sweep.assign(_simpler=simpler).sort_values(["accuracy", "micro_f1", "_simpler", "weight"],
                                                        ascending=[False, False, True, True], kind="mergesort")
    row = order.iloc[0]
    return {"prior": str(row["prior"]), "l2": None if row["prior"] == SHARES else float(row["l2"]),
            "weight": float(row["weight"]), "accuracy": float(row["accuracy"]), "micro_f1": float(row["micro_f1"])}


@dataclass(frozen=True)
class DMValidation:
    """What ``validate_dm`` writes to metrics/dm_validation.json and ``evaluate`` reads."""

    prior: str  # SHARES or HEAD
    l2: float | None  # the head's L2 strength (None with the shares)
    weight: float
    accuracy: float
    micro_f1: float
    majority_accuracy: float  # the fitting turns' majority action set on the same validation turns
    majority_micro_f1: float
    n: int
    dialogues: int

    @classmethod
    def from_sweep(cls, sweep: pd.DataFrame, fit: pd.DataFrame, valid: pd.DataFrame) -> "DMValidation":
        best = best_setting(sweep)
        gold = [list(a) for a in valid["actions"]]
        majority = majority_action_set([list(a) for a in fit["actions"]])
        base = dialogue_management_metrics([majority] * len(gold), gold, ACTIONS)
        return cls(best["prior"], best["l2"], best["weight"], best["accuracy"], best["micro_f1"], base["accuracy"],
                   base["micro_f1"], len(valid), int(valid["dialogue_id"].nunique()))
