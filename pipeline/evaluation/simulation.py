"""Interactive evaluation: simulated seekers (``pipeline.evaluation.seeker``) talk to a recommender for up to T turns.

Every recommender meets the same seekers on the same test dialogues. All dialogues advance together, one turn at a
time, so a turn's dialogue management, retrieval, ranking and replies run batched over the dialogues still going.
A turn: the recommender acts on the conversation so far (recommends items, or asks); the seeker accepts when a
target is among the recommended items (the dialogue ends: success at that turn), else rejects them and tells one more
attribute. Items the conversation named or that were rejected are never recommended again.

The recommenders (``Policy``):
- ``ReFICRPolicy``: the paper's workflow per turn: dialogue management decides to recommend or not; where it
  recommends, retrieval+knowledge's candidates (``pipeline.workflow.knowledge``) ranked by the LLM with Conv2Conv's
  knowledge; the reply generated and grounded. ``decide=False`` always recommends (what dialogue management adds).
- ``ScoredPolicy``: always recommends the best-scoring items of one mixture of signals (popularity, a
  collaborative baseline, Conv2Item alone, retrieval+knowledge without the LLM ranker), with a fixed reply.

Metrics (``simulation_metrics``): success within 1..T turns, mean turns to success, Recall@k of the last list, and,
for a policy that decides, how often it asked and how the dialogues it asked in ended; bootstrap CIs over dialogues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from pipeline.data.splits import seeded_sample
from pipeline.evaluation.metrics import bootstrap_ci, turn_recall
from pipeline.evaluation.seeker import Attributes, MetadataIndex, TemplateSeeker
from pipeline.retrieval.collaborative import top_without
from pipeline.tasks import templates
from pipeline.workflow.grounding import ITEM_TAG
from pipeline.workflow.knowledge import Recommender

log = logging.getLogger(__name__)

CUTOFFS = (10, 50)
ASK = "What kind of movie are you in the mood for?"  # a ScoredPolicy never asks; ReFICR's questions are generated


@dataclass
class SimDialogue:
    """One test dialogue to simulate: its targets (ids and titles) and what the seeker knows of the first, the
    first seeker utterance and the items it names."""

    dialogue_id: str
    targets: list[str]
    target_titles: list[str]
    attributes: Attributes
    first_utterance: str
    first_items: list[str]


def sim_dialogues(utterances: pd.DataFrame, rec_turns: pd.DataFrame, items: pd.DataFrame, other_items: Sequence[pd.DataFrame],
                  limit: int, seed: int) -> tuple[list[SimDialogue], dict[str, int]]:
    """``limit`` seeded test dialogues (0 = all) that have a recommendation turn and a seeker utterance. Targets: the
    gold items of their recommendation turns, in order, less the items the first seeker utterance names; the
    seeker's attributes are the first target's, from ``items`` or, where that lists only a title, ``other_items``.
    The counts say how many test dialogues there were and why any were left out."""
    index = MetadataIndex([items, *other_items])
    items = items.set_index("item_id")
    utterances = utterances[utterances["split"] == "test"].sort_values(["dialogue_id", "turn_index"])
    rec_turns = rec_turns[rec_turns["split"] == "test"]
    order = rec_turns["instance_id"].str.rsplit("#", n=1).str[1].astype(int)  # the turn's index in its dialogue
    rec_turns = rec_turns.assign(turn=order).sort_values(["dialogue_id", "turn"], kind="stable")
    gold: dict[str, list[str]] = {}
    for dialogue_id, ids in zip(rec_turns["dialogue_id"], rec_turns["gold_item_ids"]):
        gold.setdefault(dialogue_id, []).extend(ids)
    first = utterances[utterances["speaker"] == "seeker"].drop_duplicates("dialogue_id").set_index("dialogue_id")
    counts = {"test_dialogues_with_gold": len(gold), "no_seeker_utterance": 0, "no_target_left": 0}
    kept = []
    for dialogue_id, ids in gold.items():
        if dialogue_id not in first.index:
            counts["no_seeker_utterance"] += 1
            continue
        named = list(first.at[dialogue_id, "item_ids"])
        targets = [i for i in dict.fromkeys(ids) if i not in named and i in items.index]
        if not targets:
            counts["no_target_left"] += 1
            continue
        lead = items.loc[targets[0]]
        kept.append(SimDialogue(dialogue_id, targets, [items.at[t, "title"] for t in targets],
                                index.attributes(lead["title"], lead["year"]), first.at[dialogue_id, "text"], named))
    chosen = set(seeded_sample(pd.DataFrame({"dialogue_id": [d.dialogue_id for d in kept]}), limit, seed, key="dialogue_id")
                 ["dialogue_id"])
    dialogues = [d for d in kept if d.dialogue_id in chosen]
    counts["simulated"] = len(dialogues)
    return dialogues, counts


@dataclass
class Conversation:
    """A simulated conversation so far, as a recommender sees it."""

    dialogue_id: str
    utterances: list[dict]  # {"speaker": "seeker" | "recommender", "text": ...}
    named: list[str]  # item ids the conversation has named, oldest first (the seeker's and the recommended ones)


@dataclass
class Action:
    """A recommender's turn: the items it recommends (empty: it asked), its ranked list, its reply."""

    recommended: list[str]
    ranked: list[str]
    reply: str
    dm: str = ""  # the dialogue-management actions, where the policy decides


