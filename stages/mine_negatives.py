"""DVC stage `mine_negatives` (Eq. 2, Eq. 3) with FAISS over ReFICR_INIT embeddings, and the ranking
instances (top-N INIT candidates + Conv2Conv knowledge) for fine-tuning.

    python -m stages.mine_negatives

Outputs in data/negatives/: conv2item.parquet, conv2conv.parquet, ranking_train.parquet, one FAISS index
per dataset and corpus, mining_report.json. Short negative lists (a pool too small after removing gold
items) are filled with random non-gold documents, seeded, and counted in the report.
"""

from __future__ import annotations

import logging
import os
import random
import time

import faiss
import numpy as np
import pandas as pd

from pipeline import schemas, templates
from pipeline.data.items import item_titles
from pipeline.io import atomic_dir, write_json
from pipeline.recommender import ConversationStore, context_item_lists, ranking_prompt
from pipeline.mining import build_index, build_ranking_instance, format_ranking_target, mine_conversation_negatives, mine_item_negatives, search
from stages._common import ROOT, load_params, setup_logging
from stages._model import lengths, load_lm

log = logging.getLogger("stages.mine_negatives")


def fill(chosen: list, k: int, pool: list, forbidden: set, rng: random.Random) -> tuple[list, bool]:
    if len(chosen) >= k:
        return chosen[:k], False
    options = [x for x in pool if x not in forbidden and x not in chosen]
    return chosen + rng.sample(options, min(k - len(chosen), len(options))), True


