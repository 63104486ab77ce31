"""The ReFICR workflow as a library (paper Fig. 1): manage the dialogue, retrieve candidates (Conv2Item),
retrieve collaborative knowledge (Conv2Conv), rank the candidates with the LLM, generate the response.

``ReFICR`` works on batches of rendered contexts, so that evaluation (``pipeline.evaluation``), mining and the
CLI run the same code; ``ReFICR.turn`` is one conversation turn, and ``ReFICR.from_run`` loads the trained
system that ``evaluate@<dataset>`` saved. Embedding matrices are L2-normalised float32; search is exact
inner product (``pipeline.index``).
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from pipeline import templates
from pipeline.catalogue import rank_scores
from pipeline.data.items import item_titles
from pipeline.dm_policy import DMHead, dm_decide
from pipeline.encoder import Encoder
from pipeline.errors import MissingArtifactError, ParamError
from pipeline.grounding import Catalogue, Reply, ground_reply
from pipeline.index import build_index, search
from pipeline.instructions import ACTIONS, DM_SEPARATOR, action_tags
from pipeline.metrics import parse_actions
from pipeline.model import RetrievableLM
from pipeline.ranking import ParsedRanking, rank_with_llm
from pipeline.schemas import instance_start
from pipeline.settings import ModelSettings, RecommenderSettings

# Conv2Conv searches this many neighbours to find one from *another* dialogue (a context's own dialogue's
# other turns are its nearest neighbours); a query left with none gets NO_KNOWLEDGE.
KNOWLEDGE_NEIGHBOURS = 8
# What `evaluate@<dataset>` saves in data/eval/<dataset>/ for `from_run`.
RUN_MANIFEST = "recommender.json"
ITEMS_FILE, BIAS_FILE, CONVERSATIONS_FILE = "reficr_items.npy", "reficr_item_bias.npy", "reficr_conversations.npy"
# the key/value cache's name in model outputs and forward arguments: `cache` since transformers 5.2x, `past_key_values`
# before (the GPU machines' image has 5.17; the old name is deprecated in 5.24 and due to go)
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
DM_TAG_TOKENS = 64  # room for a sequence of <a>Action</a> tags (three actions take ~20 tokens)


def dm_starts(choices: list[list[str]]) -> list[str]:
    """Each choice as the start of a DM output: its tags and ``DM_SEPARATOR`` (which ends a sequence, so that a
    longer one is not penalised for the tokens a shorter one lacks)."""
    return [action_tags(c) + DM_SEPARATOR for c in choices]


def dm_null(lm: RetrievableLM, choices: list[list[str]], prompt_length: int) -> np.ndarray:
    """Each choice's log-likelihood as the output's start under the content-free prompt (an empty conversation)."""
    return score_endings(lm, templates.dialogue_management_prompt(""), dm_starts(choices), prompt_length, DM_TAG_TOKENS,
                         eos=False)


def dm_evidence(lm: RetrievableLM, prompts: list[str], choices: list[list[str]], prompt_length: int,
                progress: bool | None = None, null: np.ndarray | None = None) -> np.ndarray:
    """(prompts, choices): log-likelihood of each choice as the start of the output, minus the same under the
    content-free prompt (``dm_null``, given or computed): what the conversation adds to the model's preference,
    with its preference for a sequence whatever the conversation taken out (contextual calibration, Zhao et al.,
    ICML 2021). ``dm_decide`` weighs it against the training prior."""
    starts = dm_starts(choices)
    null = dm_null(lm, choices, prompt_length) if null is None else null
    show = progress if progress is not None else len(prompts) > 20
    rows = [score_endings(lm, p, starts, prompt_length, DM_TAG_TOKENS, eos=False)
            for p in tqdm(prompts, desc="dialogue management", unit="turn", disable=not show)]
    return np.stack(rows) - null[None, :] if rows else np.zeros((0, len(choices)))


@torch.no_grad()
def score_endings(lm: RetrievableLM, prompt: str, targets: list[str], max_prompt_length: int, max_target_length: int,
                  eos: bool = True) -> np.ndarray:
    """Log-likelihood of each target (its tokens, then EOS unless ``eos`` is False) given ``prompt``, as
    ``RetrievableLM.score`` sums it, but with the targets' shared token prefix run once and its key/value cache
    reused for the batch of their different endings: choosing among k endings costs one long and one short forward."""
    pairs = lm.tokenize_pairs([prompt] * len(targets), targets, max_prompt_length, max_target_length, eos=eos)
    seqs = [seq for seq, _ in pairs]
    n_prompt = pairs[0][1]
    shared = min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1)
    was_training = lm.model.training
    lm.model.eval()
    device = next(lm.model.parameters()).device
    head = lm.model(input_ids=torch.tensor([seqs[0][:shared]], device=device), use_cache=True)
    head_logp = torch.log_softmax(head.logits[0].float(), dim=-1)
    common = sum(float(head_logp[p - 1, seqs[0][p]]) for p in range(max(n_prompt, 1), shared))
    tails = [s[shared:] for s in seqs]
    ids, mask = lm.pad(tails, side="right")  # on the model's device
    cache = getattr(head, CACHE_FIELD)
    cache.batch_repeat_interleave(len(targets))
    attention = torch.cat([torch.ones(len(targets), shared, dtype=mask.dtype, device=device), mask], dim=1)
    logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=attention, **{CACHE_FIELD: cache}).logits.float(), dim=-1)
    first = head_logp[-1].gather(0, ids[:, 0])
    rest = (logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]).sum(dim=1)
    lm.model.train(was_training)
    return (common + first + rest).cpu().numpy().astype(np.float64)


@dataclass
class ItemCorpus:
    """The items retrieval ranks: by cosine to the query, plus a per-item score ``bias`` when the run learned one
    (``pipeline.catalogue``; searched exactly as one more dimension: [item, bias] . [query, 1])."""

    item_ids: list[str]
    vectors: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self):
        self.index = build_index(self.augment(self.vectors, self.bias))

    @staticmethod
    def augment(vectors: np.ndarray, column: np.ndarray | float | None) -> np.ndarray:
        if column is None:
            return vectors
        column = np.broadcast_to(np.asarray(column, dtype=np.float32), (len(vectors),))
        return np.hstack([vectors, column[:, None]]).astype(np.float32)

    def top(self, query_vecs: np.ndarray, k: int) -> list[list[str]]:
        _, ids = search(self.index, self.augment(query_vecs, None if self.bias is None else 1.0), k)
        return [[self.item_ids[i] for i in row if i >= 0] for row in ids]

    def scores(self, query_vecs: np.ndarray) -> np.ndarray:
        """Every item's retrieval score per query [queries, items]: cosine (+ bias)."""
        return rank_scores(query_vecs, self.vectors, self.bias)


