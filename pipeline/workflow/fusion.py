"""``retrieval+knowledge`` (an extension of the paper's workflow) and the collaborative baselines, as one scorer.

The paper hands the conversations Conv2Conv retrieves, with what was recommended in them, to a 7B listwise ranker.
A 135M ranker cannot use that knowledge through generation, but a score can. ``retrieval+knowledge`` scores every
catalogue item for a context as a mixture of per-context distributions over the catalogue (``pipeline.retrieval.collaborative``):

- ``retrieval``: ReFICR's Conv2Item scores, softmax((cosine + bias) / temperature), as fine-tuning trained them;
- ``encoder_neighbours``: the gold items of the training contexts nearest in the fine-tuned encoder's query space
  (conversation-to-conversation retrieval by ReFICR's own embeddings), weighted by similarity;
- ``text_neighbours``: the same vote with TF-IDF similarity (the conversation kNN baseline);
- ``co_mention``: items named in the same training dialogues as the items the context names;
- ``popularity``: the training split's recommendation counts.

Every setting (co-mention's beta, each neighbour vote's size and power, the weights) is chosen on the validation
split (``choose``), never on test. ``collaborative_mix`` is the same mixture without ReFICR's two signals: the
baseline a practitioner would build without an LLM, so that the difference between the two is what the LLM adds.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.retrieval.collaborative import (
    CoMention,
    ConversationKNN,
    EmbeddingKNN,
    as_distribution,
    choose_setting,
    choose_weights,
    mixture,
    popularity_distribution,
    softmax_rows,
    validation_score,
)
from pipeline.retrieval.context_embeddings import ContextEmbeddings
from pipeline.retrieval.corpus import context_item_lists
from pipeline.retrieval.popularity import item_counts

log = logging.getLogger(__name__)

SIGNALS = ("retrieval", "encoder_neighbours", "text_neighbours", "co_mention", "popularity")
COLLABORATIVE = ("co_mention", "text_neighbours", "popularity")  # collaborative_mix: no LLM
TIEBREAK = 1e-6  # popularity's weight added to every mixture: items no signal scores keep the popularity order


@dataclass(frozen=True, kw_only=True)
class KnowledgeGrid:
    """The settings the validation split chooses among (``knowledge.*`` in params.yaml)."""

    co_mention_beta: list[float]
    text_neighbours: list[int]
    encoder_neighbours: list[int]
    neighbour_power: list[float]
    weight_step: float


@dataclass
class KnowledgeChoice:
    """What the validation split chose, with the validation score (dedup Recall per item, mean of @10 and @50) of
    every signal alone and of both mixtures; saved with a run (JSON) so that the chat scores as evaluation did."""

    co_mention_beta: float
    text_neighbours: int
    text_power: float
    encoder_neighbours: int
    encoder_power: float
    mix_weights: dict[str, float]
    fusion_weights: dict[str, float]
    validation: dict[str, float] = field(default_factory=dict)
    validation_n: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat ``knowledge.*`` metrics: the choices, both mixtures' weights, the validation scores."""
        out = {f"knowledge.{k}": v for k, v in asdict(self).items() if isinstance(v, (int, float))}
        out.update({f"knowledge.collaborative_mix.weight.{k}": v for k, v in self.mix_weights.items()})
        out.update({f"knowledge.retrieval+knowledge.weight.{k}": v for k, v in self.fusion_weights.items()})
        out.update({f"knowledge.validation.{k}": v for k, v in self.validation.items()})
        return out

    @classmethod
    def from_json(cls, data: dict) -> "KnowledgeChoice":
        return cls(**data)


@dataclass
class Queries:
    """The contexts a scorer scores: rendered text, the item ids the context names, and (for ReFICR's signals) the
    fine-tuned query embeddings and retrieval logits ((cosine + bias) / temperature) over the catalogue."""

    texts: list[str]
    context_items: list[list[str]]
    vectors: np.ndarray | None = None
    retrieval_logits: np.ndarray | None = None


def context_items(dialogues: pd.DataFrame, instance_ids: list[str]) -> list[list[str]]:
    """Per instance: the item ids its context names, oldest first, each once."""
    return [list(dict.fromkeys(i for utterance in lists for i in utterance))
            for lists in context_item_lists(dialogues, instance_ids)]


def every_training_turn(catalogue_pairs: Path, dataset: str) -> pd.DataFrame:
    """One row per training turn (the catalogue pairs hold every one; ``turns_train`` only the capped sample)."""
    pairs = pd.read_parquet(catalogue_pairs, columns=["dataset", "instance_id", "dialogue_id", "query", "gold_item_ids"])
    return pairs[pairs["dataset"] == dataset].drop_duplicates("instance_id").reset_index(drop=True)


