"""Collaborative signals over the training dialogues, as scores over the whole catalogue (one row per query):

- ``CoMention``: items named in the same training dialogue as the items the context names (an item-item kNN);
- ``ConversationKNN``: the gold items of the most similar training contexts, similarity by TF-IDF over the context's
  words and the ids of the items it names (a conversation kNN);
- ``EmbeddingKNN``: the same neighbour vote with similarity given by embeddings (ReFICR's encoder);
- ``popularity_distribution``: the training split's recommendation counts.

Every signal becomes a per-query distribution over the catalogue (``as_distribution``), and ``mixture`` adds them with
weights; ``choose_weights`` / ``choose_setting`` pick weights and settings on a validation split by
``validation_score`` (the mean of Recall@10 and @50 per gold item). They are what a practitioner tries first
(the collaborative baselines) and part of what ``retrieval+knowledge`` fuses (``pipeline.workflow.fusion``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.retrieval.corpus import gold_rows

log = logging.getLogger(__name__)

CUTOFFS = (10, 50)  # the validation score: mean Recall per item at these cut-offs


# ----------------------------------------------------------------------------- scores as distributions
def as_distribution(scores: np.ndarray) -> np.ndarray:
    """Each row of non-negative scores divided by its sum (a row of zeros stays zeros: the signal abstains)."""
    scores = np.asarray(scores, dtype=np.float32)
    total = scores.sum(axis=1, keepdims=True)
    return np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def popularity_distribution(counts: np.ndarray) -> np.ndarray:
    """Training recommendation counts (catalogue order) plus one, normalised: never zero, so it breaks every tie."""
    smoothed = np.asarray(counts, dtype=np.float64) + 1.0
    return (smoothed / smoothed.sum()).astype(np.float32)


def mixture(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """sum_s weights[s] * parts[s]; a part is [queries, items] or one [items] row shared by every query."""
    rows = max(len(p) for p in parts.values() if p.ndim == 2)
    items = next(iter(parts.values())).shape[-1]
    out = np.zeros((rows, items), dtype=np.float32)
    for name, weight in weights.items():
        if weight:
            out += np.float32(weight) * parts[name]
    return out


def top_without(scores: np.ndarray, item_ids: Sequence[str], left_out, k: int) -> list[str]:
    """The ``k`` best-scoring items (ties: catalogue order) that are not in ``left_out``."""
    skip = set(left_out)
    return [item_ids[i] for i in np.argsort(-scores, kind="stable") if item_ids[i] not in skip][:k]


# ----------------------------------------------------------------------------- choosing on validation
def gold_ranks(scores: np.ndarray, gold_rows: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based rank of each (query, gold item) pair in its query's row, ties counted against the gold item
    (pessimistic): the number of items scoring at least as high, other than itself. One row of scores serves every query.
    A comparison per row, not a sort (``catalogue.recall_per_item`` sorts each row: too slow for a grid of weights)."""
    scores = np.broadcast_to(scores, (len(gold_rows), scores.shape[-1]))
    ranks = []
    for row, gold in zip(scores, gold_rows):
        for g in gold:
            ranks.append(int((row >= row[g]).sum()) - 1)
    return np.asarray(ranks, dtype=np.int64)


def validation_score(scores: np.ndarray, gold_rows: Sequence[Sequence[int]], cutoffs=CUTOFFS) -> float:
    """Mean over ``cutoffs`` of Recall@k per gold item (nan without gold)."""
    ranks = gold_ranks(scores, gold_rows)
    if not len(ranks):
        return float("nan")
    return float(np.mean([(ranks < k).mean() for k in cutoffs]))


def simplex_grid(names: Sequence[str], step: float) -> list[dict[str, float]]:
    """Every weighting of ``names`` with weights in multiples of ``step`` that sum to 1."""
    units = round(1 / step)
    out = []
    for cut in itertools.combinations(range(units + len(names) - 1), len(names) - 1):
        bounds = (-1, *cut, units + len(names) - 1)
        out.append({n: round((bounds[i + 1] - bounds[i] - 1) * step, 6) for i, n in enumerate(names)})
    return out


def choose_weights(parts: dict[str, np.ndarray], gold_rows: Sequence[Sequence[int]], step: float,
                   floor: dict[str, float] | None = None) -> tuple[dict[str, float], float, int]:
    """The weights on the simplex grid (``step``) whose mixture scores best on validation; ties: the first in grid
    order. ``floor``: a small fixed weight added to a part whatever the grid says (popularity, to break ties), when
    scoring; the weights returned are the grid's. Returns the weights, their score and how many were tried."""
    best, best_score = None, -1.0
    grid = simplex_grid(list(parts), step)
    for weights in grid:
        mixed = {n: w + (floor or {}).get(n, 0.0) for n, w in weights.items()}
        score = validation_score(mixture(parts, mixed), gold_rows)
        if score > best_score + 1e-12:
            best, best_score = weights, score
    return best, best_score, len(grid)


@dataclass
class SettingChoice:
    """One setting chosen among several on validation, and its score."""

    chosen: object
    score: float


