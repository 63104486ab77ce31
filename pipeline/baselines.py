"""Baselines scored by the same evaluation code on the same instances (EVALUATION.md).

- ``popularity``: items ranked by how often recommenders mention them in the training split;
- ``context_echo``: items mentioned earlier in the dialogue, most recent first, then popularity;
- ``bm25``: BM25 (bm25s, English stop words) between the context and the item descriptions;
- ``base_embedder`` is retrieval with the un-tuned base model: see ``pipeline.recommender``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

# bm25s imports JAX where it is installed (for its top-k), and JAX on a GPU machine takes 75% of the GPU's memory
# the moment it starts: the training and evaluation stages then run out of memory (seen on an H100). BM25's top-k
# is small work on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import bm25s  # noqa: E402
import numpy as np
import pandas as pd


def training_gold(rec_turns: pd.DataFrame) -> list[list[str]]:
    """Gold items of the training split's recommender turns (all of them, not the capped instruction rows): what
    popularity, the item-bias start and ``retrieval+prior`` count."""
    return [list(g) for g in rec_turns[rec_turns["split"] == "train"]["gold_item_ids"]]


def item_counts(train_gold: Iterable[Iterable[str]], corpus: Iterable[str]) -> np.ndarray:
    """How often each corpus item is a gold item of the training split's recommender turns (corpus order)."""
    counts = Counter(item for gold in train_gold for item in gold)
    return np.array([counts.get(item, 0) for item in corpus], dtype=np.float32)


def log_counts(train_gold: Iterable[Iterable[str]], corpus: Iterable[str]) -> np.ndarray:
    """log(1 + ``item_counts``): the catalogue's log-marginal (the item bias' start, retrieval+prior's prior)."""
    return np.log1p(item_counts(train_gold, corpus))


def popularity_ranking(train_gold: list[list[str]], corpus: list[str]) -> list[str]:
    """Corpus items by training-split recommendation count (ties: corpus order), all of them."""
    counts = Counter(item for gold in train_gold for item in gold)
    order = {item: i for i, item in enumerate(corpus)}
    return sorted(corpus, key=lambda item: (-counts.get(item, 0), order[item]))


def context_echo(context_items: list[list[str]], popular: list[str], k: int) -> list[str]:
    """Per utterance list (oldest first): items mentioned in the context, most recent first, then popularity."""
    echoed: list[str] = []
    for items in reversed(context_items):
        for item in items:
            if item not in echoed:
                echoed.append(item)
    return (echoed + [p for p in popular if p not in set(echoed)])[:k]


class BM25Retriever:
    def __init__(self, item_ids: list[str], descriptions: list[str]):
        self.item_ids = item_ids
        self.model = bm25s.BM25()
        self.model.index(bm25s.tokenize(descriptions, stopwords="en", show_progress=False), show_progress=False)

    def retrieve(self, queries: list[str], k: int) -> list[list[str]]:
        tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
        k = min(k, len(self.item_ids))
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(docs, scores):
            # a query sharing no term with any item scores 0 everywhere: keep the order deterministic
            order = np.lexsort((row_docs, -row_scores))
            out.append([self.item_ids[int(row_docs[i])] for i in order])
        return out
