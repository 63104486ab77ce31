"""Losses against values worked out by hand on 2-d toy vectors (temperature 1 unless stated)."""

from __future__ import annotations

import pytest
import torch

from pipeline.training.losses import in_batch_info_nce, joint_loss, key_overlap_mask, mined_negatives_loss

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_in_batch_info_nce_by_hand():
    docs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # q0: logits (1, 0.6) -> log(1 + e^-0.4) = 0.513015 ; q1: logits (0, 0.8) -> log(1 + e^-0.8) = 0.371101
    assert in_batch_info_nce(Q, docs, 1.0).item() == pytest.approx((0.513015 + 0.371101) / 2, abs=1e-5)
    # temperature 0.5 doubles the logits: log(1 + e^-0.8) and log(1 + e^-1.6) = 0.371101, 0.183903
    assert in_batch_info_nce(Q, docs, 0.5).item() == pytest.approx((0.371101 + 0.183903) / 2, abs=1e-5)


def test_in_batch_false_negative_is_masked_but_own_positive_never():
    docs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    mask = torch.tensor([[True, True], [False, False]])  # q0: d1 is a false negative (and d0 its positive)
    # q0 now has only its positive: loss 0 ; q1 unchanged 0.371101
    assert in_batch_info_nce(Q, docs, 1.0, mask).item() == pytest.approx(0.371101 / 2, abs=1e-5)


DOCS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # [p0, n0, p1, n1]


def test_mined_negatives_per_query_only():
    # q0 sees (p0=1, n0=0); q1 sees (p1=1, n1=0): log(1 + e^-1) = 0.313262 each
    loss = mined_negatives_loss(Q, DOCS, 1.0, group_size=2, in_batch=False)
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)


def test_mined_negatives_with_in_batch_negatives():
    # q0 scores (1, 0, 0, 1) over [p0, n0, p1, n1]: -log(e / (2e + 2)) = log(2 + 2/e) = 1.006409; q1 alike
    loss = mined_negatives_loss(Q, DOCS, 1.0, group_size=2, in_batch=True)
    assert loss.item() == pytest.approx(1.006409, abs=1e-5)
    # n1 is in fact q0's gold item: masked, q0 -> log(1 + 2/e) = 0.551445
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 3] = True
    mask[0, 0] = True  # a query's own positive is never masked
    loss = mined_negatives_loss(Q, DOCS, 1.0, group_size=2, in_batch=True, false_negative=mask)
    assert loss.item() == pytest.approx((0.551445 + 1.006409) / 2, abs=1e-5)


def test_in_batch_off_really_ignores_other_queries_documents():
    """The reference code's flag did nothing; here changing another group's documents must not matter."""
    other = DOCS.clone()
    other[2:] = torch.tensor([[5.0, 5.0], [-3.0, 2.0]])
    a = mined_negatives_loss(Q[:1], DOCS[:2], 1.0, 2, in_batch=False)
    b = mined_negatives_loss(Q, other, 1.0, 2, in_batch=False) * 2 - mined_negatives_loss(Q[1:], other[2:], 1.0, 2, in_batch=False)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    with pytest.raises(ValueError, match="3 documents for 2 queries"):
        mined_negatives_loss(Q, DOCS[:3], 1.0, 2)


def test_key_overlap_mask_and_joint_loss():
    mask = key_overlap_mask([{"a", "b"}, {"c"}], [{"a"}, {"c"}, {"d"}])
    assert mask.tolist() == [[True, False, False], [False, True, False]]
    out = joint_loss(torch.tensor(2.0), torch.tensor(3.0), lambda_cl=0.5, lambda_gen=2.0)
    assert out.loss.item() == pytest.approx(7.0) and out.loss_cl.item() == 2.0 and out.loss_gen.item() == 3.0