class Policy(Protocol):
    name: str
    decides: bool  # whether it may ask instead of recommending

    def act(self, conversations: list[Conversation]) -> list[Action]: ...


@dataclass
class TurnRecord:
    turn: int
    recommender: str
    recommended: list[str]
    seeker: str
    accepted: bool
    dm: str = ""


@dataclass
class Outcome:
    """One simulated dialogue with one recommender."""

    dialogue_id: str
    targets: list[str]
    opening: str
    turns: list[TurnRecord] = field(default_factory=list)
    success_turn: int | None = None
    last_list: list[str] = field(default_factory=list)
    replaced: int = 0  # seeker utterances replaced because they would have named a target
    regenerated: int = 0  # the model seeker's utterances that named a target (regenerated, never sent)


def recommendation_reply(titles: list[str]) -> str:
    if len(titles) == 1:
        return f"You might like {titles[0]}."
    return f"You might like {', '.join(titles[:-1])} or {titles[-1]}."


# ----------------------------------------------------------------------------- the recommenders
class ScoredPolicy:
    """Always recommends the best-scoring items of one mixture of signals; a fixed reply names them."""

    decides = False

    def __init__(self, name: str, rec: Recommender, weights: dict[str, float]):
        self.name, self.rec, self.weights = name, rec, weights

    def act(self, conversations: list[Conversation]) -> list[Action]:
        system = self.rec.system
        s = system.settings
        texts = [system.render(c.utterances) for c in conversations]
        scores = self.rec.scores(texts, [c.named for c in conversations], self.weights)
        actions = []
        for row, c in zip(scores, conversations):
            ranked = top_without(row, system.corpus.item_ids, c.named, s.top_k)
            shown = ranked[: s.items_in_response]
            actions.append(Action(shown, ranked, recommendation_reply([system.title[i] for i in shown])))
        return actions


class ReFICRPolicy:
    """ReFICR's workflow: dialogue management (unless ``decide`` is off), retrieval+knowledge's candidates, the LLM
    ranker with Conv2Conv's knowledge, the generated reply."""

    def __init__(self, name: str, rec: Recommender, decide: bool = True):
        self.name, self.rec, self.decides = name, rec, decide

    def act(self, conversations: list[Conversation]) -> list[Action]:
        system = self.rec.system
        s = system.settings
        texts = [system.render(c.utterances) for c in conversations]
        if self.decides:
            chosen = system.choose_actions([templates.dialogue_management_prompt(t) for t in texts])
        else:
            chosen = [["Recommend"]] * len(texts)
        go = [i for i, a in enumerate(chosen) if "Recommend" in a]
        recommended: list[list[str]] = [[] for _ in texts]
        ranked: list[list[str]] = [[] for _ in texts]
        if go:
            sub = [texts[i] for i in go]
            scores = self.rec.scores(sub, [conversations[i].named for i in go])
            lists = [top_without(row, system.corpus.item_ids, conversations[i].named, s.top_k) for row, i in zip(scores, go)]
            knowledge = system.knowledge(sub, [""] * len(sub))
            reordered, _, _ = system.rank(sub, lists, knowledge)
            for i, order in zip(go, reordered):
                ranked[i], recommended[i] = order, order[: s.items_in_response]
        replies = system.respond(texts, recommended)
        return [Action(r, lst, reply, "+".join(a)) for r, lst, reply, a in zip(recommended, ranked, replies, chosen)]


# ----------------------------------------------------------------------------- the loop
def simulate(policy: Policy, dialogues: Sequence[SimDialogue], seeker: TemplateSeeker, turns: int) -> list[Outcome]:
    """``policy`` talks to one fresh seeker per dialogue for up to ``turns`` turns."""
    states = [seeker.start(d.dialogue_id, d.targets, d.target_titles, d.attributes, d.first_utterance) for d in dialogues]
    outcomes, conversations = [], []
    for d, state, opening in zip(dialogues, states, seeker.openings(states)):
        named = list(d.first_items) if opening == d.first_utterance else []
        outcomes.append(Outcome(d.dialogue_id, d.targets, opening))
        conversations.append(Conversation(d.dialogue_id, [{"speaker": "seeker", "text": opening}], named))
    active = list(range(len(dialogues)))
    for turn in range(1, turns + 1):
        if not active:
            break
        actions = policy.act([conversations[i] for i in active])
        if len(actions) != len(active):
            raise ValueError(f"{policy.name}: {len(actions)} actions for {len(active)} conversations; expected one each")
        for i, action in zip(active, actions):
            conversations[i].utterances.append({"speaker": "recommender", "text": action.reply})
        answers = seeker.replies([states[i] for i in active], turn, [a.recommended for a in actions],
                                 [conversations[i].utterances for i in active])
        still = []
        for i, action, (accepted, said) in zip(active, actions, answers):
            c, o = conversations[i], outcomes[i]
            if action.recommended:
                o.last_list = action.ranked
                c.named = list(dict.fromkeys(c.named + action.recommended))
            c.utterances.append({"speaker": "seeker", "text": said})
            o.turns.append(TurnRecord(turn, action.reply, action.recommended, said, accepted, action.dm))
            if accepted:
                o.success_turn = turn
            else:
                still.append(i)
        active = still
        log.info("%s: turn %d, %d of %d dialogues still going", policy.name, turn, len(active), len(dialogues))
    for o, state in zip(outcomes, states):
        o.replaced, o.regenerated = state.replaced, state.regenerated
    return outcomes


