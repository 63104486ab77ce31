"""DVC stage `summarize`: metrics/<dataset>.json -> metrics/summary.md, a paper-style table a person can read.

    python -m stages.summarize
"""

from __future__ import annotations

import json

from pipeline.io import atomic_path
from stages._common import ROOT

SYSTEMS = ["popularity", "context_echo", "bm25", "base_embedder", "retrieval/no_instruction", "retrieval",
           "retrieval@gen", "random_ranking", "ranked", "ranked+knowledge/base", "ranked+knowledge"]


def fmt(m: dict, key: str) -> str:
    value = m.get(key)
    if value is None:
        return "–"
    low, high = m.get(f"{key}.ci_low"), m.get(f"{key}.ci_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def table(name: str, m: dict) -> list[str]:
    lines = [f"## {name}", ""]
    for variant in ("full", "dedup"):
        lines += [f"### {variant} instance set (Recall per item, 95% bootstrap CI over dialogues)", "",
                  "| system | n | R@1 | R@10 | R@50 | R@10 per turn | MRR@10 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in SYSTEMS:
            if f"{s}.{variant}.recall@1.per_item" not in m:
                continue
            p = f"{s}.{variant}"
            lines.append(f"| {s} | {m[f'{p}.recall@1.per_item.n']} | {fmt(m, f'{p}.recall@1.per_item')} | "
                         f"{fmt(m, f'{p}.recall@10.per_item')} | {fmt(m, f'{p}.recall@50.per_item')} | "
                         f"{m[f'{p}.recall@10.per_turn']:.3f} | {m[f'{p}.mrr@10']:.3f} |")
        lines.append("")
    lines += ["### conversation", "",
              f"- perplexity of gold responses, given the gold items (oracle, as the paper): {m['response.ppl.gold_items']:.2f}; "
              f"given the model's own items: {m['response.ppl.own_items']:.2f} (n = {m['response.n']})",
              f"- Distinct-2 / Distinct-4, unique/total: {m['response.distinct@2.ratio']:.3f} / {m['response.distinct@4.ratio']:.3f}; "
              f"unique/responses (CRSLab): {m['response.distinct@2.per_response']:.3f} / {m['response.distinct@4.per_response']:.3f} "
              f"(n = {m['response.generated_n']})",
              f"- generated item mentions outside the corpus: {m['response.item_mentions_outside_corpus']} of {m['response.item_mentions']}",
              f"- ranking output parse rate (ranked+knowledge): {m['ranked+knowledge.ranking_output.parse_rate']:.3f}"]
    if "dm.accuracy" in m:
        lines.append(f"- dialogue management on held-out IARD: accuracy {m['dm.accuracy']:.3f}, micro-F1 {m['dm.micro_f1']:.3f}, "
                     f"parse rate {m['dm.parse_rate']:.3f} (n = {m['dm.n']})")
    return lines + [""]


def main() -> None:
    lines = ["# reficr evaluation summary", "",
             "Test split; per-item Recall@k (CRSLab convention) unless said; `full` = all gold items, `dedup` = gold items "
             "not seen in the context. Generating systems (`retrieval@gen` and below) are scored on the generation sample.", ""]
    for dataset, name in (("redial", "ReDial"), ("inspired", "INSPIRED")):
        m = json.loads((ROOT / f"metrics/{dataset}.json").read_text())
        lines += table(name, m)
    with atomic_path(ROOT / "metrics/summary.md") as tmp:
        tmp.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
