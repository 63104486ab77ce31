"""FAISS indexes over L2-normalised float32 vectors (inner product = cosine): one home for mining,
retrieval, evaluation and the CLI.

``flat`` (exact inner product) is what every stage uses by default; ``hnsw`` and ``ivf`` are approximate
options for large corpora (tested against exact search in tests/test_index.py); ``use_gpu`` moves the index
to every GPU that faiss-gpu sees.
"""

from __future__ import annotations

import faiss
import numpy as np

from pipeline.errors import CudaRequiredError, ParamError

KINDS = ("flat", "hnsw", "ivf")


def build_index(vectors: np.ndarray, kind: str = "flat", use_gpu: bool = False, nlist: int = 256, nprobe: int = 16,
                hnsw_m: int = 32):
    """An inner-product index holding ``vectors`` (rows = ids 0..n-1). IVF uses at most ``nlist`` lists (and at
    least 39 training points per list, faiss's own minimum) and searches ``nprobe`` of them: faiss's default of 1
    finds under a third of the exact top-10 on unclustered vectors (tests/test_index.py)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, min(nlist, max(1, len(vectors) // 39)), faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, index.nlist)
    else:
        raise ParamError(f"mining.index: {kind!r}; expected one of {KINDS}")
    if use_gpu:
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            raise CudaRequiredError("mining.use_gpu: true, but faiss sees no GPU; expected false here, or faiss-gpu on a "
                                    "CUDA machine")
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``k`` (at most the index size) per query; id -1 where fewer were found."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def write_index(index, path, on_gpu: bool = False) -> None:
    """Save an index (a GPU index is copied to the CPU first: faiss files are CPU indexes)."""
    faiss.write_index(faiss.index_gpu_to_cpu(index) if on_gpu else index, str(path))
