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
