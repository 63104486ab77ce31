"""Eq. 2 and Eq. 3 mining and ranking instances on toy corpora with known answers (embeddings given)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.mining import build_index, build_ranking_instance, format_ranking_target, mine_conversation_negatives, mine_item_negatives, search


def unit(*rows):
    a = np.array(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


ITEMS = unit([1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1])
IDS = ["i0", "i1", "i2", "i3"]


def test_item_negatives_drop_gold_then_keep_the_top_k():
    negs, stats = mine_item_negatives(unit([1, 0]), ITEMS, IDS, [["i0"]], k=2, pool=3)
    assert negs == [["i1", "i2"]]
    assert stats.gold_in_pool == 1.0 and stats.short_lists == 0
    assert stats.mean_positive_sim == pytest.approx(1.0)
    assert stats.mean_negative_sim == pytest.approx((0.8 + 0.6) / 2, abs=1e-6)
    # items mentioned in the context can be excluded too; the pool bounds what is left
    negs, stats = mine_item_negatives(unit([1, 0]), ITEMS, IDS, [["i0"]], k=2, pool=3, exclude=[["i1"]])
    assert negs == [["i2"]] and stats.short_lists == 1
    # a gold item outside the pool is counted
    _, stats = mine_item_negatives(unit([1, 0]), ITEMS, IDS, [["i3"]], k=1, pool=2)
    assert stats.gold_in_pool == 0.0


def test_conversation_negatives_rescored_by_eq3():
    query = unit([1, 0])
    docs = unit([1, 0], [0.96, 0.28], [0.8, 0.6], [0.6, 0.8])
    items = unit([1, 0], [1, 0], [0, 1])  # A (our gold), B (same vector as A), C (orthogonal)
    negs, _ = mine_conversation_negatives(
        query, docs, [["A"]], [["A"], ["A", "C"], ["B"], ["C"]], ["d0"], ["d0", "d1", "d2", "d3"],
        items, ["A", "B", "C"], k=2, pool=4)
    # doc0: same dialogue; doc1: shares gold A -> both removed.
    # doc2: 0.8 - sim(A, B)=1 -> -0.2 ; doc3: 0.6 - sim(A, C)=0 -> 0.6 : doc3 first despite a lower raw similarity
    assert negs == [[3, 2]]


def test_conversation_gold_similarity_aggregation():
    items = unit([1, 0], [0, 1], [1, 0])
    docs = unit([0.8, 0.6])
    args = (unit([1, 0]), docs, [["A", "B"]], [["C"]], ["q"], ["x"], items, ["A", "B", "C"])
    negs_max, _ = mine_conversation_negatives(*args, k=1, pool=1, aggregation="max")
    negs_mean, _ = mine_conversation_negatives(*args, k=1, pool=1, aggregation="mean")
    assert negs_max == negs_mean == [[0]]
    with pytest.raises(ValueError, match="aggregation"):
        mine_conversation_negatives(*args, k=1, pool=1, aggregation="min")


def test_index_kinds_agree_on_a_small_corpus():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(500, 16)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    exact = search(build_index(corpus), corpus[:5], 3)[1]
    assert exact[:, 0].tolist() == [0, 1, 2, 3, 4]
    hnsw = search(build_index(corpus, kind="hnsw"), corpus[:5], 3)[1]
    assert hnsw[:, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="index kind"):
        build_index(corpus, kind="lsh")


def test_ranking_instance_inserts_gold_shuffles_and_targets_gold_first():
    inst = build_ranking_instance(["a", "b", "c", "d"], ["x"], n=3, seed_key="s:1")
    assert sorted(inst.candidates) == ["a", "b", "x"]
    assert sorted(inst.target_ids) == [1, 2, 3]
    ordered = [inst.candidates[i - 1] for i in inst.target_ids]
    assert ordered == ["x", "a", "b"]
    again = build_ranking_instance(["a", "b", "c", "d"], ["x"], n=3, seed_key="s:1")
    assert again == inst
    # a gold item already retrieved stays; targets list gold first, then retrieval order
    inst = build_ranking_instance(["a", "b", "c", "d"], ["c"], n=3, seed_key="s:2")
    assert [inst.candidates[i - 1] for i in inst.target_ids] == ["c", "a", "b"]
    assert format_ranking_target([2, 1]) == "[2]\n[1]"
    shuffled = {tuple(build_ranking_instance(list("abcdefghij"), ["a"], 10, f"k{i}").candidates) for i in range(5)}
    assert len(shuffled) > 1
