"""Hard-negative mining with FAISS over ReFICR_INIT embeddings (paper Eq. 2 and Eq. 3), and the ranking
instances that need the same retrieval.

All vectors are L2-normalised float32, so inner product = cosine (indexes: ``pipeline.retrieval.index``).

- ``mine_item_negatives`` (Eq. 2): per query, the ``pool`` most similar items, minus its gold items (and,
  optionally, the items mentioned in its context), the first ``k`` kept.
- ``mine_conversation_negatives`` (Eq. 3): per query, the ``pool`` most similar training conversations
  (query instruction vs. sample instruction), rescored ``sim(C_i, C_j) - sim(d_i, d_j)``, where
  ``sim(d_i, d_j)`` aggregates the gold items' similarities (``max`` over pairs by default: a conversation
  whose gold is close to *any* of ours is penalised; ``mean`` is the alternative); conversations that share a
  gold item or come from the same dialogue are removed; the top ``k`` kept.
- ``mine_dataset``: both, for one dataset's training turns, assembled into the rows of
  ``data/negatives/{conv2item,conv2conv,ranking_train}.parquet`` (ranking instances: ``pipeline.tasks.ranking``).
  Short negative lists (a pool too small after removing gold items) are filled with random non-gold
  documents from a seeded RNG, and counted.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.data.items import item_titles
from pipeline.errors import ParamError
from pipeline.model.encoder import Encoder
from pipeline.retrieval.corpus import ConversationStore, ItemCorpus, context_item_lists
from pipeline.retrieval.index import build_index, search
from pipeline.tasks import templates
from pipeline.tasks.ranking import build_ranking_instance, format_ranking_target


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
    raise ParamError(f"mining.conv_aggregation: {aggregation!r}; expected max or mean")


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


# ----------------------------------------------------------------------------- one dataset, end to end
@dataclass(frozen=True, kw_only=True)
class MiningSettings:
    negatives: int  # k: mined negatives per query
    pool: int  # neighbours searched before gold items are removed
    index: str  # flat | hnsw | ivf
    use_gpu: bool
    exclude_context_items: bool
    conv_aggregation: str  # max | mean
    candidates: int  # N: candidates in a ranking instance
    knowledge_utterances: int  # last utterances of the similar conversation shown as knowledge
    seed: int


@dataclass
class MinedDataset:
    conv2item: list[dict]
    conv2conv: list[dict]
    ranking: list[dict]
    report: dict
    indexes: dict = field(default_factory=dict)  # name -> faiss index, saved beside the negatives


def fill_short_list(chosen: list, k: int, pool: list, forbidden: set, rng: random.Random) -> tuple[list, bool]:
    """``chosen`` topped up to ``k`` with random members of ``pool`` outside ``forbidden``; and whether it was."""
    if len(chosen) >= k:
        return chosen[:k], False
    options = [x for x in pool if x not in forbidden and x not in chosen]
    return chosen + rng.sample(options, min(k - len(chosen), len(options))), True


def mine_dataset(dataset: str, encoder: Encoder, items: pd.DataFrame, dialogues: pd.DataFrame, turns: pd.DataFrame,
                 conv2item: pd.DataFrame, conv2conv: pd.DataFrame, s: MiningSettings, rng: random.Random,
                 item_side: tuple[np.ndarray, np.ndarray | None] | None = None) -> MinedDataset:
    """Eq. 2 and Eq. 3 negatives and ranking instances for one dataset's training ``turns`` (and its pairs).
    ``item_side``: INIT's item table and per-item score when it was trained against a fixed table (the
    catalogue objective, ``pipeline.training.catalogue.trained_item_side``); by default the encoder embeds the items."""
    start = time.perf_counter()
    k = s.negatives
    item_ids = items["item_id"].tolist()
    title = item_titles(items)
    description = dict(zip(items["item_id"], items["description"]))
    item_vecs, bias = item_side if item_side is not None else (encoder.items(items["description"].tolist()), None)
    queries = turns["query"].tolist()
    q_item = encoder.conversations(queries, templates.CONV2ITEM_QUERY)
    # retrieval scores cos + bias: searched as one more dimension, [item, bias] . [query, 1] (as ItemCorpus does)
    search_items, q_item = ItemCorpus.augment(item_vecs, bias), ItemCorpus.augment(q_item, None if bias is None else 1.0)
    q_conv = encoder.conversations(queries, templates.CONV2CONV_QUERY)
    d_conv = encoder.conversations(queries, templates.CONV2CONV_SAMPLE)
    golds = [list(g) for g in turns["gold_item_ids"]]
    dialogue_ids = turns["dialogue_id"].tolist()
    item_index = build_index(search_items, s.index, s.use_gpu)
    conv_index = build_index(d_conv, s.index, s.use_gpu)
    exclude = ([sorted({i for ids in utts for i in ids}) for utts in context_item_lists(dialogues, turns["instance_id"].tolist())]
               if s.exclude_context_items else None)
    item_negs, item_stats = mine_item_negatives(q_item, search_items, item_ids, golds, k, s.pool, item_index, exclude)
    conv_negs, conv_stats = mine_conversation_negatives(q_conv, d_conv, golds, golds, dialogue_ids, dialogue_ids, item_vecs,
                                                        item_ids, k, s.pool, s.conv_aggregation, conv_index)
    filled_items = filled_convs = 0
    for q in range(len(turns)):
        item_negs[q], was = fill_short_list(item_negs[q], k, item_ids, set(golds[q]), rng)
        filled_items += was
        if len(conv_negs[q]) < k:
            bad = {j for j in range(len(turns)) if set(golds[j]) & set(golds[q]) or dialogue_ids[j] == dialogue_ids[q]}
            conv_negs[q], _ = fill_short_list(conv_negs[q], k, list(range(len(turns))), bad, rng)
            filled_convs += 1
    row_of = {iid: q for q, iid in enumerate(turns["instance_id"])}
    out = MinedDataset([], [], [], {}, {f"{dataset}_items": item_index, f"{dataset}_conversations": conv_index})
    for pair in conv2item.itertuples():
        negs = item_negs[row_of[pair.instance_id]]
        out.conv2item.append({"dataset": dataset, "instance_id": pair.instance_id, "query": pair.query, "positive": pair.positive,
                              "item_id": pair.item_id, "gold_item_ids": list(pair.gold_item_ids),
                              "negative_ids": negs, "negatives": [description[i] for i in negs]})
    for pair in conv2conv.itertuples():
        negs = conv_negs[row_of[pair.instance_id]]
        out.conv2conv.append({"dataset": dataset, "instance_id": pair.instance_id, "query": pair.query, "positive": pair.positive,
                              "gold_item_ids": list(pair.gold_item_ids), "positive_gold_item_ids": list(pair.positive_gold_item_ids),
                              "negatives": [queries[j] for j in negs], "negative_gold_item_ids": [list(golds[j]) for j in negs]})
    # Ranking instances: INIT top-N candidates, knowledge from the most similar other training conversation.
    _, retrieved = search(item_index, q_item, s.candidates)
    store = ConversationStore(queries, golds, dialogue_ids, d_conv)
    knowledge = store.knowledge(q_conv, dialogue_ids, title, s.knowledge_utterances)
    retrieved_ids = [[item_ids[i] for i in row if i >= 0] for row in retrieved]
    for q, turn in enumerate(turns.itertuples()):
        inst = build_ranking_instance(retrieved_ids[q], golds[q], s.candidates, f"{s.seed}:{turn.instance_id}")
        out.ranking.append({"dataset": dataset, "instance_id": turn.instance_id,
                            "prompt": templates.ranking_prompt(turn.query, [title[c] for c in inst.candidates], knowledge[q]),
                            "target": format_ranking_target(inst.target_ids), "candidates": inst.candidates})
    out.report = {
        "items": len(items), "train_turns": len(turns),
        "item_table": "embedded by INIT" if item_side is None else "base (INIT trained against it)",
        "conv2item": item_stats.as_dict() | {"filled_short_lists": filled_items},
        "conv2conv": {key: v for key, v in conv_stats.as_dict().items() if key in ("queries", "mean_negative_sim", "short_lists")}
        | {"filled_short_lists": filled_convs},
        "gold_in_top_n_candidates": round(float(np.mean([any(g in retrieved_ids[q] for g in golds[q]) for q in range(len(turns))])), 5)
        if len(turns) else 0.0,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return out