def choose_setting(settings: Sequence, scores_for: Callable[[object], np.ndarray], gold_rows: Sequence[Sequence[int]],
                   tiebreak: np.ndarray) -> SettingChoice:
    """The setting whose scores (plus ``tiebreak``, a small per-item row) score best on validation; ties: the first."""
    best, best_score = settings[0], -1.0
    for setting in settings:
        score = validation_score(scores_for(setting) + tiebreak, gold_rows)
        if score > best_score + 1e-12:
            best, best_score = setting, score
    return SettingChoice(best, best_score)


# ----------------------------------------------------------------------------- item co-mention
class CoMention:
    """Items named in the same training dialogue: ``C[a, b]`` = training dialogues naming both a and b (a != b);
    a context scores item b by ``sum over its named items a of C[a, b] / (n_a^0.5 * n_b^beta)`` (``n``: dialogues
    naming the item; beta trades an item's co-mentions against its popularity, chosen on validation)."""

    def __init__(self, dialogue_items: Sequence[Sequence[str]], item_ids: Sequence[str]):
        self.row = {item: r for r, item in enumerate(item_ids)}
        rows, cols = [], []
        for d, items in enumerate(dialogue_items):
            for item in dict.fromkeys(i for i in items if i in self.row):
                rows.append(d)
                cols.append(self.row[item])
        incidence = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                  shape=(len(dialogue_items), len(self.row)))
        together = (incidence.T @ incidence).tocsr()
        self.dialogues = np.asarray(together.diagonal(), dtype=np.float32)  # n_item
        together.setdiag(0)
        together.eliminate_zeros()
        self.together = together

    def scores(self, context_items: Sequence[Sequence[str]], beta: float) -> np.ndarray:
        """[contexts, items]: the context's named items' co-mention scores (zeros where it names none known)."""
        n = np.maximum(self.dialogues, 1.0)
        query = sp.lil_matrix((len(context_items), len(self.row)), dtype=np.float32)
        for q, items in enumerate(context_items):
            for item in dict.fromkeys(i for i in items if i in self.row):
                query[q, self.row[item]] = 1.0 / np.sqrt(n[self.row[item]])
        out = np.asarray((query.tocsr() @ self.together).todense(), dtype=np.float32)
        return out / n[None, :] ** np.float32(beta)


# ----------------------------------------------------------------------------- neighbour votes
def neighbour_votes(similarity: np.ndarray, gold_rows: Sequence[Sequence[int]], n_items: int, neighbours: int,
                    power: float) -> np.ndarray:
    """[queries, items]: each query's ``neighbours`` most similar training contexts vote for their gold items with
    weight ``max(similarity, 0) ** power``."""
    k = min(neighbours, similarity.shape[1])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.maximum(np.take_along_axis(similarity, top, axis=1), 0.0) ** np.float32(power)
    rows = np.repeat(np.arange(len(similarity)), k)
    votes = sp.csr_matrix((weights.ravel().astype(np.float32), (rows, top.ravel())), shape=similarity.shape)
    return np.asarray((votes @ _gold_matrix(gold_rows, n_items)).todense(), dtype=np.float32)


def _gold_matrix(gold_rows: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    rows = [r for r, gold in enumerate(gold_rows) for _ in gold]
    cols = [g for gold in gold_rows for g in gold]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(gold_rows), n_items))


def item_tokens(items: Sequence[str]) -> str:
    """A context's named items as words TF-IDF can match ("item_<n>" per item, in catalogue-id-safe form)."""
    return " ".join("item_" + "".join(ch if ch.isalnum() else "_" for ch in i) for i in items)


class NeighbourVote:
    """Training contexts with their gold items (as catalogue rows): the neighbours that vote (``neighbour_votes``)."""

    def __init__(self, gold: Sequence[Sequence[str]], item_ids: Sequence[str]):
        self.row = {item: r for r, item in enumerate(item_ids)}
        self.gold_rows = gold_rows(gold, self.row)

    def scores(self, similarity: np.ndarray, neighbours: int, power: float = 1.0) -> np.ndarray:
        return neighbour_votes(similarity, self.gold_rows, len(self.row), neighbours, power)


class ConversationKNN(NeighbourVote):
    """The gold items of the most similar training contexts, similarity = cosine of TF-IDF vectors (sublinear term
    frequency, English stop words kept out) of the context's words plus ``item_tokens`` of the items it names."""

    def __init__(self, texts: Sequence[str], context_items: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                 item_ids: Sequence[str]):
        super().__init__(gold, item_ids)
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", dtype=np.float32)
        self.train = self.vectorizer.fit_transform([self.document(t, c) for t, c in zip(texts, context_items)])

    @staticmethod
    def document(text: str, items: Sequence[str]) -> str:
        return f"{text} {item_tokens(items)}"

    def similarity(self, texts: Sequence[str], context_items: Sequence[Sequence[str]]) -> np.ndarray:
        query = self.vectorizer.transform([self.document(t, c) for t, c in zip(texts, context_items)])
        return np.asarray((query @ self.train.T).todense(), dtype=np.float32)


class EmbeddingKNN(NeighbourVote):
    """The neighbour vote of ``ConversationKNN`` with similarity = inner product of L2-normalised embeddings."""

    def __init__(self, vectors: np.ndarray, gold: Sequence[Sequence[str]], item_ids: Sequence[str]):
        super().__init__(gold, item_ids)
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def similarity(self, query_vectors: np.ndarray) -> np.ndarray:
        return np.asarray(query_vectors, dtype=np.float32) @ self.vectors.T
