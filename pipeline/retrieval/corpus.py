"""What retrieval searches: the item corpus (Conv2Item) and the store of training conversations (Conv2Conv), how a
score matrix is formed, and the items each context mentions. Embedding matrices are L2-normalised float32; search
is exact inner product (``pipeline.retrieval.index``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.data.schemas import instance_start
from pipeline.retrieval.index import build_index, search
from pipeline.tasks import templates

# Conv2Conv searches this many neighbours to find one from *another* dialogue (a context's own dialogue's
# other turns are its nearest neighbours); a query left with none gets NO_KNOWLEDGE.
KNOWLEDGE_NEIGHBOURS = 8


@dataclass
class ItemCorpus:
    """The items retrieval ranks: by cosine to the query, plus a per-item score ``bias`` when the run learned one
    (``pipeline.training.catalogue``; searched exactly as one more dimension: [item, bias] . [query, 1])."""

    item_ids: list[str]
    vectors: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self):
        self.index = build_index(self.augment(self.vectors, self.bias))

    @staticmethod
    def augment(vectors: np.ndarray, column: np.ndarray | float | None) -> np.ndarray:
        if column is None:
            return vectors
        column = np.broadcast_to(np.asarray(column, dtype=np.float32), (len(vectors),))
        return np.hstack([vectors, column[:, None]]).astype(np.float32)

    def top(self, query_vecs: np.ndarray, k: int) -> list[list[str]]:
        _, ids = search(self.index, self.augment(query_vecs, None if self.bias is None else 1.0), k)
        return [[self.item_ids[i] for i in row if i >= 0] for row in ids]

    def scores(self, query_vecs: np.ndarray) -> np.ndarray:
        """Every item's retrieval score per query [queries, items]: cosine (+ bias)."""
        return rank_scores(query_vecs, self.vectors, self.bias)


@dataclass
class ConversationStore:
    """Training conversations for Conv2Conv: their rendered contexts, gold items and dialogue ids."""

    queries: list[str]
    gold: list[list[str]]
    dialogue_ids: list[str]
    vectors: np.ndarray  # embedded with the Conv2Conv *sample* instruction

    def __post_init__(self):
        self.index = build_index(self.vectors)

    @classmethod
    def from_turns(cls, turns: pd.DataFrame, vectors: np.ndarray) -> "ConversationStore":
        return cls(turns["query"].tolist(), [list(g) for g in turns["gold_item_ids"]], turns["dialogue_id"].tolist(), vectors)

    def knowledge(self, query_vecs: np.ndarray, dialogue_ids: list[str], title: dict[str, str], utterances: int) -> list[str]:
        """For each query, what was recommended to the most similar other conversation, and its last words."""
        _, ids = search(self.index, query_vecs, KNOWLEDGE_NEIGHBOURS)
        out = []
        for row, own in zip(ids, dialogue_ids):
            j = next((int(j) for j in row if j >= 0 and self.dialogue_ids[j] != own), None)
            if j is None:
                out.append(templates.NO_KNOWLEDGE)
                continue
            said = "\n".join(self.queries[j].split("\n")[-utterances:])
            items = ", ".join(title[g] for g in self.gold[j])
            out.append(f"Recommended to a user with a similar conversation: {items}\nTheir last utterances:\n{said}")
        return out


def context_item_lists(dialogues: pd.DataFrame, instance_ids: list[str]) -> list[list[list[str]]]:
    """Per instance: the item ids of each context utterance (before the turn), oldest first."""
    by_dialogue = {d: g.sort_values("turn_index") for d, g in dialogues.groupby("dialogue_id")}
    out = []
    for instance in instance_ids:
        dialogue, start = instance_start(instance)
        rows = by_dialogue[dialogue]
        out.append([list(x) for x in rows.item_ids[rows.turn_index < start]])
    return out


def rank_scores(query_vecs: np.ndarray, table: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """How retrieval scores the catalogue: cosine, plus ``bias`` (already scaled by the temperature) when the run
    learned one."""
    scores = query_vecs @ table.T
    return scores + bias[None, :] if bias is not None else scores


def gold_rows(gold: pd.Series, row: dict[str, int], seen: pd.Series | None = None) -> list[list[int]]:
    """Each context's gold items as table rows (items outside the catalogue skipped); with ``seen``, only the gold
    items not mentioned earlier in the dialogue (the dedup cut)."""
    if seen is None:
        return [[row[g] for g in items if g in row] for items in gold]
    return [[row[g] for g, s in zip(items, flags) if g in row and not s] for items, flags in zip(gold, seen)]


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)
