"""ReFICR's turn as the chat, ``reficr recommend`` and the service answer it: the candidates the LLM ranks come from
``retrieval+knowledge`` (``pipeline.workflow.fusion``: Conv2Item, the training conversations nearest by the encoder, the
collaborative signals, with the weights ``evaluate`` chose on the validation split), and the items the conversation
names are left out unless asked for (the metrics keep the published, unfiltered protocol; the product does not
recommend back what the seeker just named).

``Recommender.load`` reads the trained run ``evaluate@<dataset>`` saved (``ReFICR.from_run``) and its knowledge
choice, and fits the collaborative signals again from the run's training tables (deterministic, seconds).
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from pipeline.data import schemas
from pipeline.errors import MissingArtifactError
from pipeline.retrieval.collaborative import top_without
from pipeline.retrieval.context_embeddings import ContextEmbeddings
from pipeline.retrieval.popularity import training_gold
from pipeline.tasks import templates
from pipeline.tasks.actions import ACTIONS, parse_actions
from pipeline.workflow.fusion import KnowledgeChoice, KnowledgeScorer, Queries, every_training_turn
from pipeline.workflow.grounding import Catalogue, normalize, without_year
from pipeline.workflow.reficr import ReFICR

KNOWLEDGE_FILE = "knowledge.json"  # what evaluate chose on validation, saved beside the run (data/eval/<dataset>/)
WORD = re.compile(r"[\w']+")
MIN_BARE_TITLE = 4  # a one-word title written without its year must be at least this long ("Up", "It" are words)


class MentionLinker:
    """The catalogue items a conversation names: titles written with a year ("Superbad (2007)", any year:
    ``grounding.Catalogue``), and titles written without one where they start with a capital letter, not at a
    sentence's start when one word long ("I loved Superbad and The Hangover"): the most popular item of that name."""

    def __init__(self, titles: dict[str, str], popularity: np.ndarray, item_ids: list[str]):
        self.catalogue = Catalogue(titles.values())
        self.by_title = {t: i for i, t in titles.items()}
        rank = {item: -float(p) for item, p in zip(item_ids, popularity)}
        self.by_name: dict[str, str] = {}
        for item, title in sorted(titles.items(), key=lambda kv: (rank.get(kv[0], 0.0), kv[0])):
            self.by_name.setdefault(without_year(title), item)
        self.longest = max((len(n.split()) for n in self.by_name), default=1)

    def items(self, text: str) -> list[str]:
        with_year = self.catalogue.untagged(text)
        found = [(start, self.by_title[t]) for start, _, t in with_year if t in self.by_title]
        taken = [(s, e) for s, e, _ in with_year]
        words = list(WORD.finditer(text))
        w = 0
        while w < len(words):
            match = self._bare(text, words, w, taken)
            if match:
                end, item = match
                found.append((words[w].start(), item))
                w = end
            else:
                w += 1
        return list(dict.fromkeys(item for _, item in sorted(found)))

    def _bare(self, text: str, words, w: int, taken) -> tuple[int, str] | None:
        """(index after the match, item) of the longest title starting at word ``w``, written as a title is."""
        start = words[w].start()
        if not text[start].isupper() or any(s <= start < e for s, e in taken):
            return None
        for n in range(min(self.longest, len(words) - w), 0, -1):
            name = normalize(text[start:words[w + n - 1].end()])
            item = self.by_name.get(name)
            if item is None:
                continue
            sentence_start = not text[:start].strip() or text[:start].rstrip()[-1] in ".!?"
            if n == 1 and (len(name) < MIN_BARE_TITLE or sentence_start):
                continue
            return w + n, item
        return None


@dataclass
class Turn:
    """What ReFICR does at one turn: the action, candidates, knowledge, ranking and the response."""

    actions: list[str]
    dm_output: str
    candidates: list[str]  # item ids, best first (top N)
    knowledge: str
    ranking_output: str
    recommended: list[str]  # item ids, the model's order
    response: str
    candidate_scores: list[float] = field(default_factory=list)  # each candidate's score (Recommender.scores)