@dataclass
class ConversationStore:
    """Training conversations for Conv2Conv: their rendered contexts, gold items and dialogue ids."""

    queries: list[str]
    gold: list[list[str]]
    dialogue_ids: list[str]
    vectors: np.ndarray  # embedded with the Conv2Conv *sample* instruction

    def __post_init__(self):
        self.index = build_index(self.vectors)

    @classmethod
    def from_turns(cls, turns: pd.DataFrame, vectors: np.ndarray) -> "ConversationStore":
        return cls(turns["query"].tolist(), [list(g) for g in turns["gold_item_ids"]], turns["dialogue_id"].tolist(), vectors)

    def knowledge(self, query_vecs: np.ndarray, dialogue_ids: list[str], title: dict[str, str], utterances: int) -> list[str]:
        """For each query, what was recommended to the most similar other conversation, and its last words."""
        _, ids = search(self.index, query_vecs, KNOWLEDGE_NEIGHBOURS)
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


def context_item_lists(dialogues: pd.DataFrame, instance_ids: list[str]) -> list[list[list[str]]]:
    """Per instance: the item ids of each context utterance (before the turn), oldest first."""
    by_dialogue = {d: g.sort_values("turn_index") for d, g in dialogues.groupby("dialogue_id")}
    out = []
    for instance in instance_ids:
        dialogue, start = instance_start(instance)
        rows = by_dialogue[dialogue]
        out.append([list(x) for x in rows.item_ids[rows.turn_index < start]])
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
    candidate_scores: list[float] = field(default_factory=list)  # each candidate's retrieval score (cosine [+ bias])


