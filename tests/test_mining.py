"""Eq. 2 and Eq. 3 mining and ranking instances on toy corpora with known answers (embeddings given)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.retrieval.mining import mine_conversation_negatives, mine_item_negatives


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
    # our gold items A, B; candidate conversations d0 (gold C = A's vector) and d1 (gold D, halfway between A and B).
    # sim(C_i, d0) = 0.9, sim(C_i, d1) = 0.8. max: penalty(d0) = 1.0, penalty(d1) = 0.707 -> d1 (0.093) beats d0 (-0.1).
    # mean: penalty(d0) = (1 + 0) / 2 = 0.5, penalty(d1) = 0.707 -> d0 (0.4) beats d1 (0.093).
    items = unit([1, 0], [0, 1], [1, 0], [1, 1])
    docs = unit([0.9, np.sqrt(1 - 0.81)], [0.8, 0.6])
    args = (unit([1, 0]), docs, [["A", "B"]], [["C"], ["D"]], ["q"], ["x", "y"], items, ["A", "B", "C", "D"])
    negs_max, _ = mine_conversation_negatives(*args, k=2, pool=2, aggregation="max")
    negs_mean, _ = mine_conversation_negatives(*args, k=2, pool=2, aggregation="mean")
    assert negs_max == [[1, 0]]
    assert negs_mean == [[0, 1]]
    with pytest.raises(ValueError, match="aggregation"):
        mine_conversation_negatives(*args, k=1, pool=1, aggregation="min")


def test_item_negatives_follow_the_learned_bias_of_a_catalogue_trained_init(tmp_path):
    """INIT trained against a fixed table (the catalogue objective) scores cos + bias: mining searches [item, bias]
    against [query, 1] (ItemCorpus.augment), so a large bias pulls an item up the negatives."""
    import json

    from safetensors.numpy import save_file

    from pipeline.retrieval.corpus import ItemCorpus
    from pipeline.training.catalogue import trained_item_side

    (tmp_path / "reficr_adapter.json").write_text(json.dumps({"retrieval_objective": "catalogue", "temperature": 0.5}))
    save_file({"toy": np.array([0.0, 0.0, 0.0, 2.0], dtype=np.float32)}, str(tmp_path / "item_bias.safetensors"))
    table, bias = trained_item_side(tmp_path, "toy", ITEMS)
    assert table is ITEMS and bias.tolist() == [0.0, 0.0, 0.0, 1.0]  # temperature x bias
    query = unit([1, 0])
    negs, _ = mine_item_negatives(ItemCorpus.augment(query, 1.0), ItemCorpus.augment(table, bias), IDS, [["i0"]], k=2, pool=3)
    assert negs == [["i3", "i1"]]  # i3: cos 0 + 1.0 beats i1: 0.8
    with pytest.raises(ValueError, match="expected a bias of 3 items"):
        trained_item_side(tmp_path, "toy", ITEMS[:3])
    (tmp_path / "reficr_adapter.json").write_text(json.dumps({"retrieval_objective": "in_batch", "temperature": 0.5}))
    assert trained_item_side(tmp_path, "toy", ITEMS) == (None, None)  # the adapter embeds the items itself


def test_a_centred_item_table_spreads_an_anisotropic_catalogue_and_is_scored_as_trained(tmp_path):
    """``item_table: centered``: the table minus its mean, rows re-normalised; an adapter whose manifest says so
    gets the same transform back from trained_item_side, wherever it is scored (mining, evaluation, chat)."""
    import json

    from pipeline.errors import DataError
    from pipeline.training.catalogue import item_table, trained_item_side

    # three items in a narrow cone around (1, 0): raw cosines 0.98 / 0.92, centred they point apart
    raw = unit([1, 0.2], [1, -0.2], [1, 0.0])
    centred = item_table(raw, "centered")
    mean = raw.mean(axis=0)
    expected = (raw - mean) / np.linalg.norm(raw - mean, axis=1, keepdims=True)
    np.testing.assert_allclose(centred, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-6)
    assert float(raw[0] @ raw[1]) > 0.9 and float(centred[0] @ centred[1]) < -0.9  # the cone opened up
    assert item_table(raw, "base") is raw
    with pytest.raises(DataError, match="item table 'whitened'"):
        item_table(raw, "whitened")
    (tmp_path / "reficr_adapter.json").write_text(json.dumps({"retrieval_objective": "catalogue", "temperature": 0.5,
                                                              "item_table": "centered"}))
    table, bias = trained_item_side(tmp_path, "toy", raw)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    assert bias is None  # no bias file: cosine alone
    (tmp_path / "reficr_adapter.json").write_text(json.dumps({"retrieval_objective": "catalogue", "temperature": 0.5,
                                                              "item_table": "whitened"}))
    with pytest.raises(DataError, match=r"reficr_adapter.json: item_table 'whitened'"):
        trained_item_side(tmp_path, "toy", raw)