def main() -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    k, mining, n_cand = params["negatives"], params["mining"], params["ranking"]["candidates"]
    ln = lengths(params)
    batch = params["embed"]["batch_size"]
    rng = random.Random(params["seed"])
    init = load_lm(params, adapter="models/init", merge=True)
    turns_all = pd.read_parquet("data/instructions/turns_train.parquet")
    c2i_all = pd.read_parquet("data/instructions/conv2item_train.parquet")
    c2c_all = pd.read_parquet("data/instructions/conv2conv_train.parquet")
    out_c2i, out_c2c, out_rank = [], [], []
    report: dict = {"negatives": k, "pool": mining["pool"], "index": mining["index"], "datasets": {}}
    indexes = {}
    for dataset in ("redial", "inspired"):
        start = time.perf_counter()
        items = schemas.read_table(f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
        dialogues = schemas.read_table(f"data/interim/{dataset}/dialogues.parquet", schemas.DIALOGUES)
        turns = turns_all[turns_all.dataset == dataset].reset_index(drop=True)
        item_ids = items["item_id"].tolist()
        title = item_titles(items)
        description = dict(zip(items["item_id"], items["description"]))
        log.info("%s: embedding %d items and %d training contexts (x3) with ReFICR_INIT", dataset, len(items), len(turns))
        item_vecs = init.embed(items["description"].tolist(), templates.CONV2ITEM_SAMPLE, batch_size=batch, max_length=ln.document)
        queries = turns["query"].tolist()
        q_item = init.embed(queries, templates.CONV2ITEM_QUERY, batch_size=batch, max_length=ln.query, truncation_side="left")
        q_conv = init.embed(queries, templates.CONV2CONV_QUERY, batch_size=batch, max_length=ln.query, truncation_side="left")
        d_conv = init.embed(queries, templates.CONV2CONV_SAMPLE, batch_size=batch, max_length=ln.query, truncation_side="left")
        golds = [list(g) for g in turns["gold_item_ids"]]
        item_index = build_index(item_vecs, mining["index"], mining["use_gpu"])
        conv_index = build_index(d_conv, mining["index"], mining["use_gpu"])
        indexes[f"{dataset}_items"], indexes[f"{dataset}_conversations"] = item_index, conv_index
        exclude = ([sorted({i for ids in utts for i in ids}) for utts in context_item_lists(dialogues, turns["instance_id"].tolist())]
                   if mining["exclude_context_items"] else None)
        item_negs, item_stats = mine_item_negatives(q_item, item_vecs, item_ids, golds, k, mining["pool"], item_index, exclude)
        conv_negs, conv_stats = mine_conversation_negatives(
            q_conv, d_conv, golds, golds, turns["dialogue_id"].tolist(), turns["dialogue_id"].tolist(), item_vecs, item_ids,
            k, mining["pool"], mining["conv_aggregation"], conv_index)
        filled_items = filled_convs = 0
        for q in range(len(turns)):
            item_negs[q], was = fill(item_negs[q], k, item_ids, set(golds[q]), rng)
            filled_items += was
            if len(conv_negs[q]) < k:
                bad = {j for j in range(len(turns)) if set(golds[j]) & set(golds[q]) or turns.dialogue_id[j] == turns.dialogue_id[q]}
                conv_negs[q], _ = fill(conv_negs[q], k, list(range(len(turns))), bad, rng)
                filled_convs += 1
        row_of = {iid: q for q, iid in enumerate(turns["instance_id"])}
        for pair in c2i_all[c2i_all.dataset == dataset].itertuples():
            q = row_of[pair.instance_id]
            out_c2i.append({"dataset": dataset, "instance_id": pair.instance_id, "query": pair.query, "positive": pair.positive,
                            "item_id": pair.item_id, "gold_item_ids": list(pair.gold_item_ids),
                            "negative_ids": item_negs[q], "negatives": [description[i] for i in item_negs[q]]})
        for pair in c2c_all[c2c_all.dataset == dataset].itertuples():
            q = row_of[pair.instance_id]
            out_c2c.append({"dataset": dataset, "instance_id": pair.instance_id, "query": pair.query, "positive": pair.positive,
                            "gold_item_ids": list(pair.gold_item_ids), "positive_gold_item_ids": list(pair.positive_gold_item_ids),
                            "negatives": [queries[j] for j in conv_negs[q]],
                            "negative_gold_item_ids": [list(golds[j]) for j in conv_negs[q]]})
        # Ranking instances: INIT top-N candidates, knowledge from the most similar other training conversation.
        _, retrieved = search(item_index, q_item, n_cand)
        store = ConversationStore(queries, golds, turns["dialogue_id"].tolist(), d_conv)
        knowledge = store.knowledge(q_conv, turns["dialogue_id"].tolist(), title, params["ranking"]["knowledge_utterances"])
        for q, turn in turns.iterrows():
            inst = build_ranking_instance([item_ids[i] for i in retrieved[q] if i >= 0], golds[q], n_cand, f"{params['seed']}:{turn.instance_id}")
            prompt = ranking_prompt(turn.query, inst.candidates, title, knowledge[q])
            out_rank.append({"dataset": dataset, "instance_id": turn.instance_id, "prompt": prompt,
                             "target": format_ranking_target(inst.target_ids), "candidates": inst.candidates})
        report["datasets"][dataset] = {
            "items": len(items), "train_turns": len(turns),
            "conv2item": item_stats.as_dict() | {"filled_short_lists": filled_items},
            "conv2conv": {k2: v for k2, v in conv_stats.as_dict().items() if k2 in ("queries", "mean_negative_sim", "short_lists")}
            | {"filled_short_lists": filled_convs},
            "gold_in_top_n_candidates": round(float(np.mean([any(g in [item_ids[i] for i in retrieved[q]] for g in golds[q])
                                                             for q in range(len(turns))])), 5) if len(turns) else 0.0,
            "seconds": round(time.perf_counter() - start, 1),
        }
        log.info("%s mined: %s", dataset, report["datasets"][dataset])
    with atomic_dir(ROOT / "data/negatives") as tmp:
        pd.DataFrame(out_c2i).to_parquet(tmp / "conv2item.parquet", index=False)
        pd.DataFrame(out_c2c).to_parquet(tmp / "conv2conv.parquet", index=False)
        pd.DataFrame(out_rank).to_parquet(tmp / "ranking_train.parquet", index=False)
        for name, index in indexes.items():
            if mining["use_gpu"]:
                index = faiss.index_gpu_to_cpu(index)
            faiss.write_index(index, str(tmp / f"{name}.faiss"))
        write_json(tmp / "mining_report.json", report)


if __name__ == "__main__":
    main()