class ReFICR:
    """The whole workflow over one item corpus and one conversation store (e.g. ReDial's)."""

    def __init__(self, lm: RetrievableLM, corpus: ItemCorpus, store: ConversationStore, title: dict[str, str],
                 settings: RecommenderSettings):
        self.lm, self.corpus, self.store, self.title, self.settings = lm, corpus, store, title, settings
        self.encoder = Encoder(lm, settings.query_length, settings.document_length, settings.embed_batch)
        self.catalogue = Catalogue(title.values())
        self._dm_null: np.ndarray | None = None  # dm_null of settings.dm_choices, computed on first use
        self._dm_head = DMHead.from_dict(settings.dm_head) if settings.dm_head else None
        if self._dm_head is not None and self._dm_head.choices != [list(c) for c in settings.dm_choices]:
            raise ParamError("dialogue management: the DM head's choices are not settings.dm_choices; expected the head "
                             "fitted on the same choices")

    # ------------------------------------------------------------------ loading a trained run
    @classmethod
    def from_run(cls, root: str | Path, dataset: str) -> "ReFICR":
        """The fine-tuned model with the item and conversation embeddings ``evaluate@<dataset>`` saved, loaded
        with the settings it ran with (``data/eval/<dataset>/recommender.json``)."""
        root = Path(root)
        run = root / "data/eval" / dataset
        needed = [root / "models/reficr", run / RUN_MANIFEST, run / ITEMS_FILE, run / CONVERSATIONS_FILE,
                  root / f"data/interim/{dataset}/items.parquet", root / "data/instructions/turns_train.parquet"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise MissingArtifactError(f"no trained run for {dataset} under {root}: missing {', '.join(missing)}; "
                                    f"`dvc repro evaluate@{dataset}` makes it")
        manifest = json.loads((run / RUN_MANIFEST).read_text())
        lm = ModelSettings(**manifest["model"]).load(root / "models/base", adapter=root / "models/reficr", merge=True)
        items = pd.read_parquet(needed[4])
        turns = pd.read_parquet(needed[5])
        turns = turns[turns["dataset"] == dataset]
        bias = np.load(run / BIAS_FILE, allow_pickle=False) if (run / BIAS_FILE).exists() else None
        corpus = ItemCorpus(items["item_id"].tolist(), np.load(needed[2], allow_pickle=False), bias)
        store = ConversationStore.from_turns(turns, np.load(needed[3], allow_pickle=False))
        return cls(lm, corpus, store, item_titles(items), RecommenderSettings(**manifest["settings"]))

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
        generated reply grounded in the turn (``pipeline.grounding``: no other items, no loops, no copy of the
        seeker, no next turn); the raw generation is kept beside it."""
        prompts = [templates.response_prompt(t, [self.title[i] for i in ids]) for t, ids in zip(texts, items)]
        raw = self.generate(prompts, self.settings.max_new_tokens_response)
        return [ground_reply(r, [self.title[i] for i in ids], t, self.catalogue) for r, ids, t in zip(raw, items, texts)]

    # ------------------------------------------------------------------ one turn
    def turn(self, context: list[dict], force_recommend: bool = False,
             timed: Callable[[str], ContextManager] = lambda stage: nullcontext()) -> Turn:
        """One conversation turn: dialogue management, then (when it says Recommend, or ``force_recommend``)
        retrieval, knowledge and ranking, then the reply. ``timed(stage)`` wraps each stage (dm, retrieve,
        knowledge, rank, respond), e.g. to time it (``pipeline.answer``)."""
        with timed("dm"):
            text = self.render(context)
            dm_output = self.manage([text])[0]
        actions = parse_actions(dm_output, ACTIONS) or []
        candidates, scores, knowledge, ranking_output, recommended = [], [], templates.NO_KNOWLEDGE, "", []
        if force_recommend or "Recommend" in actions:
            with timed("retrieve"):  # = self.retrieve([text]), keeping the query to score the candidates
                query = self.encoder.conversations([text], templates.CONV2ITEM_QUERY)
                retrieved = self.corpus.top(query, self.settings.top_k)
                all_scores = self.corpus.scores(query)[0]
            with timed("knowledge"):
                knowledge = self.knowledge([text], [""])[0]
            with timed("rank"):
                ranked, _, outputs = self.rank([text], retrieved, [knowledge])
            row = {item: i for i, item in enumerate(self.corpus.item_ids)}
            candidates, ranking_output = retrieved[0][: self.settings.candidates], outputs[0]
            scores = [float(all_scores[row[i]]) for i in candidates]
            recommended = ranked[0][: self.settings.items_in_response]
        with timed("respond"):
            response = self.respond([text], [recommended])[0]
        return Turn(actions, dm_output, candidates, knowledge, ranking_output, recommended, response, scores)