# ----------------------------------------------------------------------------- metrics
def success_values(outcomes: Sequence[Outcome], turn: int) -> list[float]:
    return [1.0 if o.success_turn is not None and o.success_turn <= turn else 0.0 for o in outcomes]


def _with_ci(out: dict, key: str, values: list[float], groups: list[str], bootstrap: int, seed: int) -> None:
    out[key] = float(np.mean(values)) if values else float("nan")
    out[f"{key}.ci_low"], out[f"{key}.ci_high"] = bootstrap_ci(values, groups, bootstrap, seed)
    out[f"{key}.n"] = len(values)


def simulation_metrics(results: dict[str, list[Outcome]], turns: int, reference: str, bootstrap: int,
                       seed: int) -> dict[str, float]:
    """Flat ``simulate.<system>.*`` metrics, and ``simulate.paired.<reference>-<system>.success@<turns>``."""
    out: dict[str, float] = {}
    for name, outcomes in results.items():
        groups = [o.dialogue_id for o in outcomes]
        p = f"simulate.{name}"
        for t in range(1, turns + 1):
            _with_ci(out, f"{p}.success@{t}", success_values(outcomes, t), groups, bootstrap, seed)
        done = [o.success_turn for o in outcomes if o.success_turn is not None]
        out[f"{p}.mean_turns_to_success"] = float(np.mean(done)) if done else float("nan")
        out[f"{p}.mean_turns_to_success.n"] = len(done)
        for k in CUTOFFS:
            _with_ci(out, f"{p}.last_list.recall@{k}", [turn_recall(o.last_list, o.targets, k) for o in outcomes],
                     groups, bootstrap, seed)
        out[f"{p}.seeker_replaced"] = sum(o.replaced for o in outcomes)
        out[f"{p}.seeker_regenerated"] = sum(o.regenerated for o in outcomes)
        records = [r for o in outcomes for r in o.turns]
        out[f"{p}.recommend_share"] = float(np.mean([bool(r.recommended) for r in records])) if records else float("nan")
        if any(not r.recommended for r in records):
            asked_first = [o for o in outcomes if o.turns and not o.turns[0].recommended]
            told_first = [o for o in outcomes if o.turns and o.turns[0].recommended]
            for label, group in (("asked_first", asked_first), ("recommended_first", told_first)):
                out[f"{p}.{label}.n"] = len(group)
                out[f"{p}.{label}.success@{turns}"] = (float(np.mean(success_values(group, turns))) if group
                                                        else float("nan"))
    if reference in results:
        ref = results[reference]
        for name, outcomes in results.items():
            if name == reference:
                continue
            diffs = [a - b for a, b in zip(success_values(ref, turns), success_values(outcomes, turns))]
            _with_ci(out, f"simulate.paired.{reference}-{name}.success@{turns}", diffs,
                     [o.dialogue_id for o in ref], bootstrap, seed)
    return out


def success_curve(results: dict[str, list[Outcome]], turns: int) -> list[dict]:
    """Rows of the plot: per turn, each system's success rate within that many turns."""
    return [{"turn": t, **{name: round(float(np.mean(success_values(o, t))), 6) for name, o in results.items()}}
            for t in range(1, turns + 1)]


def transcript(outcome: Outcome, system: str, title: dict[str, str]) -> str:
    """A readable transcript of one simulated dialogue (markdown)."""
    ended = f"success at turn {outcome.success_turn}" if outcome.success_turn else f"no success in {len(outcome.turns)} turns"
    lines = [f"#### {system}: {ended}", "", f"- Seeker: {outcome.opening}"]
    for r in outcome.turns:
        shown = f" [{r.dm}]" if r.dm else ""
        items = f" (recommends: {'; '.join(title[i] for i in r.recommended)})" if r.recommended else " (asks)"
        lines.append(f"- Recommender{shown}: {ITEM_TAG.sub(lambda m: m.group(1), r.recommender)}{items}")
        lines.append(f"- Seeker: {r.seeker}" + (" (accepts)" if r.accepted else ""))
    return "\n".join(lines) + "\n"
