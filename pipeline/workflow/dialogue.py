"""Dialogue management's decision (paper Sec. 3.2, with a calibrated prior as an extension).

An action sequence is chosen per turn (``dm_decide``) by a log prior over the training split's frequent sequences
(``dm_choices``) plus ``weight`` times the fine-tuned model's calibrated evidence (``dm_evidence``: each choice's
log-likelihood as the output's start, less the same under an empty conversation). The prior is either the
sequences' training shares (the same for every turn: the majority sequence wins at weight 0) or the **DM head**
(``DMHead``): a multinomial logistic regression over the sequences on a turn's words (its last two utterances) and
length, fitted on the training turns. The head is an extension of the paper's model (whose dialogue management is
generation alone), reported as such; it uses no LLM. The prior and the weight are chosen on validation dialogues by
``pipeline.evaluation.dm_validation``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.errors import DataError, ParamError
from pipeline.model.lm import RetrievableLM
from pipeline.model.scoring import score_endings
from pipeline.tasks import templates
from pipeline.tasks.actions import DM_SEPARATOR, action_tags

# dialogue management chooses among the action sequences of at least this share of the training turns
DM_CHOICE_MIN_SHARE = 0.01
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


DM_TAG_TOKENS = 64  # room for a sequence of <a>Action</a> tags (three actions take ~20 tokens)


def dm_starts(choices: list[list[str]]) -> list[str]:
    """Each choice as the start of a DM output: its tags and ``DM_SEPARATOR`` (which ends a sequence, so that a
    longer one is not penalised for the tokens a shorter one lacks)."""
    return [action_tags(c) + DM_SEPARATOR for c in choices]


def dm_null(lm: RetrievableLM, choices: list[list[str]], prompt_length: int) -> np.ndarray:
    """Each choice's log-likelihood as the output's start under the content-free prompt (an empty conversation)."""
    return score_endings(lm, templates.dialogue_management_prompt(""), dm_starts(choices), prompt_length, DM_TAG_TOKENS,
                         eos=False)


def dm_evidence(lm: RetrievableLM, prompts: list[str], choices: list[list[str]], prompt_length: int,
                progress: bool | None = None, null: np.ndarray | None = None) -> np.ndarray:
    """(prompts, choices): log-likelihood of each choice as the start of the output, minus the same under the
    content-free prompt (``dm_null``, given or computed): what the conversation adds to the model's preference,
    with its preference for a sequence whatever the conversation taken out (contextual calibration, Zhao et al.,
    ICML 2021). ``dm_decide`` weighs it against the training prior."""
    starts = dm_starts(choices)
    null = dm_null(lm, choices, prompt_length) if null is None else null
    show = progress if progress is not None else len(prompts) > 20
    rows = [score_endings(lm, p, starts, prompt_length, DM_TAG_TOKENS, eos=False)
            for p in tqdm(prompts, desc="dialogue management", unit="turn", disable=not show)]
    return np.stack(rows) - null[None, :] if rows else np.zeros((0, len(choices)))
