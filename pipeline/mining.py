"""Hard-negative mining with FAISS over ReFICR_INIT embeddings (paper Eq. 2 and Eq. 3), and the ranking
instances that need the same retrieval.

All vectors are L2-normalised float32, so inner product = cosine. The index is exact (``IndexFlatIP``) by
default; ``hnsw`` and ``ivf`` are options for large corpora, and ``use_gpu`` moves the index to every GPU
faiss-gpu sees.

- ``mine_item_negatives`` (Eq. 2): per query, the ``pool`` most similar items, minus its gold items (and,
  optionally, the items mentioned in its context), the first ``k`` kept.
- ``mine_conversation_negatives`` (Eq. 3): per query, the ``pool`` most similar training conversations
  (query instruction vs. sample instruction), rescored ``sim(C_i, C_j) - sim(d_i, d_j)``, where
  ``sim(d_i, d_j)`` aggregates the gold items' similarities (``max`` over pairs by default: a conversation
  whose gold is close to *any* of ours is penalised; ``mean`` is the alternative); conversations that share a
  gold item or come from the same dialogue are removed; the top ``k`` kept.
- ``build_ranking_instances``: the top-N candidates, gold inserted when missing, shuffled with a seed,
  numbered [1]..[N]; target = gold identifiers first, then the rest by INIT similarity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import faiss
import numpy as np


def build_index(vectors: np.ndarray, kind: str = "flat", use_gpu: bool = False, nlist: int = 256, hnsw_m: int = 32):
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
    else:
        raise ValueError(f"index kind {kind!r}; expected flat, hnsw or ivf")
    if use_gpu:
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            raise RuntimeError("mining.use_gpu is set but faiss sees no GPU (install faiss-gpu on a CUDA machine)")
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


@dataclass
class MiningStats:
    queries: int
    gold_in_pool: float  # fraction of (query, gold item) pairs whose gold item was in the pool
    mean_positive_sim: float
    mean_negative_sim: float
    short_lists: int  # queries that got fewer than k negatives

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def mine_item_negatives(
    query_vecs: np.ndarray,
    item_vecs: np.ndarray,
    item_ids: list[str],
    golds: list[list[str]],
    k: int,
    pool: int,
    index=None,
    exclude: list[list[str]] | None = None,
) -> tuple[list[list[str]], MiningStats]:
    """Eq. 2. ``exclude`` (optional) lists further items to skip per query (e.g. mentioned in its context)."""
    index = index if index is not None else build_index(item_vecs)
    scores, ids = search(index, query_vecs, pool)
    position = {item: row for row, item in enumerate(item_ids)}
    negatives, pos_sims, neg_sims = [], [], []
    hits = total = short = 0
    for q in range(len(query_vecs)):
        gold = set(golds[q])
        skip = gold | set(exclude[q] if exclude else ())
        pooled = [item_ids[i] for i in ids[q] if i >= 0]
        hits += sum(1 for g in gold if g in pooled)
        total += len(gold)
        chosen = [(item_ids[i], float(s)) for i, s in zip(ids[q], scores[q]) if i >= 0 and item_ids[i] not in skip][:k]
        short += len(chosen) < k
        negatives.append([item for item, _ in chosen])
        neg_sims += [s for _, s in chosen]
        pos_sims += [float(query_vecs[q] @ item_vecs[position[g]]) for g in gold if g in position]
    stats = MiningStats(len(query_vecs), hits / max(total, 1), float(np.mean(pos_sims)) if pos_sims else 0.0,
                        float(np.mean(neg_sims)) if neg_sims else 0.0, short)
    return negatives, stats


def gold_similarity(gold_a: list[int], gold_b: list[int], item_vecs: np.ndarray, aggregation: str) -> float:
    sims = item_vecs[gold_a] @ item_vecs[gold_b].T
    if aggregation == "max":
        return float(sims.max())
    if aggregation == "mean":
        return float(sims.mean())
    raise ValueError(f"aggregation {aggregation!r}; expected max or mean")


def mine_conversation_negatives(
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    query_golds: list[list[str]],
    doc_golds: list[list[str]],
    query_dialogues: list[str],
    doc_dialogues: list[str],
    item_vecs: np.ndarray,
    item_ids: list[str],
    k: int,
    pool: int,
    aggregation: str = "max",
    index=None,
) -> tuple[list[list[int]], MiningStats]:
    """Eq. 3. Returns, per query, the row numbers (into ``doc_vecs``) of its negatives, best first."""
    index = index if index is not None else build_index(doc_vecs)
    scores, ids = search(index, query_vecs, pool)
    position = {item: row for row, item in enumerate(item_ids)}
    negatives, neg_sims = [], []
    short = 0
    for q in range(len(query_vecs)):
        gold = set(query_golds[q])
        gold_rows = [position[g] for g in query_golds[q] if g in position]
        rescored = []
        for j, s in zip(ids[q], scores[q]):
            if j < 0 or doc_dialogues[j] == query_dialogues[q] or gold & set(doc_golds[j]):
                continue
            their = [position[g] for g in doc_golds[j] if g in position]
            penalty = gold_similarity(gold_rows, their, item_vecs, aggregation) if gold_rows and their else 0.0
            rescored.append((float(s) - penalty, int(j), float(s)))
        rescored.sort(key=lambda t: (-t[0], t[1]))
        chosen = rescored[:k]
        short += len(chosen) < k
        negatives.append([j for _, j, _ in chosen])
        neg_sims += [s for _, _, s in chosen]
    stats = MiningStats(len(query_vecs), float("nan"), float("nan"), float(np.mean(neg_sims)) if neg_sims else 0.0, short)
    return negatives, stats


@dataclass
class RankingInstance:
    candidates: list[str]  # item ids in prompt order: [1] is candidates[0]
    target_ids: list[int]  # 1-based identifiers, best first


def build_ranking_instance(retrieved: list[str], gold: list[str], n: int, seed_key: str) -> RankingInstance:
    """Top-``n`` retrieved items with the gold items put in when missing (they replace the lowest-ranked
    non-gold ones), shuffled with a seed; target = gold first (in gold order), then by retrieval rank."""
    gold = [g for g in gold][:n]
    top = list(retrieved[:n])
    missing = [g for g in gold if g not in top]
    keep = [x for x in top if x in gold] + [x for x in top if x not in gold]
    keep = keep[: n - len(missing)] if missing else keep
    chosen = keep + missing
    rank = {item: r for r, item in enumerate(retrieved)}
    order = gold + sorted((x for x in chosen if x not in gold), key=lambda x: rank.get(x, len(rank)))
    shuffled = list(chosen)
    random.Random(seed_key).shuffle(shuffled)
    ident = {item: i + 1 for i, item in enumerate(shuffled)}
    return RankingInstance(shuffled, [ident[x] for x in order if x in ident])


def format_ranking_target(target_ids: list[int]) -> str:
    return "\n".join(f"[{i}]" for i in target_ids)
