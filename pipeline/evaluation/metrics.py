"""Evaluation metrics: recommendation, conversation, dialogue management; bootstrap CIs.

Recommendation, for one ranked list (best first) and the gold items of one instance:
- Recall@k **per item**: one sample per (instance, gold item), hit if the item is in the top k (CRSLab/UniCRS;
  our headline);
- Recall@k **per turn**: |gold ∩ top k| / |gold|, one sample per instance (the ReFICR code's convention);
- NDCG@k and MRR@k per item: one relevant item per sample, so NDCG = 1 / log2(rank + 1), MRR = 1 / rank,
  0 beyond k.
The ``dedup`` set drops gold items already seen in the context, then instances left without gold.
CIs: 95% percentile bootstrap over dialogues (resampled with replacement, seeded): a metric's samples are
regrouped by dialogue so that correlated turns move together.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

KS = (1, 5, 10, 50)


@dataclass
class Instance:
    instance_id: str
    dialogue_id: str
    gold: list[str]
    seen: list[bool]


def dedup(instance: Instance) -> Instance | None:
    gold = [g for g, s in zip(instance.gold, instance.seen) if not s]
    return Instance(instance.instance_id, instance.dialogue_id, gold, [False] * len(gold)) if gold else None


def item_samples(ranked: list[str], gold: list[str], k: int) -> dict[str, list[float]]:
    """Per-item samples (one per gold item) of recall, ndcg, mrr at k."""
    position = {item: r for r, item in enumerate(ranked[:k], start=1)}
    out: dict[str, list[float]] = {"recall": [], "ndcg": [], "mrr": []}
    for g in gold:
        r = position.get(g)
        out["recall"].append(1.0 if r else 0.0)
        out["ndcg"].append(1.0 / math.log2(r + 1) if r else 0.0)
        out["mrr"].append(1.0 / r if r else 0.0)
    return out


def turn_recall(ranked: list[str], gold: list[str], k: int) -> float:
    top = set(ranked[:k])
    return sum(1 for g in gold if g in top) / len(gold)


def bootstrap_ci(values: list[float], groups: list[str], samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of ``values``, resampling the groups (dialogues) with replacement."""
    if not values:
        return float("nan"), float("nan")
    by_group: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        by_group.setdefault(g, []).append(v)
    names = sorted(by_group)
    sums = np.array([sum(by_group[n]) for n in names])
    counts = np.array([len(by_group[n]) for n in names])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(samples, len(names)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def recommendation_metrics(ranked: dict[str, list[str]], instances: list[Instance], prefix: str,
                           ks=KS, bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Flat metrics ``{prefix}.{full|dedup}.{metric}@{k}[.per_item|.per_turn][.ci_low|.ci_high|.n]``."""
    out: dict[str, float] = {}
    for variant in ("full", "dedup"):
        chosen = [i if variant == "full" else dedup(i) for i in instances]
        chosen = [i for i in chosen if i is not None]
        for k in ks:
            per_item: dict[str, list[float]] = {"recall": [], "ndcg": [], "mrr": []}
            item_groups, per_turn, turn_groups = [], [], []
            for inst in chosen:
                lst = ranked[inst.instance_id]
                for name, vals in item_samples(lst, inst.gold, k).items():
                    per_item[name] += vals
                item_groups += [inst.dialogue_id] * len(inst.gold)
                per_turn.append(turn_recall(lst, inst.gold, k))
                turn_groups.append(inst.dialogue_id)
            series = {f"recall@{k}.per_item": (per_item["recall"], item_groups),
                      f"recall@{k}.per_turn": (per_turn, turn_groups),
                      f"ndcg@{k}": (per_item["ndcg"], item_groups),
                      f"mrr@{k}": (per_item["mrr"], item_groups)}
            for name, (values, groups) in series.items():
                key = f"{prefix}.{variant}.{name}"
                out[key] = float(np.mean(values)) if values else float("nan")
                low, high = bootstrap_ci(values, groups, bootstrap, seed)
                out[f"{key}.ci_low"], out[f"{key}.ci_high"], out[f"{key}.n"] = low, high, len(values)
    return out


def paired_difference(ranked_a: dict[str, list[str]], ranked_b: dict[str, list[str]], instances: list[Instance], k: int,
                      bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Recall@k per item of system a minus system b on the same (instance, gold item) samples, with a paired
    bootstrap CI over dialogues (both systems' samples of a dialogue move together)."""
    diffs, groups = [], []
    for inst in instances:
        a = item_samples(ranked_a[inst.instance_id], inst.gold, k)["recall"]
        b = item_samples(ranked_b[inst.instance_id], inst.gold, k)["recall"]
        diffs += [x - y for x, y in zip(a, b)]
        groups += [inst.dialogue_id] * len(inst.gold)
    low, high = bootstrap_ci(diffs, groups, bootstrap, seed, level)
    return {"": float(np.mean(diffs)) if diffs else float("nan"), ".ci_low": low, ".ci_high": high, ".n": len(diffs)}


def majority_action_set(train_actions: list[list[str]]) -> list[str]:
    """The most frequent action set of the training turns (ties: the first seen): the DM baseline."""
    counts = Counter(tuple(sorted(a)) for a in train_actions)
    return list(max(counts, key=lambda key: counts[key])) if counts else []


# ----------------------------------------------------------------------------- conversation
def distinct_n(responses: list[list[str]], n: int) -> dict[str, float]:
    """Distinct-n both ways: unique n-grams / total n-grams (``ratio``), and unique n-grams / number of
    responses (``per_response``, the CRSLab/UniCRS convention behind the paper's Table 3; it can exceed 1)."""
    grams: Counter = Counter()
    for tokens in responses:
        grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return {"ratio": len(grams) / total if total else 0.0,
            "per_response": len(grams) / len(responses) if responses else 0.0}


def perplexity(token_logprobs: list[np.ndarray]) -> float:
    """exp of the mean negative log-likelihood over all target tokens (token-level)."""
    flat = np.concatenate([np.asarray(t, dtype=np.float64) for t in token_logprobs]) if token_logprobs else np.array([])
    return float(math.exp(-flat.mean())) if flat.size else float("nan")


def dialogue_management_metrics(predicted: list[list[str] | None], gold: list[list[str]],
                                actions: tuple[str, ...]) -> dict[str, float]:
    """Exact-match accuracy of the action set, micro-F1 over actions, and the parse rate."""
    tp = fp = fn = exact = parsed = 0
    for pred, ref in zip(predicted, gold):
        p, r = set(pred or []), set(ref)
        parsed += pred is not None
        exact += p == r
        tp += len(p & r)
        fp += len(p - r)
        fn += len(r - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(gold)
    return {"accuracy": exact / n if n else float("nan"), "micro_f1": f1, "parse_rate": parsed / n if n else float("nan"), "n": n}


def without_named(lists: dict[str, list[str]], named: dict[str, set[str]], instances: list[Instance], k: int, name: str,
                  bootstrap: int, seed: int) -> dict[str, float]:
    """``<name>.filtered.dedup.*``: each list without the items its context names, cut to ``k``, on the dedup gold."""
    kept = {i: [x for x in lst if x not in named[i]][:k] for i, lst in lists.items()}
    scored = recommendation_metrics(kept, instances, f"{name}.filtered", bootstrap=bootstrap, seed=seed)
    return {key: v for key, v in scored.items() if ".dedup." in key}
