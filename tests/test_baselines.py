"""The baselines on toy corpora whose answers are worked out by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluation.baselines import BM25Retriever, context_echo
from pipeline.retrieval.popularity import item_counts, popularity_ranking, training_gold


def test_popularity_counts_training_recommendations_ties_in_corpus_order():
    corpus = ["a", "b", "c", "d"]
    train_gold = [["c"], ["b", "c"], ["b"], ["c"], ["x"]]  # c: 3, b: 2, a and d: 0, x is not in the corpus
    assert popularity_ranking(train_gold, corpus) == ["c", "b", "a", "d"]


def test_training_gold_reads_only_the_training_split_and_feeds_the_counts():
    rec_turns = pd.DataFrame({"split": ["train", "valid", "train", "test", "train"],
                              "gold_item_ids": [["a"], ["b"], ["b", "a"], ["a"], np.array(["c"])]})
    gold = training_gold(rec_turns)
    assert gold == [["a"], ["b", "a"], ["c"]]  # valid and test turns never count
    assert item_counts(gold, ["a", "b", "c", "d"]).tolist() == [2, 1, 1, 0]


def test_context_echo_most_recent_first_then_popularity_without_repeats():
    popular = ["p1", "m1", "p2", "p3"]
    context = [["m1"], [], ["m2", "m1"], ["m3"]]  # oldest first
    assert context_echo(context, popular, 4) == ["m3", "m2", "m1", "p1"]
    assert context_echo([], popular, 2) == ["p1", "m1"]


def test_bm25_ranks_the_item_that_shares_the_rare_words_first():
    ids = ["alien", "toy", "heat", "up"]
    descriptions = ["Alien (1979). Genres: horror, science fiction. A crew meets a creature in space.",
                    "Toy Story (1995). Genres: animation, comedy. Toys come to life.",
                    "Heat (1995). Genres: crime, thriller. A detective hunts a thief in Los Angeles.",
                    "Up (2009). Genres: animation, adventure. An old man flies his house with balloons."]
    bm25 = BM25Retriever(ids, descriptions)
    lists = bm25.retrieve(["I want a scary creature in space", "something with balloons and an old man", "zzz qqq"], k=10)
    assert lists[0][0] == "alien" and lists[1][0] == "up"
    assert all(sorted(lst) == sorted(ids) for lst in lists)  # k is capped at the corpus size, every item listed once
    assert lists[2] == ids  # no shared term: ties broken by corpus order, deterministically


def test_bm25s_is_imported_with_jax_kept_off_the_gpu():
    """bm25s imports JAX where it is installed, and JAX on a GPU takes 75% of its memory at start (an H100 run ran
    out of memory at the first training step): importing our baselines keeps JAX on the CPU unless told otherwise."""
    def jax_platforms(**env: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | env
        code = "import os, pipeline.evaluation.baselines; print(os.environ['JAX_PLATFORMS'])"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()

    assert jax_platforms() == "cpu"
    assert jax_platforms(JAX_PLATFORMS="cuda") == "cuda"  # an explicit choice stands
