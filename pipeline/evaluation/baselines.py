"""Retrieval baselines that only evaluation uses: the context echo and BM25 (``bm25s``). Popularity lives in
``pipeline.retrieval.popularity`` (training reads its counts too)."""

from __future__ import annotations

import os

# bm25s imports JAX where it is installed (for its top-k), and JAX on a GPU machine takes 75% of the GPU's memory
# the moment it starts: the training and evaluation stages then run out of memory (seen on an H100). BM25's top-k
# is small work on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import bm25s  # noqa: E402
import numpy as np


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
