"""The ReFICR workflow as a library (paper Fig. 1): retrieve candidates (Conv2Item), retrieve collaborative
knowledge (Conv2Conv), rank the candidates with the LLM, manage the dialogue, generate the response.

The evaluation stage and the CLI both use it. Embedding matrices are L2-normalised float32; search is exact
inner product through FAISS.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pipeline import templates
from pipeline.metrics import ParsedRanking, apply_ranking, parse_ranking
from pipeline.mining import build_index, search
from pipeline.model import RetrievableLM


@dataclass
class ItemCorpus:
    item_ids: list[str]
    titles: list[str]  # "Title (Year)"
    vectors: np.ndarray

    def __post_init__(self):
        self.index = build_index(self.vectors)
        self.position = {item: i for i, item in enumerate(self.item_ids)}

    def top(self, query_vecs: np.ndarray, k: int) -> list[list[str]]:
        _, ids = search(self.index, query_vecs, k)
        return [[self.item_ids[i] for i in row if i >= 0] for row in ids]


@dataclass
class ConversationStore:
    """Training conversations for Conv2Conv: their rendered contexts, gold items and dialogue ids."""

    queries: list[str]
    gold: list[list[str]]
    dialogue_ids: list[str]
    vectors: np.ndarray  # embedded with the Conv2Conv *sample* instruction

    def __post_init__(self):
        self.index = build_index(self.vectors)

    def knowledge(self, query_vecs: np.ndarray, dialogue_ids: list[str], title: dict[str, str], utterances: int) -> list[str]:
        """For each query, what was recommended to the most similar other conversation, and its last words."""
        _, ids = search(self.index, query_vecs, 8)
        out = []
        for row, own in zip(ids, dialogue_ids):
            j = next((int(j) for j in row if j >= 0 and self.dialogue_ids[j] != own), None)
            if j is None:
                out.append(templates.NO_KNOWLEDGE)
                continue
            said = "\n".join(self.queries[j].split("\n")[-utterances:])
            items = ", ".join(title[g] for g in self.gold[j])
            out.append(f"Recommended to a user with a similar conversation: {items}\nTheir last utterances:\n{said}")
        return out


def context_item_lists(dialogues, instance_ids: list[str]) -> list[list[list[str]]]:
    """Per instance ``<dialogue_id>#<start>``: the item ids of each context utterance (before the turn), oldest first."""
    by_dialogue = {d: g.sort_values("turn_index") for d, g in dialogues.groupby("dialogue_id")}
    out = []
    for instance in instance_ids:
        dialogue, start = instance.rsplit("#", 1)
        rows = by_dialogue[dialogue]
        out.append([list(x) for x in rows.item_ids[rows.turn_index < int(start)]])
    return out


def ranking_prompt(context: str, candidates: list[str], title: dict[str, str], knowledge: str) -> str:
    return templates.fill(templates.RANKING, candidates=templates.number_candidates([title[c] for c in candidates]),
                          context=context, knowledge=knowledge, top_n=len(candidates))


def rank_with_llm(lm: RetrievableLM, contexts: list[str], retrieved: list[list[str]], n: int, title: dict[str, str],
                  knowledge: list[str], max_new_tokens: int, batch_size: int, max_prompt_length: int) -> tuple[list[list[str]], list[ParsedRanking], list[str]]:
    """The LLM's ranking of the top-``n`` candidates, then the retrieval order (so Recall@50 stays defined)."""
    prompts = [ranking_prompt(c, r[:n], title, k) for c, r, k in zip(contexts, retrieved, knowledge)]
    outputs = lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_prompt_length=max_prompt_length)
    ranked, parsed = [], []
    for out, r in zip(outputs, retrieved):
        p = parse_ranking(out, len(r[:n]))
        parsed.append(p)
        ranked.append(apply_ranking(r[:n], r, p))
    return ranked, parsed, outputs


def random_ranking(retrieved: list[list[str]], n: int, seed_keys: list[str]) -> list[list[str]]:
    """Ablation: the top-``n`` candidates in a seeded random order, then the retrieval order."""
    out = []
    for r, key in zip(retrieved, seed_keys):
        head = list(r[:n])
        random.Random(key).shuffle(head)
        out.append(head + list(r[n:]))
    return out


@dataclass
class Turn:
    """What ReFICR does at one turn: the action, candidates, knowledge, ranking and the response."""

    actions: list[str]
    dm_output: str
    candidates: list[str]  # item ids, retrieval order (top N)
    knowledge: str
    ranking_output: str
    recommended: list[str]  # item ids, the model's order
    response: str


class ReFICR:
    """The whole workflow over one item corpus and one conversation store (e.g. ReDial's)."""

    def __init__(self, lm: RetrievableLM, corpus: ItemCorpus, store: ConversationStore, title: dict[str, str],
                 n_candidates: int = 10, knowledge_utterances: int = 2, query_length: int = 96, prompt_length: int = 512,
                 max_context_utterances: int = 12, max_context_chars: int = 1200):
        self.lm, self.corpus, self.store, self.title = lm, corpus, store, title
        self.n, self.utterances = n_candidates, knowledge_utterances
        self.query_length, self.prompt_length = query_length, prompt_length
        self.limits = (max_context_utterances, max_context_chars)

    def turn(self, context: list[dict], force_recommend: bool = False, max_new_tokens: int = 64) -> Turn:
        from pipeline.instructions import ACTIONS
        from pipeline.metrics import parse_actions

        text = templates.render_context(context, *self.limits)
        dm_output = self.lm.generate([templates.fill(templates.DIALOGUE_MANAGEMENT, context=text)],
                                     max_new_tokens=max_new_tokens, max_prompt_length=self.prompt_length)[0]
        actions = parse_actions(dm_output, ACTIONS) or []
        candidates, knowledge, ranking_output, recommended = [], templates.NO_KNOWLEDGE, "", []
        if force_recommend or "Recommend" in actions:
            q = self.lm.embed([text], templates.CONV2ITEM_QUERY, max_length=self.query_length, truncation_side="left")
            retrieved = self.corpus.top(q, 50)[0]
            c = self.lm.embed([text], templates.CONV2CONV_QUERY, max_length=self.query_length, truncation_side="left")
            knowledge = self.store.knowledge(c, [""], self.title, self.utterances)[0]
            ranked, _, outputs = rank_with_llm(self.lm, [text], [retrieved], self.n, self.title, [knowledge],
                                               max_new_tokens, 1, self.prompt_length)
            candidates, ranking_output, recommended = retrieved[: self.n], outputs[0], ranked[0][:3]
        items = (" " + ", ".join(self.title[i] for i in recommended)) if recommended else " None"
        response = self.lm.generate([templates.fill(templates.RESPONSE, context=text, items=items)],
                                    max_new_tokens=max_new_tokens, max_prompt_length=self.prompt_length)[0]
        return Turn(actions, dm_output, candidates, knowledge, ranking_output, recommended, response)
