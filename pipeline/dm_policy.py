"""Dialogue management's decision and how it is chosen on validation dialogues.

An action sequence is chosen per turn (``dm_decide``) by a log prior over the training split's frequent sequences
(``dm_choices``) plus ``weight`` times the fine-tuned model's calibrated evidence
(``pipeline.recommender.dm_evidence``). The prior is either the sequences' training shares (the same for every
turn: the majority sequence wins at weight 0) or the **DM head** (``DMHead``): a multinomial logistic regression over
the sequences on a turn's words (its last two utterances) and length, fitted on the training turns. The head is an
extension of the paper's model (whose dialogue management is generation alone), reported as such; it uses no LLM.

The prior (shares, or the head at each L2 strength) and the weight are chosen together (``dm_sweep``,
``best_setting``) on IARD *training* turns of a seeded share of the training dialogues (the held-out IARD
dialogues are the test split, read by ``evaluate`` alone); the other training turns fit the choices, their shares and
the head while choosing (``evaluate`` then refits them on every training turn), and fine-tuning does not train on
the validation dialogues (``stages.finetune.dm_training_turns``). The best exact-set accuracy wins (ties: the better
micro-F1, then the simpler prior: shares before the head, the stronger L2 first; then the smaller weight).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from pipeline import templates
from pipeline.data.common import hash_fraction
from pipeline.errors import DataError, ParamError
from pipeline.instructions import ACTIONS, cap
from pipeline.metrics import dialogue_management_metrics, majority_action_set, parse_actions

# dialogue management chooses among the action sequences of at least this share of the training turns
DM_CHOICE_MIN_SHARE = 0.01
# the columns of plots/dm_validation.csv
SWEEP_COLUMNS = ["prior", "l2", "weight", "accuracy", "micro_f1", "n"]
SHARES, HEAD = "shares", "head"  # the two priors: the choices' training shares, or the DM head (``DMHead``)
HEAD_MIN_COUNT = 3  # a feature is in the head's vocabulary when at least this many training turns have it
_CONTEXT_START, _CONTEXT_END = templates.dialogue_management_prompt("\x00").split("\x00")
_WORD = re.compile(r"[a-z0-9']+|[?!]")
_MENTION = re.compile(r"\(\d{4}\)")  # a catalogue title as the contexts write it: "Title (Year)"
_LENGTHS = ((1, "1"), (2, "2"), (4, "3-4"), (8, "5-8"), (float("inf"), "9+"))


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


def dm_decide(evidence: np.ndarray, log_prior: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """Index of the chosen action sequence per row of ``evidence`` (``dm_evidence``): the largest
    ``weight * evidence + log prior`` (ties: the first choice, the more frequent). The log prior is one value per
    choice (``dm_log_prior``: weight 0 is then the most frequent sequence every time, on IARD the majority action
    set's usual order) or one row per turn (``DMHead.log_prior``); weight 1 takes the calibrated model at its word.
    Choices are sequences: two orders of one set are two choices, each with its own share."""
    prior = np.asarray(log_prior, dtype=np.float64)
    prior = np.zeros(evidence.shape[1]) if prior.size == 0 and prior.ndim == 1 else prior
    if prior.shape not in ((evidence.shape[1],), evidence.shape):
        raise ParamError(f"dialogue management: a prior of shape {prior.shape} for {evidence.shape[0]} turns and "
                         f"{evidence.shape[1]} choices; expected one log share per choice (dm_log_prior of the same "
                         "dm_choices) or one row per turn (DMHead.log_prior)")
    return np.argmax(weight * evidence + (prior if prior.ndim == 2 else prior[None, :]), axis=1)


def free_generation(generate: Callable[[list[str]], list[str]],
                    turns: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    """The paper's unconstrained dialogue management on ``turns`` (built DM prompts and gold actions): ``generate``
    writes an output per prompt, and the actions it names (``<a>...</a>``) are scored against the turn's: (parse
    rate, accuracy, micro-F1 and n; the outputs). ``evaluate`` runs it on test turns, ``validate_dm`` on its own."""
    outputs = generate(turns["prompt"].tolist())
    parsed = [parse_actions(o, ACTIONS) for o in outputs]
    return dialogue_management_metrics(parsed, [list(a) for a in turns["actions"]], ACTIONS), outputs


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


# ----------------------------------------------------------------------------- the DM head
def dm_context(prompt: str) -> list[str]:
    """The utterance lines ("Seeker: ...") of a built DM prompt (``templates.dialogue_management_prompt``)."""
    text = prompt[len(_CONTEXT_START):] if prompt.startswith(_CONTEXT_START) else prompt
    text = text[: -len(_CONTEXT_END)] if _CONTEXT_END and text.endswith(_CONTEXT_END) else text
    return [line for line in text.split("\n") if line.strip()]


def dm_features(prompt: str) -> set[str]:
    """The head's features of one DM prompt: who spoke last and the words of the last utterance (``last``) and of
    the one before (``prev``), whether each names a movie (a "(year)"), and the number of utterances shown."""
    lines = dm_context(prompt)
    features = set()
    for tag, line in (("last", lines[-1] if lines else ""), ("prev", lines[-2] if len(lines) > 1 else "")):
        speaker, sep, text = line.partition(": ")
        speaker, text = (speaker, text) if sep else ("", line)
        features.add(f"{tag}-speaker:{speaker}")
        features.update(f"{tag}:{w}" for w in _WORD.findall(text.lower()))
        if _MENTION.search(text):
            features.add(f"{tag}:<movie>")
    n = len(lines)
    features.add("utterances:" + next(label for bound, label in _LENGTHS if n <= bound))
    return features


@dataclass(frozen=True)
class DMHead:
    """A multinomial logistic regression over the choices (``dm_choices``) on ``dm_features``: the per-turn log
    prior of ``dm_decide``. Fitted on the training turns whose sequence is a choice; the vocabulary is the features
    of at least ``HEAD_MIN_COUNT`` of them. Kept as plain lists, so it travels in ``RecommenderSettings`` (JSON)."""

    choices: list[list[str]]
    vocabulary: list[str]
    weights: list[list[float]]  # one row per vocabulary feature, one column per choice
    bias: list[float]
    l2: float

    @classmethod
    def fit(cls, prompts: list[str], actions: list[list[str]], choices: list[list[str]], l2: float) -> "DMHead":
        if len(prompts) != len(actions):
            raise ParamError(f"DM head: {len(prompts)} prompts for {len(actions)} action sequences; expected one each")
        index = {tuple(c): j for j, c in enumerate(choices)}
        rows = [(dm_features(p), index[tuple(a)]) for p, a in zip(prompts, actions) if tuple(a) in index]
        if not rows:
            raise DataError("DM head: no training turn has one of the choices; expected the choices' own turns")
        counts = Counter(f for features, _ in rows for f in features)
        vocabulary = sorted(f for f, n in counts.items() if n >= HEAD_MIN_COUNT)
        x = torch.from_numpy(_design([f for f, _ in rows], {f: i for i, f in enumerate(vocabulary)}))
        y = torch.tensor([label for _, label in rows])
        w = torch.zeros(len(vocabulary), len(choices), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(choices), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            value = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
            value.backward()
            return value

        opt.step(loss)
        return cls([list(c) for c in choices], vocabulary, w.detach().numpy().tolist(), b.detach().numpy().tolist(),
                   float(l2))

    @cached_property
    def _arrays(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """The vocabulary's index, the weights and the bias as arrays: built once per head, not once per turn."""
        w = np.asarray(self.weights, dtype=np.float64).reshape(len(self.vocabulary), len(self.bias))
        return {f: i for i, f in enumerate(self.vocabulary)}, w, np.asarray(self.bias, dtype=np.float64)

    def log_prior(self, prompts: list[str]) -> np.ndarray:
        """log P(choice | turn), one row per prompt."""
        index, w, bias = self._arrays
        logits = _design([dm_features(p) for p in prompts], index) @ w + bias
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DMHead":
        return cls(**d)


def _design(features: list[set[str]], index: dict[str, int]) -> np.ndarray:
    """0/1 rows over the vocabulary (features outside it are dropped)."""
    x = np.zeros((len(features), len(index)), dtype=np.float64)
    for row, fs in enumerate(features):
        x[row, [index[f] for f in fs if f in index]] = 1.0
    return x