@dataclass
class Recommender:
    """A trained ReFICR with retrieval+knowledge's scorer (None for a run evaluated before it existed: Conv2Item alone)."""

    system: ReFICR
    scorer: KnowledgeScorer | None
    choice: KnowledgeChoice | None
    linker: MentionLinker
    temperature: float

    @classmethod
    def load(cls, root: str | Path, dataset: str) -> "Recommender":
        root = Path(root)
        system = ReFICR.from_run(root, dataset)
        saved = root / "data/eval" / dataset / KNOWLEDGE_FILE
        scorer = choice = None
        temperature = 1.0
        if saved.exists():
            data = json.loads(saved.read_text())
            choice, temperature = KnowledgeChoice.from_json(data["choice"]), float(data["temperature"])
            interim = root / "data/interim" / dataset
            items = schemas.read_table(interim / "items.parquet", schemas.ITEMS)
            dialogues = schemas.read_table(interim / "dialogues.parquet", schemas.DIALOGUES)
            rec_turns = schemas.read_table(interim / "rec_turns.parquet", schemas.REC_TURNS)
            pairs = root / "data/instructions/catalogue_train.parquet"
            if not pairs.exists():
                raise MissingArtifactError(f"{pairs}: not found; `dvc repro build_instructions` makes it")
            scorer = KnowledgeScorer.from_tables(items, dialogues, every_training_turn(pairs, dataset),
                                                 ContextEmbeddings.load(root / "data/embeddings/reficr" / dataset, "train"),
                                                 training_gold(rec_turns))
        counts = scorer.popularity if scorer is not None else np.zeros(len(system.corpus.item_ids))
        return cls(system, scorer, choice, MentionLinker(system.title, counts, system.corpus.item_ids), temperature)

    def named(self, context: list[dict]) -> list[str]:
        """The items the conversation names, oldest first."""
        return list(dict.fromkeys(i for u in context for i in self.linker.items(u["text"])))

    def scores(self, texts: list[str], named: list[list[str]], weights: dict[str, float] | None = None) -> np.ndarray:
        """[contexts, items]: every catalogue item's score per context (``named``: the items each names): the mixture
        ``weights`` names over the run's signals (default: retrieval+knowledge's, as validation chose it), or
        Conv2Item's for a run without that choice. Conv2Item's query is embedded only where a weight needs it."""
        corpus, encoder = self.system.corpus, self.system.encoder
        if self.scorer is None:
            if weights:
                raise ValueError("a mixture's weights need retrieval+knowledge's choice; this run has none (Conv2Item alone)")
            return corpus.scores(encoder.conversations(texts, templates.CONV2ITEM_QUERY))
        weights = self.choice.fusion_weights if weights is None else weights
        vectors = logits = None
        if weights.get("retrieval") or weights.get("encoder_neighbours"):
            vectors = encoder.conversations(texts, templates.CONV2ITEM_QUERY)
            logits = corpus.scores(vectors) / self.temperature
        scores = self.scorer.scores(Queries(texts, named, vectors, logits), weights, self.choice)
        return np.broadcast_to(scores, (len(texts), scores.shape[-1]))  # popularity alone is one row for every context

    def turn(self, context: list[dict], force_recommend: bool = False, include_named: bool = False,
             timed: Callable[[str], ContextManager] = lambda stage: nullcontext()) -> Turn:
        """One conversation turn: dialogue management, then (when it says Recommend, or ``force_recommend``)
        retrieval+knowledge's candidates (the named items left out unless ``include_named``), Conv2Conv's knowledge
        and the LLM's ranking, then the reply. ``timed(stage)`` wraps each stage (dm, retrieve, knowledge, rank,
        respond), e.g. to time it (``pipeline.service.answer``)."""
        system, s = self.system, self.system.settings
        with timed("dm"):
            text = system.render(context)
            dm_output = system.manage([text])[0]
        actions = parse_actions(dm_output, ACTIONS) or []
        candidates, scores, knowledge, ranking_output, recommended = [], [], templates.NO_KNOWLEDGE, "", []
        if force_recommend or "Recommend" in actions:
            with timed("retrieve"):
                named = self.named(context)
                all_scores = self.scores([text], [named])[0]
                ids = system.corpus.item_ids
                retrieved = top_without(all_scores, ids, [] if include_named else named, s.top_k)
            with timed("knowledge"):
                knowledge = system.knowledge([text], [""])[0]
            with timed("rank"):
                ranked, _, outputs = system.rank([text], [retrieved], [knowledge])
            row = {item: i for i, item in enumerate(ids)}
            candidates, ranking_output = retrieved[: s.candidates], outputs[0]
            scores = [float(all_scores[row[i]]) for i in candidates]
            recommended = ranked[0][: s.items_in_response]
        with timed("respond"):
            response = system.respond([text], [recommended])[0]
        return Turn(actions, dm_output, candidates, knowledge, ranking_output, recommended, response, scores)


def save_choice(folder: Path, choice: KnowledgeChoice, temperature: float) -> None:
    """What ``Recommender.load`` reads back: the validation choice and the retrieval logits' temperature."""
    (folder / KNOWLEDGE_FILE).write_text(json.dumps({"choice": choice.to_json(), "temperature": temperature}, indent=2) + "\n")

