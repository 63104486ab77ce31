"""Popularity: how often recommenders name each item in the training split. A baseline (``popularity``), the prior
of retrieval+prior and of the catalogue objective, and the tie-break of every collaborative signal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

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


