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
