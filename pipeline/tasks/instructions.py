"""Instruction data for the five subtasks (paper section 3, Table 1), built from the ingest tables.

Tables written per split (``train``/``valid``/``test``), both recommendation datasets in one file with a
``dataset`` column:
- ``turns``: the recommendation instances (one per rec_turn) with their rendered context ``query``; the
  canonical queries for mining, ranking and evaluation;
- ``conv2item``: (context, description of one gold item) pairs, one per (turn, gold item);
- ``catalogue`` (train only): the Conv2Item pairs of *every* training turn, uncapped: the queries of the
  catalogue objective (``pipeline.training.catalogue``), whose cost does not grow with them (no mining, no documents);
- ``conv2conv``: (context, another *training* context that shares a gold item, from another dialogue);
  test and valid contexts are never documents;
- ``dm`` (IARD): dialogue-management prompt -> ``<a>Action</a>`` tags + deterministic explanation;
- ``response``: response-generation prompt (context + the turn's items) -> gold response with each item
  mention wrapped in ``<item>...</item>``; every recommender turn, with or without items.
Ranking instances need INIT embeddings and are built by ``mine_negatives``.

Caps are parameters (``max_train_turns`` per dataset: the turns that are mined, ranked and kept as Conv2Conv
knowledge; ``max_dm``, ``max_response``), applied by a seeded
hash of the instance id, so a cap selects the same instances on every run; the report counts every task
before and after its cap.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pandas as pd

from pipeline.data.common import recommender_runs
from pipeline.data.items import item_titles
from pipeline.data.schemas import instance_id
from pipeline.data.splits import seeded_sample
from pipeline.tasks import templates
from pipeline.tasks.actions import DM_SEPARATOR, action_tags

# IARD recommender codes (as spelled in the file) -> the five system actions of ReFICR's DM task.
ACTION_OF_CODE = {
    "REC-S": "Recommend", "REC-E": "Recommend",
    "EXP-I": "Explain", "EXP-P": "Explain", "EXP-S": "Explain",
    "RESP": "Respond", "R-ANS": "Respond",
    "REQ": "Request", "CLQ": "Request",
    "OTH": "Chat",
}


@dataclass(kw_only=True)
class ContextLimits:
    """How much of a conversation a prompt or query keeps (its most recent part)."""

    max_utterances: int
    max_chars: int


def build_turns(dataset: str, rec_turns: pd.DataFrame, limits: ContextLimits) -> pd.DataFrame:
    out = rec_turns[["instance_id", "dialogue_id", "split", "gold_item_ids", "gold_seen_in_context"]].copy()
    out.insert(0, "dataset", dataset)
    out["query"] = [templates.render_context(c, limits.max_utterances, limits.max_chars) for c in rec_turns["context"]]
    out["gold_item_ids"] = out["gold_item_ids"].map(list)
    out["gold_seen_in_context"] = out["gold_seen_in_context"].map(list)
    return out


def build_conv2item(turns: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    description = dict(zip(items["item_id"], items["description"]))
    rows = [
        {"dataset": t.dataset, "instance_id": t.instance_id, "dialogue_id": t.dialogue_id, "split": t.split,
         "query": t.query, "positive": description[item], "item_id": item, "gold_item_ids": list(t.gold_item_ids)}
        for t in turns.itertuples()
        for item in t.gold_item_ids
    ]
    return pd.DataFrame(rows, columns=["dataset", "instance_id", "dialogue_id", "split", "query", "positive", "item_id", "gold_item_ids"])


def build_conv2conv(turns: pd.DataFrame, documents: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, int]:
    """For each turn, one document context (from ``documents``, training turns) of another dialogue that
    shares a gold item; chosen by a seeded draw. Returns the pairs and how many turns had no partner."""
    by_item: dict[str, list[int]] = {}
    for row, golds in enumerate(documents["gold_item_ids"]):
        for item in golds:
            by_item.setdefault(item, []).append(row)
    rows, lonely = [], 0
    for t in turns.itertuples():
        candidates = sorted({r for item in t.gold_item_ids for r in by_item.get(item, [])
                             if documents.iloc[r]["dialogue_id"] != t.dialogue_id})
        if not candidates:
            lonely += 1
            continue
        rng = random.Random(f"{seed}:{t.instance_id}")
        doc = documents.iloc[rng.choice(candidates)]
        rows.append({"dataset": t.dataset, "instance_id": t.instance_id, "dialogue_id": t.dialogue_id, "split": t.split,
                     "query": t.query, "positive": doc["query"], "positive_instance_id": doc["instance_id"],
                     "gold_item_ids": list(t.gold_item_ids), "positive_gold_item_ids": list(doc["gold_item_ids"])})
    columns = ["dataset", "instance_id", "dialogue_id", "split", "query", "positive", "positive_instance_id",
               "gold_item_ids", "positive_gold_item_ids"]
    return pd.DataFrame(rows, columns=columns), lonely


def dm_target(user_intents: list[str], actions: list[str], codes: pd.DataFrame) -> tuple[str, list[str]]:
    """``<a>Action</a>`` per action first, then (after ``DM_SEPARATOR``) the explanation from the annotated intent
    and action descriptions. Action first as in the paper's example (section 3.4: "<a>Recommend", since the user
    has expressed 'dislike' ...): a short generation already names the action, and the explanation that follows
    is conditioned on it."""
    info = {(r.role, r.code): r for r in codes.itertuples()}
    intents = [info[("seeker", c)] for c in user_intents if ("seeker", c) in info]
    acts = [info[("recommender", c)] for c in actions if ("recommender", c) in info]
    names = []
    for code in actions:
        name = ACTION_OF_CODE.get(code)
        if name is None:
            raise ValueError(f"IARD action code {code!r} has no ReFICR action; expected one of {sorted(ACTION_OF_CODE)}")
        if name not in names:
            names.append(name)
    if intents:
        why = "The user's intention: " + "; ".join(f"{i.name} ({i.description.lower()})" for i in intents) + "."
    else:
        why = "The user has not said anything new since the last system turn."
    how = " Suggested system action: " + "; ".join(f"{a.name} ({a.description.lower()})" for a in acts) + "."
    return action_tags(names) + DM_SEPARATOR + why + how, names


def build_dm(iard_turns: pd.DataFrame, codes: pd.DataFrame, limits: ContextLimits) -> pd.DataFrame:
    rows = []
    for t in iard_turns.itertuples():
        context = templates.render_context(t.context, limits.max_utterances, limits.max_chars)
        target, actions = dm_target(list(t.user_intents), list(t.system_actions), codes)
        rows.append({"dataset": "iard", "instance_id": t.instance_id, "dialogue_id": t.dialogue_id, "split": t.split,
                     "prompt": templates.dialogue_management_prompt(context),
                     "target": target, "actions": actions})
    return pd.DataFrame(rows, columns=["dataset", "instance_id", "dialogue_id", "split", "prompt", "target", "actions"])


def wrap_mentions(text: str, titles: list[tuple[str, str]]) -> str:
    """Wrap each mention of an item in ``<item>..</item>``: 'Title (Year)' where it appears, else the bare
    title (INSPIRED responses name films without their year)."""
    for display, bare in titles:
        for name in (display, bare):
            pattern = re.compile(r"(?<!<item>)" + re.escape(name) + r"(?!\s*\(\d{4}\))(?!</item>)")
            if name and pattern.search(text):
                text = pattern.sub(f"<item>{name}</item>", text)
                break
    return text


def build_response(dataset: str, dialogues: pd.DataFrame, items: pd.DataFrame, limits: ContextLimits) -> pd.DataFrame:
    """One instance per recommender turn (a maximal run of recommender utterances) with a non-empty context."""
    shown = item_titles(items)
    title = {r.item_id: (shown[r.item_id], r.title) for r in items.itertuples()}
    rows = []
    for dialogue_id, utts in dialogues.sort_values(["dialogue_id", "turn_index"]).groupby("dialogue_id", sort=False):
        utts = utts.reset_index(drop=True)
        for i, j in recommender_runs(utts.speaker.tolist()):
            if i == 0:
                continue
            mentioned = []
            for ids in utts.item_ids[i:j]:
                mentioned += [x for x in ids if x in title and x not in mentioned]
            context = [{"speaker": s, "text": x} for s, x in zip(utts.speaker[:i], utts.text[:i])]
            rows.append({
                "dataset": dataset, "instance_id": instance_id(dialogue_id, i), "dialogue_id": dialogue_id, "split": utts.split[i],
                "prompt": templates.response_prompt(templates.render_context(context, limits.max_utterances, limits.max_chars),
                                                    [title[x][0] for x in mentioned]),
                "target": wrap_mentions("\n".join(utts.text[i:j]), [title[x] for x in mentioned]),
                "item_ids": mentioned,
            })
    return pd.DataFrame(rows, columns=["dataset", "instance_id", "dialogue_id", "split", "prompt", "target", "item_ids"])


@dataclass(frozen=True, kw_only=True)
class InstructionCaps:
    """How many training instances each task keeps (``instructions.*``), chosen by a seeded hash of the id."""

    max_train_turns: dict[str, int]  # per recommendation dataset
    max_response: int
    max_dm: int
    seed: int


def build_instruction_tables(rec_data: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]], iard_turns: pd.DataFrame,
                             iard_codes: pd.DataFrame, limits: ContextLimits,
                             caps: InstructionCaps) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every ``{task}_{split}`` table from the ingest tables (``rec_data``: dataset -> (items, dialogues, rec_turns)),
    and the counts per task, split and dataset before and after the caps."""
    tables: dict[str, list[pd.DataFrame]] = {}
    counts: dict = {}

    def add(task: str, split: str, dataset: str, frame: pd.DataFrame, before: int) -> dict:
        tables.setdefault(f"{task}_{split}", []).append(frame)
        entry = {"before_cap": int(before), "kept": int(len(frame))}
        counts.setdefault(f"{task}_{split}", {})[dataset] = entry
        return entry

    for dataset, (items, dialogues, rec_turns) in rec_data.items():
        turns = build_turns(dataset, rec_turns, limits)
        train_all = turns[turns.split == "train"]
        train = seeded_sample(train_all, caps.max_train_turns[dataset], caps.seed)
        responses = build_response(dataset, dialogues, items, limits)
        every_pair = build_conv2item(train_all.reset_index(drop=True), items)
        add("catalogue", "train", dataset, every_pair, len(every_pair))
        for split in ("train", "valid", "test"):
            split_turns = train if split == "train" else turns[turns.split == split].reset_index(drop=True)
            add("turns", split, dataset, split_turns, len(train_all) if split == "train" else len(split_turns))
            pairs = build_conv2item(split_turns, items)
            add("conv2item", split, dataset, pairs, len(pairs))
            conv, lonely = build_conv2conv(split_turns, train_all, caps.seed)
            add("conv2conv", split, dataset, conv, len(split_turns))["without_partner"] = lonely
            split_resp = responses[responses.split == split]
            add("response", split, dataset, seeded_sample(split_resp, caps.max_response if split == "train" else None, caps.seed), len(split_resp))
    dm = build_dm(iard_turns, iard_codes, limits)
    for split in ("train", "test"):
        part = dm[dm.split == split]
        add("dm", split, "iard", seeded_sample(part, caps.max_dm if split == "train" else None, caps.seed), len(part))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in sorted(tables.items())}, counts
