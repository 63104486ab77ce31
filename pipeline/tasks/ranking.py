"""The ranking subtask (paper Table 1): training instances, target format and output parsing.

- ``build_ranking_instance``: the top-N candidates, gold inserted when missing, shuffled with a seed,
  numbered [1]..[N]; target = gold identifiers first, then the rest by retrieval rank;
- ``random_ranking``: the ablation of the LLM ranker (``pipeline.workflow.ranker``);
- ``parse_ranking`` / ``apply_ranking``: identifiers ``[i]`` out of generated text, counting unknown ids,
  duplicates and free text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


# ----------------------------------------------------------------------------- training instances
@dataclass
class RankingInstance:
    candidates: list[str]  # item ids in prompt order: [1] is candidates[0]
    target_ids: list[int]  # 1-based identifiers, best first


def build_ranking_instance(retrieved: list[str], gold: list[str], n: int, seed_key: str) -> RankingInstance:
    """Top-``n`` retrieved items with the gold items put in when missing (they replace the lowest-ranked
    non-gold ones), shuffled with a seed; target = gold first (in gold order), then by retrieval rank."""
    gold = list(gold)[:n]
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


# ----------------------------------------------------------------------------- output parsing
@dataclass
class ParsedRanking:
    order: list[int]  # valid 1-based identifiers, first occurrence order
    parsed: bool  # at least one valid identifier
    unknown: int  # identifiers outside 1..n
    duplicates: int
    free_text_lines: int  # non-empty lines without an identifier


_ID = re.compile(r"\[(\d+)\]")


def parse_ranking(text: str, n: int) -> ParsedRanking:
    """Identifiers ``[i]`` in order of appearance; unknown ids, duplicates and free text are counted."""
    order, unknown, duplicates, free = [], 0, 0, 0
    for line in text.splitlines():
        ids = _ID.findall(line)
        if not ids and line.strip():
            free += 1
        for raw in ids:
            value = int(raw)
            if not 1 <= value <= n:
                unknown += 1
            elif value in order:
                duplicates += 1
            else:
                order.append(value)
    return ParsedRanking(order, bool(order), unknown, duplicates, free)


def apply_ranking(candidates: list[str], retrieved: list[str], parsed: ParsedRanking) -> list[str]:
    """The model's order of the candidates, then candidates it left out (retrieval order), then the rest of
    the retrieval list: a full list, so Recall@50 stays defined."""
    head = [candidates[i - 1] for i in parsed.order]
    rest = [c for c in retrieved if c not in head]
    return head + rest


def parse_statistics(parsed: list[ParsedRanking]) -> dict[str, float]:
    """How well a batch of ranking outputs parsed (the ``<system>.ranking_output.*`` metrics)."""
    n = len(parsed)
    return {
        "parse_rate": sum(p.parsed for p in parsed) / n if n else float("nan"),
        "unknown_ids": int(sum(p.unknown for p in parsed)),
        "duplicate_ids": int(sum(p.duplicates for p in parsed)),
        "free_text_lines": int(sum(p.free_text_lines for p in parsed)),
        "mean_ids_listed": sum(len(p.order) for p in parsed) / n if n else float("nan"),
    }


def random_ranking(retrieved: list[list[str]], n: int, seed_keys: list[str]) -> list[list[str]]:
    """Ablation: the top-``n`` candidates in a seeded random order, then the retrieval order."""
    out = []
    for r, key in zip(retrieved, seed_keys):
        head = list(r[:n])
        random.Random(key).shuffle(head)
        out.append(head + list(r[n:]))
    return out
