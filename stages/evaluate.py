"""DVC stage `evaluate@<dataset>`: the evaluation protocol of EVALUATION.md on the test split.

    python -m stages.evaluate redial      # or inspired

Systems (retrieval lists over the whole corpus, top `eval.top_k`):
- `retrieval` (fine-tuned Conv2Item), `retrieval/no_instruction` (ablation), `base_embedder` (un-tuned base),
  `popularity`, `context_echo`, `bm25` — on the retrieval sample;
- on the generation sample (a seeded subset of it): `retrieval@gen` (the same retrieval on these instances),
  `ranked` (LLM ranking of the top-N, no knowledge), `ranked+knowledge` (the full ReFICR),
  `ranked+knowledge/base` (knowledge retrieved with the un-tuned base), `random_ranking` (ablation).
Conversation: perplexity of gold responses given the gold items (the paper's, an oracle) and given the model's
own top items; Distinct-2/4 (both definitions) on generated responses; generated `<item>` mentions outside
the corpus; ranking-output parse rate. ReDial also gets dialogue management on the held-out IARD dialogues.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

import numpy as np
import pandas as pd

from pipeline import schemas, templates
from pipeline.data.items import item_titles
from pipeline.baselines import BM25Retriever, context_echo, popularity_ranking
from pipeline.instructions import ACTIONS, cap
from pipeline.io import atomic_path, write_json, write_parquet
from pipeline.metrics import (Instance, dialogue_management_metrics, distinct_n, parse_actions, perplexity,
                              recommendation_metrics)
from pipeline.recommender import ConversationStore, ItemCorpus, context_item_lists, rank_with_llm, random_ranking
from stages._common import ROOT, load_params, setup_logging
from stages._model import lengths, load_lm

log = logging.getLogger("stages.evaluate")
ITEM_TAG = re.compile(r"<item>(.*?)</item>")


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()
                log.info("%s ...", name)

            def __exit__(self, *exc):
                timer.times[name] = round(time.perf_counter() - self.start, 1)
                log.info("%s done in %.1f s", name, timer.times[name])

        return _Span()


def main(dataset: str) -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    ev, seed, ln = params["eval"], params["seed"], lengths(params)
    emb_batch = params["embed"]["batch_size"]
    n_cand, top_k = params["ranking"]["candidates"], ev["top_k"]
    timer = Timer()

    items = schemas.read_table(f"data/interim/{dataset}/items.parquet", schemas.ITEMS)
    dialogues = schemas.read_table(f"data/interim/{dataset}/dialogues.parquet", schemas.DIALOGUES)
    rec_turns = schemas.read_table(f"data/interim/{dataset}/rec_turns.parquet", schemas.REC_TURNS)
    turns_test = pd.read_parquet("data/instructions/turns_test.parquet").query("dataset == @dataset").reset_index(drop=True)
    turns_train = pd.read_parquet("data/instructions/turns_train.parquet").query("dataset == @dataset").reset_index(drop=True)
    retr = cap(turns_test, ev["max_retrieval"][dataset] or None, seed)
    gen = cap(retr, ev["max_generation"][dataset] or None, seed)
    log.info("%s: %d test instances, %d in the retrieval sample, %d in the generation sample", dataset, len(turns_test), len(retr), len(gen))
    item_ids = items["item_id"].tolist()
    title = item_titles(items)
    instances = {row.instance_id: Instance(row.instance_id, row.dialogue_id, list(row.gold_item_ids), list(row.gold_seen_in_context))
                 for row in retr.itertuples()}
    retr_instances = [instances[i] for i in retr.instance_id]
    gen_instances = [instances[i] for i in gen.instance_id]
    embed = dict(batch_size=emb_batch)
    q_kw = dict(max_length=ln.query, truncation_side="left", **embed)

    # ---------------------------------------------------------------- base model (baseline, ablation)
    base = load_lm(params)
    base_items = np.load(f"data/embeddings/base/{dataset}_items.npy", allow_pickle=False)
    with timer("base: queries"):
        base_q = base.embed(retr["query"].tolist(), templates.CONV2ITEM_QUERY, **q_kw)
        base_conv_q = base.embed(gen["query"].tolist(), templates.CONV2CONV_QUERY, **q_kw)
        base_conv_d = base.embed(turns_train["query"].tolist(), templates.CONV2CONV_SAMPLE, **q_kw)
    del base

    # ---------------------------------------------------------------- fine-tuned model
    lm = load_lm(params, adapter="models/reficr", merge=True)
    with timer("reficr: items"):
        final_items = lm.embed(items["description"].tolist(), templates.CONV2ITEM_SAMPLE, max_length=ln.document, **embed)
    with timer("reficr: queries"):
        final_q = lm.embed(retr["query"].tolist(), templates.CONV2ITEM_QUERY, **q_kw)
        final_q_plain = lm.embed(retr["query"].tolist(), "", **q_kw)
        final_conv_q = lm.embed(gen["query"].tolist(), templates.CONV2CONV_QUERY, **q_kw)
        final_conv_d = lm.embed(turns_train["query"].tolist(), templates.CONV2CONV_SAMPLE, **q_kw)

    corpus = ItemCorpus(item_ids, [title[i] for i in item_ids], final_items)
    base_corpus = ItemCorpus(item_ids, [title[i] for i in item_ids], base_items)
    lists: dict[str, dict[str, list[str]]] = {}
    with timer("retrieval systems and baselines"):
        lists["retrieval"] = dict(zip(retr.instance_id, corpus.top(final_q, top_k)))
        lists["retrieval/no_instruction"] = dict(zip(retr.instance_id, corpus.top(final_q_plain, top_k)))
        lists["base_embedder"] = dict(zip(retr.instance_id, base_corpus.top(base_q, top_k)))
        popular = popularity_ranking([list(g) for g in rec_turns[rec_turns.split == "train"].gold_item_ids], item_ids)
        lists["popularity"] = {i: popular[:top_k] for i in retr.instance_id}
        ctx_items = context_item_lists(dialogues, retr.instance_id.tolist())
        lists["context_echo"] = {i: context_echo(c, popular, top_k) for i, c in zip(retr.instance_id, ctx_items)}
        bm25 = BM25Retriever(item_ids, items["description"].tolist())
        lists["bm25"] = dict(zip(retr.instance_id, bm25.retrieve(retr["query"].tolist(), top_k)))

    gen_ids = gen.instance_id.tolist()
    retrieved_gen = [lists["retrieval"][i] for i in gen_ids]
    lists["retrieval@gen"] = {i: lists["retrieval"][i] for i in gen_ids}
    store = ConversationStore(turns_train["query"].tolist(), [list(g) for g in turns_train.gold_item_ids],
                              turns_train.dialogue_id.tolist(), final_conv_d)
    base_store = ConversationStore(turns_train["query"].tolist(), [list(g) for g in turns_train.gold_item_ids],
                                   turns_train.dialogue_id.tolist(), base_conv_d)
    utt = params["ranking"]["knowledge_utterances"]
    knowledge = {
        "ranked": [templates.NO_KNOWLEDGE] * len(gen),
        "ranked+knowledge": store.knowledge(final_conv_q, gen.dialogue_id.tolist(), title, utt),
        "ranked+knowledge/base": base_store.knowledge(base_conv_q, gen.dialogue_id.tolist(), title, utt),
    }
    gen_kw = dict(batch_size=ev["generation_batch"], max_prompt_length=ln.prompt)
    raw_outputs, parse_stats = {}, {}
    for system, know in knowledge.items():
        with timer(f"ranking: {system}"):
            ranked, parsed, outputs = rank_with_llm(lm, gen["query"].tolist(), retrieved_gen, n_cand, title, know,
                                                    ev["max_new_tokens_ranking"], **gen_kw)
        lists[system] = dict(zip(gen_ids, ranked))
        raw_outputs[system] = outputs
        parse_stats[system] = {
            "parse_rate": float(np.mean([p.parsed for p in parsed])) if parsed else float("nan"),
            "unknown_ids": int(sum(p.unknown for p in parsed)),
            "duplicate_ids": int(sum(p.duplicates for p in parsed)),
            "free_text_lines": int(sum(p.free_text_lines for p in parsed)),
            "mean_ids_listed": float(np.mean([len(p.order) for p in parsed])) if parsed else float("nan"),
        }
    lists["random_ranking"] = dict(zip(gen_ids, random_ranking(retrieved_gen, n_cand, [f"{seed}:{i}" for i in gen_ids])))

    metrics: dict[str, float] = {}
    gen_systems = {"retrieval@gen", "ranked", "ranked+knowledge", "ranked+knowledge/base", "random_ranking"}
    with timer("recommendation metrics"):
        for system, ranked in lists.items():
            chosen = gen_instances if system in gen_systems else retr_instances
            metrics.update(recommendation_metrics(ranked, chosen, system, bootstrap=ev["bootstrap"], seed=seed))
    for system, stats in parse_stats.items():
        for key, value in stats.items():
            metrics[f"{system}.ranking_output.{key}"] = value

    # ---------------------------------------------------------------- conversation
    response_test = pd.read_parquet("data/instructions/response_test.parquet").query("dataset == @dataset").set_index("instance_id")
    resp = response_test.loc[[i for i in gen_ids if i in response_test.index]]
    own_items = [[x for x in lists["ranked+knowledge"][i][: max(1, len(resp.item_ids[i]))]] for i in resp.index]
    gen_query = dict(zip(gen.instance_id, gen["query"]))
    own_prompts = [templates.fill(templates.RESPONSE, context=gen_query[i],
                                  items=" " + ", ".join(title[x] for x in items_))
                   for i, items_ in zip(resp.index, own_items)]
    with timer("perplexity"):
        gold_lp = lm.score(resp.prompt.tolist(), resp.target.tolist(), max_prompt_length=ln.prompt, max_target_length=ln.target)
        own_lp = lm.score(own_prompts, resp.target.tolist(), max_prompt_length=ln.prompt, max_target_length=ln.target)
    metrics["response.ppl.gold_items"] = perplexity(gold_lp)
    metrics["response.ppl.own_items"] = perplexity(own_lp)
    metrics["response.n"] = len(resp)
    sample = cap(resp.reset_index(), ev["max_responses"] or None, seed)
    own_for = dict(zip(resp.index, own_prompts))
    with timer("response generation"):
        generated = lm.generate([own_for[i] for i in sample.instance_id], max_new_tokens=ev["max_new_tokens_response"], **gen_kw)
    tokens = [g.lower().split() for g in generated]
    for n in (2, 4):
        for variant, value in distinct_n(tokens, n).items():
            metrics[f"response.distinct@{n}.{variant}"] = value
    known_titles = {t.lower() for t in title.values()} | {t.lower() for t in items.title}
    mentions = [m.strip() for g in generated for m in ITEM_TAG.findall(g)]
    metrics["response.item_mentions"] = len(mentions)
    metrics["response.item_mentions_outside_corpus"] = sum(1 for m in mentions if m.lower() not in known_titles)
    metrics["response.generated_n"] = len(generated)

    dm_rows = None
    if dataset == "redial":
        dm = pd.read_parquet("data/instructions/dm_test.parquet")
        dm = cap(dm, ev["max_dm"] or None, seed)
        with timer("dialogue management"):
            dm_out = lm.generate(dm.prompt.tolist(), max_new_tokens=ev["max_new_tokens_dm"], **gen_kw)
        predicted = [parse_actions(o, ACTIONS) for o in dm_out]
        for key, value in dialogue_management_metrics(predicted, [list(a) for a in dm.actions], ACTIONS).items():
            metrics[f"dm.{key}"] = value
        dm_rows = pd.DataFrame({"instance_id": dm.instance_id, "output": dm_out, "predicted_actions": [p or [] for p in predicted],
                                "gold_actions": [list(a) for a in dm.actions]})

    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    # ---------------------------------------------------------------- outputs
    rows = []
    for system, ranked in lists.items():
        chosen = gen_instances if system in gen_systems else retr_instances
        for inst in chosen:
            rows.append({"instance_id": inst.instance_id, "dialogue_id": inst.dialogue_id, "system": system,
                         "ranked_item_ids": ranked[inst.instance_id], "gold_item_ids": inst.gold, "gold_seen_in_context": inst.seen})
    out = ROOT / "data/eval" / dataset
    write_parquet(out / "predictions.parquet", pd.DataFrame(rows))
    write_parquet(out / "ranking_outputs.parquet", pd.DataFrame(
        [{"instance_id": i, "system": s, "output": o} for s, outs in raw_outputs.items() for i, o in zip(gen_ids, outs)]))
    write_parquet(out / "responses.parquet", pd.DataFrame({"instance_id": sample.instance_id, "generated": generated,
                                                           "gold": sample.target}))
    if dm_rows is not None:
        write_parquet(out / "dm.parquet", dm_rows)
    write_json(out / "timing.json", timer.times)  # wall times vary run to run: kept out of the metrics
    with atomic_path(out / "reficr_items.npy") as tmp:  # reused by `reficr recommend` / `reficr chat`
        with open(tmp, "wb") as fh:
            np.save(fh, final_items, allow_pickle=False)
    with atomic_path(out / "reficr_conversations.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, final_conv_d, allow_pickle=False)
    curve = [{"system": s, "k": k, "recall": metrics[f"{s}.full.recall@{k}.per_item"]}
             for s in lists for k in (1, 5, 10, 50)]
    with atomic_path(ROOT / f"plots/recall_{dataset}.csv") as tmp:
        pd.DataFrame(curve).to_csv(tmp, index=False)
    write_json(ROOT / f"metrics/{dataset}.json", metrics)
    log.info("%s: %s", dataset, json.dumps({k: v for k, v in metrics.items() if "recall@10.per_item" in k and "." not in k.split("recall@10.per_item")[1]}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