class KnowledgeScorer:
    """The collaborative signals fitted on the training split of one dataset, and ReFICR's encoder neighbours.

    ``dialogue_items``: the items named in each training dialogue (co-mention); ``train_texts`` /
    ``train_context_items`` / ``train_gold``: every training turn (the TF-IDF neighbours); ``encoder_vectors`` /
    ``encoder_gold``: training contexts the fine-tuned model embedded (``pipeline.retrieval.context_embeddings``);
    ``counts``: training recommendation counts in catalogue order."""

    def __init__(self, item_ids: Sequence[str], dialogue_items: Sequence[Sequence[str]], train_texts: Sequence[str],
                 train_context_items: Sequence[Sequence[str]], train_gold: Sequence[Sequence[str]],
                 encoder_vectors: np.ndarray | None, encoder_gold: Sequence[Sequence[str]], counts: np.ndarray):
        self.item_ids = list(item_ids)
        self.row = {item: r for r, item in enumerate(self.item_ids)}
        self.co_mention = CoMention(dialogue_items, self.item_ids)
        self.text = ConversationKNN(train_texts, train_context_items, train_gold, self.item_ids)
        self.encoder = EmbeddingKNN(encoder_vectors, encoder_gold, self.item_ids) if encoder_vectors is not None else None
        self.popularity = popularity_distribution(counts)

    @classmethod
    def from_tables(cls, items: pd.DataFrame, dialogues: pd.DataFrame, train_turns: pd.DataFrame,
                    encoder_contexts: ContextEmbeddings | None, train_gold: list[list[str]]) -> "KnowledgeScorer":
        """Fitted on one dataset's training split: ``dialogues`` (every split; the training ones are used),
        ``train_turns`` (every training turn: instance_id, query, gold_item_ids), the training contexts the fine-tuned
        model embedded, and ``train_gold`` (every training turn's gold items: popularity)."""
        train = dialogues[dialogues["split"] == "train"].sort_values(["dialogue_id", "turn_index"])
        dialogue_items = [[i for ids in group for i in ids] for _, group in train.groupby("dialogue_id")["item_ids"]]
        ids = items["item_id"].tolist()
        return cls(ids, dialogue_items, train_turns["query"].tolist(), context_items(dialogues, train_turns.instance_id.tolist()),
                   [list(g) for g in train_turns["gold_item_ids"]],
                   None if encoder_contexts is None else encoder_contexts.vectors,
                   [] if encoder_contexts is None else [list(g) for g in encoder_contexts.contexts["gold_item_ids"]],
                   item_counts(train_gold, ids))

    def parts(self, queries: Queries, choice: KnowledgeChoice, names: Sequence[str] = SIGNALS) -> dict[str, np.ndarray]:
        """Each named signal's distribution over the catalogue per query at the chosen settings."""
        out: dict[str, np.ndarray] = {"popularity": self.popularity[None, :]}
        if "co_mention" in names:
            out["co_mention"] = as_distribution(self.co_mention.scores(queries.context_items, choice.co_mention_beta))
        if "text_neighbours" in names:
            similarity = self.text.similarity(queries.texts, queries.context_items)
            out["text_neighbours"] = as_distribution(self.text.scores(similarity, choice.text_neighbours, choice.text_power))
        if "encoder_neighbours" in names:
            out["encoder_neighbours"] = as_distribution(self.encoder.scores(self.encoder.similarity(queries.vectors),
                                                                            choice.encoder_neighbours, choice.encoder_power))
        if "retrieval" in names:
            out["retrieval"] = softmax_rows(queries.retrieval_logits)
        return {n: out[n] for n in names}

    def scores(self, queries: Queries, weights: dict[str, float], choice: KnowledgeChoice) -> np.ndarray:
        """[queries, items]: the mixture of the signals ``weights`` names (popularity always breaks ties)."""
        names = list(dict.fromkeys([n for n, w in weights.items() if w] + ["popularity"]))
        return self.mix(self.parts(queries, choice, names), weights)

    @staticmethod
    def mix(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
        """``mixture`` of ``parts`` with popularity's tie-breaking weight added."""
        weights = {n: w for n, w in weights.items() if w}
        weights["popularity"] = weights.get("popularity", 0.0) + TIEBREAK
        return mixture(parts, weights)

    def choose(self, queries: Queries, gold_rows: list[list[int]], grid: KnowledgeGrid) -> KnowledgeChoice:
        """Every setting on the validation ``queries`` (``gold_rows``: their dedup gold rows): each signal's own
        settings first, by that signal alone; then the weights of both mixtures over the chosen signals."""
        tiebreak = TIEBREAK * self.popularity[None, :]
        beta = choose_setting(grid.co_mention_beta, lambda b: as_distribution(self.co_mention.scores(queries.context_items, b)),
                              gold_rows, tiebreak)
        text_similarity = self.text.similarity(queries.texts, queries.context_items)
        pairs = list(itertools.product(grid.text_neighbours, grid.neighbour_power))
        text = choose_setting(pairs, lambda kp: as_distribution(self.text.scores(text_similarity, *kp)), gold_rows, tiebreak)
        encoder_similarity = self.encoder.similarity(queries.vectors)
        pairs = list(itertools.product(grid.encoder_neighbours, grid.neighbour_power))
        enc = choose_setting(pairs, lambda kp: as_distribution(self.encoder.scores(encoder_similarity, *kp)), gold_rows, tiebreak)
        choice = KnowledgeChoice(beta.chosen, text.chosen[0], text.chosen[1], enc.chosen[0], enc.chosen[1], {}, {})
        parts = self.parts(queries, choice)
        validation = {name: validation_score(part + tiebreak, gold_rows) for name, part in parts.items()}
        floor = {"popularity": TIEBREAK}
        choice.mix_weights, validation["collaborative_mix"], tried = choose_weights(
            {n: parts[n] for n in COLLABORATIVE}, gold_rows, grid.weight_step, floor)
        choice.fusion_weights, validation["retrieval+knowledge"], tried_fusion = choose_weights(
            parts, gold_rows, grid.weight_step, floor)
        choice.validation = {k: round(float(v), 6) for k, v in validation.items()}
        choice.validation_n = sum(map(len, gold_rows))
        log.info("knowledge settings chosen on %d validation gold items (%d and %d weightings tried): %s",
                 choice.validation_n, tried, tried_fusion, choice.to_json())
        return choice
