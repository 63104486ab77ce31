"""FAISS indexes: the approximate kinds against exact search on the same vectors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ParamError
from pipeline.retrieval.index import build_index, search, write_index


def corpus(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def test_flat_is_exact_inner_product():
    vectors = corpus(300)
    queries = corpus(10, seed=1)
    scores, ids = search(build_index(vectors), queries, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize("kind, min_overlap", [("hnsw", 0.9), ("ivf", 0.8)])
def test_approximate_indexes_against_exact_search(kind, min_overlap):
    vectors = corpus()
    queries = vectors[:50] + 0.05 * corpus(50, seed=2)  # near-duplicates of known rows
    exact = search(build_index(vectors), queries, 10)[1]
    approx = search(build_index(vectors, kind=kind), queries, 10)[1]
    assert approx[:, 0].tolist() == list(range(50))  # each query finds its own row first
    assert overlap(exact, approx) >= min_overlap  # top-10 recall of the approximate index vs exact


def test_search_caps_k_at_the_corpus_size_and_indexes_round_trip(tmp_path):
    import faiss

    vectors = corpus(7)
    index = build_index(vectors)
    _, ids = search(index, vectors[:2], 50)
    assert ids.shape == (2, 7)
    write_index(index, tmp_path / "x.faiss")
    assert (search(faiss.read_index(str(tmp_path / "x.faiss")), vectors[:2], 3)[1] == search(index, vectors[:2], 3)[1]).all()
    with pytest.raises(ParamError, match="mining.index: .lsh.; expected one of"):
        build_index(vectors, kind="lsh")
