"""The evaluation library's pieces that need no model: the registry and top-k selection."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation import PAIRED, SYSTEM_NAMES, SYSTEMS, top_rows


def test_registry_names_are_unique_and_paired_systems_are_scored_on_the_same_sample():
    assert len(SYSTEM_NAMES) == len(set(SYSTEM_NAMES))
    sample = {s.name: s.sample for s in SYSTEMS}
    assert all(sample[a] == sample[b] == "retrieval" for a, b in PAIRED)
    # the base model's systems come before the fine-tuned model is needed, so it is dropped before that one loads
    assert SYSTEM_NAMES.index("base_embedder") < SYSTEM_NAMES.index("retrieval/no_instruction")


def test_top_rows_orders_by_score_then_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_rows(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_rows(scores, 10).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]


def test_beta_ties_within_float_noise_go_to_the_smaller_prior():
    """Two betas with the same validation hits can differ in the last bits (measured on INSPIRED: 0.5 and 2);
    the smaller beta wins such a tie, a real difference still wins."""
    from pipeline.evaluation import choose_beta

    tried = {0: 0.1786833855799373, 0.5: 0.18652037617554856, 1: 0.18495297805642633, 2: 0.1865203761755486}
    assert tried[2] > tried[0.5]  # the float noise that used to pick beta 2
    assert choose_beta(tried) == 0.5
    assert choose_beta(tried | {4: 0.1866}) == 4
