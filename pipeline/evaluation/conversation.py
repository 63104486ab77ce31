"""The conversation side of the evaluation protocol: perplexity, Distinct-n and grounding of the
generated replies, and dialogue management on held-out IARD turns; ``pipeline.evaluation.protocol.evaluate`` calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.data.splits import seeded_sample
from pipeline.evaluation.dm_validation import free_generation
from pipeline.evaluation.metrics import (
    bootstrap_ci,
    dialogue_management_metrics,
    distinct_n,
    majority_action_set,
    perplexity,
)
from pipeline.tasks import templates
from pipeline.tasks.actions import ACTIONS
from pipeline.workflow.dialogue import HEAD, SHARES
from pipeline.workflow.grounding import ITEM_TAG, Catalogue, Reply, check_reply

if TYPE_CHECKING:
    from pipeline.evaluation.protocol import EvalRun


def response_metrics(run: EvalRun, ranked_with_knowledge: dict[str, list[str]]) -> tuple[dict[str, float], pd.DataFrame]:
    """Perplexity of gold responses given the gold items (the paper's oracle) and given the model's own top items
    (as many as the gold response names, at least one); Distinct-n and item mentions of generated responses."""
    system, data, s = run.reficr, run.data, run.settings
    responses = data.responses_test.set_index("instance_id")
    resp = responses.loc[[i for i in run.gen.instance_id if i in responses.index]]
    own_items = {i: ranked_with_knowledge[i][: max(1, len(resp.item_ids[i]))] for i in resp.index}
    context = dict(zip(run.gen.instance_id, run.gen["query"]))
    own_prompts = [templates.response_prompt(context[i], [system.title[x] for x in own_items[i]]) for i in resp.index]
    lengths = dict(max_prompt_length=system.settings.prompt_length, max_target_length=s.target_length)
    with run.timer("perplexity"):
        gold_lp = system.lm.score(resp.prompt.tolist(), resp.target.tolist(), **lengths)
        own_lp = system.lm.score(own_prompts, resp.target.tolist(), **lengths)
    metrics = {"response.ppl.gold_items": perplexity(gold_lp), "response.ppl.own_items": perplexity(own_lp), "response.n": len(resp)}
    sample = seeded_sample(resp.reset_index(), s.max_responses or None, s.seed)
    with run.timer("response generation"):
        replies = system.replies([context[i] for i in sample.instance_id], [own_items[i] for i in sample.instance_id])
    generated = [r.raw for r in replies]  # the model's generation: Distinct-n and item mentions, as the paper
    tokens = [g.lower().split() for g in generated]
    for n in (2, 4):
        for variant, value in distinct_n(tokens, n).items():
            metrics[f"response.distinct@{n}.{variant}"] = value
    known_titles = {t.lower() for t in system.title.values()} | {t.lower() for t in data.items.title}
    mentions = [m.strip() for g in generated for m in ITEM_TAG.findall(g)]
    metrics["response.item_mentions"] = len(mentions)
    metrics["response.item_mentions_outside_corpus"] = sum(1 for m in mentions if m.lower() not in known_titles)
    metrics["response.generated_n"] = len(generated)
    metrics.update(grounding_metrics(replies, [[system.title[x] for x in own_items[i]] for i in sample.instance_id],
                                     [context[i] for i in sample.instance_id], system.catalogue))
    return metrics, pd.DataFrame({"instance_id": sample.instance_id, "generated": generated,
                                  "reply": [r.text for r in replies], "fallback": [r.fallback for r in replies],
                                  "items_appended": [r.appended for r in replies],
                                  "gold": sample.target})


def grounding_metrics(replies: list[Reply], allowed: list[list[str]], contexts: list[str], catalogue: Catalogue) -> dict[str, float]:
    """Share of replies naming an item outside the turn's recommended items, with a loop, copying the seeker, echoing
    or talking about the prompt or holding a bracketed slot (``echo``): ``response.raw.*`` for the model's generation, ``response.reply.*`` for what a person
    reads (``pipeline.workflow.grounding``), how many replies fell back to the fixed sentence and how many had it added."""
    out: dict[str, float] = {}
    for variant in ("raw", "reply"):
        checks = [check_reply(r.raw if variant == "raw" else r.text, a, c, catalogue) for r, a, c in zip(replies, allowed, contexts)]
        n = max(len(checks), 1)
        out[f"response.{variant}.outside_items_rate"] = sum(bool(c.outside_items) for c in checks) / n
        out[f"response.{variant}.loop_rate"] = sum(c.loop for c in checks) / n
        out[f"response.{variant}.copy_rate"] = sum(c.copied for c in checks) / n
        out[f"response.{variant}.echo_rate"] = sum(c.echo for c in checks) / n
    out["response.reply.fallback_rate"] = sum(r.fallback for r in replies) / max(len(replies), 1)
    out["response.reply.items_appended_rate"] = sum(r.appended for r in replies) / max(len(replies), 1)
    return out


def dialogue_management(run: EvalRun) -> tuple[dict[str, float], pd.DataFrame]:
    """Held-out IARD turns: the action set ReFICR chooses (``ReFICR.choose_actions``, what the chat acts on: ``dm.prior``
    says whether by the DM head or the training shares) against
    the majority action set of the training turns, exact-set accuracy and micro-F1, and their accuracy difference
    with a paired bootstrap CI over dialogues; then the paper's unconstrained generation on a sample of them
    (``max_dm_generation``): how often it names an action at all (its parse rate) and how well."""
    s = run.settings
    dm = seeded_sample(run.data.dm_test, s.max_dm or None, s.seed)
    gold = [list(a) for a in dm.actions]
    with run.timer("dialogue management"):
        predicted = run.reficr.choose_actions(dm.prompt.tolist())
    metrics = {f"dm.{k}": v for k, v in dialogue_management_metrics(predicted, gold, ACTIONS).items()}
    metrics["dm.weight"] = run.reficr.settings.dm_weight
    metrics["dm.prior"] = HEAD if run.reficr.settings.dm_head else SHARES
    if run.reficr.settings.dm_head:
        metrics["dm.head_l2"] = run.reficr.settings.dm_head["l2"]
    majority = majority_action_set([list(a) for a in run.data.dm_train.actions])
    baseline = dialogue_management_metrics([majority] * len(gold), gold, ACTIONS)
    metrics.update({f"dm.majority.{k}": baseline[k] for k in ("accuracy", "micro_f1")})
    metrics["dm.majority.actions"] = "+".join(majority)
    diffs = [float(set(p) == set(g)) - float(set(majority) == set(g)) for p, g in zip(predicted, gold)]
    low, high = bootstrap_ci(diffs, dm.dialogue_id.tolist(), s.bootstrap, s.seed)
    metrics.update({"paired.dm-majority.accuracy": float(np.mean(diffs)) if diffs else float("nan"),
                    "paired.dm-majority.accuracy.ci_low": low, "paired.dm-majority.accuracy.ci_high": high,
                    "paired.dm-majority.accuracy.n": len(diffs)})
    free = seeded_sample(dm, s.max_dm_generation or None, s.seed)
    with run.timer("dialogue management, free generation"):
        unconstrained, outputs = free_generation(
            lambda prompts: run.reficr.generate(prompts, run.reficr.settings.max_new_tokens_dm), free)
    metrics.update({f"dm.free_generation.{k}": v for k, v in unconstrained.items()})
    free_output = dict(zip(free.instance_id, outputs))
    return metrics, pd.DataFrame({"instance_id": dm.instance_id, "dialogue_id": dm.dialogue_id,
                                  "predicted_actions": predicted, "gold_actions": gold,
                                  "free_generation": [free_output.get(i) for i in dm.instance_id]})
