"""Item offsets fitted after fine-tuning (``pipeline.training.item_offsets``, stage ``fit_items``): fitting by hand, the
validation figures by hand, the adoption rule, and what evaluate reads back. The stage itself runs on real slices
in tests/test_end_to_end.py (the tiny profile with the catalogue objective)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from pipeline.errors import DataError
from pipeline.training.catalogue import offset_table
from pipeline.training.item_offsets import (
    OFFSETS_CHOICE,
    OFFSETS_FILE,
    OffsetChoice,
    adopted_offsets,
    fit_offsets,
    validation_side,
)

SQRT_HALF = 0.5 ** 0.5


def test_fitting_moves_the_gold_item_toward_its_queries_and_is_seeded():
    # three items on the unit circle; two queries along x both name item 2, which sits on y: cosine 0
    table = torch.tensor([[1.0, 0.0], [SQRT_HALF, SQRT_HALF], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    before = (queries @ table.T)[0].tolist()
    assert before[2] == 0.0 and before[0] == 1.0
    seen = []
    offsets = fit_offsets(queries, [[2], [2]], table, None, temperature=0.1, lr=0.05, epochs=3, batch_size=1, seed=0,
                          after_epoch=lambda epoch, o: seen.append((epoch, o.clone())))
    assert [e for e, _ in seen] == [1, 2, 3] and torch.equal(seen[-1][1], offsets)
    moved = offset_table(table.numpy(), offsets.numpy())
    assert np.allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-6)
    after = queries[0].numpy() @ moved.T
    assert after[2] > before[2] + 0.1  # the gold item came toward the queries
    assert after[1] < before[1]  # a competitor at 45 degrees was pushed away (item 0, parallel to the queries, has no gradient)
    # Adam's first step moves every coordinate with a nonzero gradient by about lr: item 2 along +x
    assert seen[0][1][2, 0] == pytest.approx(2 * 0.05, rel=0.05)  # two batches of one, both pushing item 2 along +x
    again = fit_offsets(queries, [[2], [2]], table, None, temperature=0.1, lr=0.05, epochs=3, batch_size=1, seed=0)
    assert torch.equal(again, offsets)


def test_fitting_masks_a_querys_other_gold_items_and_needs_pairs():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[SQRT_HALF, SQRT_HALF]])
    # one context naming both items: each is the target once, the other masked, so its loss is 0 and nothing moves
    offsets = fit_offsets(queries, [[0, 1]], table, None, temperature=0.1, lr=0.1, epochs=1, batch_size=2, seed=0)
    assert torch.count_nonzero(offsets) == 0
    with pytest.raises(DataError, match="no \\(query, gold item\\) pair"):
        fit_offsets(queries, [[]], table, None, temperature=0.1, lr=0.1, epochs=1, batch_size=2, seed=0)
    with pytest.raises(DataError, match="dimension 3"):
        fit_offsets(torch.ones(1, 3), [[0]], table, None, temperature=0.1, lr=0.1, epochs=1, batch_size=2, seed=0)


def test_validation_figures_by_hand():
    # two contexts, four items; context 0's gold: items 1 (seen in the context) and 3; context 1's gold: item 0
    scores = np.array([[0.0, 3.0, 2.0, 1.0],
                       [0.0, 1.0, 3.0, 2.0]])
    prior = np.array([3.0, 0.0, 0.0, 0.0])  # log counts: only item 0 was recommended in training
    full, dedup = [[1, 3], [0]], [[3], [0]]
    side = validation_side(scores, prior, full, dedup, betas=[0, 1])
    # Recall@k per item with k in (10, 50) over four items is 1 for every gold item: the ranks decide ties only
    assert side["retrieval"]["full"]["n"] == 3 and side["retrieval"]["dedup"]["n"] == 2
    assert side["prior_score"] == side["prior_score_beta0"] == 1.0 and side["prior_beta"] == 0  # a tie: the smaller beta


def test_adoption_rule_by_hand(tmp_path):
    def side(score, dedup50):
        return {"prior_score": score, "prior_score_beta0": score - 0.01, "prior_beta": 1,
                "retrieval": {"dedup": {"recall@50": dedup50}}, "retrieval+prior": {"full": {"n": 7}}}

    kept = OffsetChoice.decide("inspired", side(0.20, 0.30), side(0.25, 0.30), {"contexts": 5})
    assert kept.adopted and kept.prior(72).beta == 1 and kept.prior(72).n == 7 and kept.prior(72).step == 72
    assert kept.prior(72).score == 0.25 and kept.prior(72).score_without == pytest.approx(0.24)
    assert not OffsetChoice.decide("inspired", side(0.20, 0.30), side(0.25, 0.29), {}).adopted  # dedup R@50 dropped
    assert not OffsetChoice.decide("inspired", side(0.20, 0.30), side(0.20, 0.40), {}).adopted  # no better: equal
    assert OffsetChoice.decide("inspired", side(0.20, 0.30), side(0.20, 0.40), {}).prior(72) is None
    # what evaluate reads back: the offsets only where they were adopted
    folder = tmp_path / "inspired"
    folder.mkdir()
    assert adopted_offsets(folder, "inspired", 3) == (None, None)  # a run without the stage
    (folder / OFFSETS_CHOICE).write_text(json.dumps(kept.to_json()))
    with pytest.raises(DataError, match="re-run `dvc repro fit_items@inspired`"):
        adopted_offsets(folder, "inspired", 3)  # adopted, but the tensor file is missing
    save_file({"inspired": np.ones((3, 2), dtype=np.float32)}, str(folder / OFFSETS_FILE))
    offsets, choice = adopted_offsets(folder, "inspired", 3)
    assert offsets.shape == (3, 2) and choice == kept
    with pytest.raises(DataError, match="4 rows"):
        adopted_offsets(folder, "inspired", 4)
    rejected = OffsetChoice.decide("inspired", side(0.20, 0.30), side(0.25, 0.29), {})
    (folder / OFFSETS_CHOICE).write_text(json.dumps(rejected.to_json()))
    assert adopted_offsets(folder, "inspired", 3) == (None, rejected)
