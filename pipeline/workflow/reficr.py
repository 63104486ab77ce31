"""The ReFICR workflow as a library (paper Fig. 1): manage the dialogue, retrieve candidates (Conv2Item),
retrieve collaborative knowledge (Conv2Conv), rank the candidates with the LLM, generate the response.

``ReFICR`` works on batches of rendered contexts, so that evaluation (``pipeline.evaluation.protocol``), the
simulated seekers and the CLI run the same code; ``ReFICR.from_run`` loads the trained system that
``evaluate@<dataset>`` saved. One conversation turn as the product answers it: ``pipeline.workflow.knowledge``.
What it searches: ``pipeline.retrieval.corpus``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.items import item_titles
from pipeline.errors import MissingArtifactError, ParamError
from pipeline.model.encoder import Encoder
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import ModelSettings, RecommenderSettings
from pipeline.retrieval.corpus import ConversationStore, ItemCorpus
from pipeline.tasks import templates
from pipeline.tasks.actions import ACTIONS
from pipeline.tasks.ranking import ParsedRanking
from pipeline.workflow.dialogue import DMHead, dm_decide, dm_evidence, dm_null, dm_starts
from pipeline.workflow.grounding import Catalogue, Reply, ground_reply
from pipeline.workflow.ranker import rank_with_llm

# What `evaluate@<dataset>` saves in data/eval/<dataset>/ for `from_run`.
RUN_MANIFEST = "recommender.json"
ITEMS_FILE, BIAS_FILE, CONVERSATIONS_FILE = "reficr_items.npy", "reficr_item_bias.npy", "reficr_conversations.npy"


class ReFICR:
    """The whole workflow over one item corpus and one conversation store (e.g. ReDial's)."""

    def __init__(self, lm: RetrievableLM, corpus: ItemCorpus, store: ConversationStore, title: dict[str, str],
                 settings: RecommenderSettings, retriever: RetrievableLM | None = None):
        """``lm`` generates (dialogue management, ranking, replies) and, without a ``retriever``, embeds too."""
        self.lm, self.corpus, self.store, self.title, self.settings = lm, corpus, store, title, settings
        self.encoder = Encoder(retriever or lm, settings.query_length, settings.document_length, settings.embed_batch)
        self.catalogue = Catalogue(title.values())
        self._dm_null: np.ndarray | None = None  # dm_null of settings.dm_choices, computed on first use
        self._dm_head = DMHead.from_dict(settings.dm_head) if settings.dm_head else None
        if self._dm_head is not None and self._dm_head.choices != [list(c) for c in settings.dm_choices]:
            raise ParamError("dialogue management: the DM head's choices are not settings.dm_choices; expected the head "
                             "fitted on the same choices")

    # ------------------------------------------------------------------ loading a trained run
    @classmethod
    def from_run(cls, root: str | Path, dataset: str) -> "ReFICR":
        """The fine-tuned model (``ModelSettings.load_tuned``: the one that embeds, and the one that generates where
        fine-tuning kept it apart) with the item and conversation embeddings ``evaluate@<dataset>`` saved, loaded with
        the settings it ran with (``data/eval/<dataset>/recommender.json``)."""
        root = Path(root)
        run = root / "data/eval" / dataset
        needed = [root / "models/reficr", run / RUN_MANIFEST, run / ITEMS_FILE, run / CONVERSATIONS_FILE,
                  root / f"data/interim/{dataset}/items.parquet", root / "data/instructions/turns_train.parquet"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise MissingArtifactError(f"no trained run for {dataset} under {root}: missing {', '.join(missing)}; "
                                    f"`dvc repro evaluate@{dataset}` makes it")
        manifest = json.loads((run / RUN_MANIFEST).read_text())
        retriever, lm = ModelSettings(**manifest["model"]).load_tuned(root / "models/base", root / "models/reficr")
        items = pd.read_parquet(needed[4])
        turns = pd.read_parquet(needed[5])
        turns = turns[turns["dataset"] == dataset]
        bias = np.load(run / BIAS_FILE, allow_pickle=False) if (run / BIAS_FILE).exists() else None
        corpus = ItemCorpus(items["item_id"].tolist(), np.load(needed[2], allow_pickle=False), bias)
        store = ConversationStore.from_turns(turns, np.load(needed[3], allow_pickle=False))
        return cls(lm, corpus, store, item_titles(items), RecommenderSettings(**manifest["settings"]), retriever)

    def save_run(self, folder: str | Path, model: ModelSettings) -> None:
        """What ``from_run`` loads besides the model: the corpus and conversation embeddings and the settings."""
        folder = Path(folder)
        np.save(folder / ITEMS_FILE, self.corpus.vectors, allow_pickle=False)
        if self.corpus.bias is not None:
            np.save(folder / BIAS_FILE, self.corpus.bias, allow_pickle=False)
        np.save(folder / CONVERSATIONS_FILE, self.store.vectors, allow_pickle=False)
        manifest = {"model": asdict(model), "settings": asdict(self.settings)}
        (folder / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    # ------------------------------------------------------------------ the subtasks, batched
    def render(self, context: list[dict]) -> str:
        return templates.render_context(context, self.settings.context_max_utterances, self.settings.context_max_chars)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy generation in batches of ``generation_batch``, prompts cut to ``prompt_length`` (their end kept)."""
        return self.lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=self.settings.generation_batch,
                                max_prompt_length=self.settings.prompt_length)

    def manage(self, texts: list[str]) -> list[str]:
        """Dialogue management: ``<a>Action</a>`` tags, then the generated explanation, per context."""
        return self.manage_prompts([templates.dialogue_management_prompt(t) for t in texts])

    def choose_actions(self, prompts: list[str]) -> list[list[str]]:
        """The action sequence per built DM prompt: of ``settings.dm_choices`` (the training split's frequent
        sequences), the one the prior and the calibrated model together favour (``dm_decide``): the prior is the DM
        head's per-turn one where the run has a head (``settings.dm_head``), else the choices' training shares; the
        model's evidence (``dm_evidence``) counts ``settings.dm_weight`` times (both chosen by ``validate_dm``)."""
        s = self.settings
        choices = s.dm_choices or [[a] for a in ACTIONS]
        prior = self._dm_head.log_prior(prompts) if self._dm_head is not None else s.dm_log_prior
        if s.dm_weight == 0:  # the prior alone: the model's evidence would be multiplied by 0
            return [choices[i] for i in dm_decide(np.zeros((len(prompts), len(choices))), prior, 0.0)]
        if self._dm_null is None:  # the content-free prompt's scores, once per system
            self._dm_null = dm_null(self.lm, choices, s.prompt_length)
        evidence = dm_evidence(self.lm, prompts, choices, s.prompt_length, null=self._dm_null)
        return [choices[i] for i in dm_decide(evidence, prior, s.dm_weight)]

    def manage_prompts(self, prompts: list[str]) -> list[str]:
        """Dialogue management on built prompts, decoded under a constraint: the output starts with the tags of
        the chosen action sequence (``choose_actions``: always one the chat can act on), and the model's greedy
        generation continues it with the explanation (the targets name the actions first, then explain them)."""
        starts = dm_starts(self.choose_actions(prompts))
        explanations = self.lm.generate(prompts, max_new_tokens=self.settings.max_new_tokens_dm,
                                        batch_size=self.settings.generation_batch,
                                        max_prompt_length=self.settings.prompt_length, starts=starts)
        return [start + text.strip() for start, text in zip(starts, explanations)]

    def retrieve(self, texts: list[str], instruction: str = templates.CONV2ITEM_QUERY) -> list[list[str]]:
        """Conv2Item: the top ``top_k`` items of the whole corpus per context."""
        return self.corpus.top(self.encoder.conversations(texts, instruction), self.settings.top_k)

    def item_scores(self, texts: list[str]) -> np.ndarray:
        """Conv2Item scores of every corpus item per context (what ``retrieve`` ranks by)."""
        return self.corpus.scores(self.encoder.conversations(texts, templates.CONV2ITEM_QUERY))

    def knowledge(self, texts: list[str], dialogue_ids: list[str]) -> list[str]:
        """Conv2Conv: collaborative knowledge from the most similar training conversation of another dialogue."""
        vecs = self.encoder.conversations(texts, templates.CONV2CONV_QUERY)
        return self.store.knowledge(vecs, dialogue_ids, self.title, self.settings.knowledge_utterances)

    def rank(self, texts: list[str], retrieved: list[list[str]],
             knowledge: list[str]) -> tuple[list[list[str]], list[ParsedRanking], list[str]]:
        s = self.settings
        return rank_with_llm(self.lm, texts, retrieved, s.candidates, self.title, knowledge, s.max_new_tokens_ranking,
                             s.generation_batch, s.prompt_length)

    def respond(self, texts: list[str], items: list[list[str]]) -> list[str]:
        """The replies a person reads (the text of ``replies``)."""
        return [r.text for r in self.replies(texts, items)]

    def replies(self, texts: list[str], items: list[list[str]]) -> list[Reply]:
        """Response generation naming ``items`` (ids) per context (no items gives the prompt's 'None'), each
        generated reply grounded in the turn (``pipeline.workflow.grounding``: no other items, no loops, no copy of the
        seeker, no next turn); the raw generation is kept beside it."""
        prompts = [templates.response_prompt(t, [self.title[i] for i in ids]) for t, ids in zip(texts, items)]
        raw = self.generate(prompts, self.settings.max_new_tokens_response)
        return [ground_reply(r, [self.title[i] for i in ids], t, self.catalogue) for r, ids, t in zip(raw, items, texts)]
