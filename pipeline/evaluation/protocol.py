"""The evaluation protocol as a library: the registry of systems, the samples they are
scored on, and the assembly of every metric. ``stages/evaluate.py`` reads params and writes what
``evaluate`` returns; ``stages/summarize.py`` and the tests read ``SYSTEMS``.

Samples of the test split, seeded by instance id (so ``n`` is known): the *retrieval* sample (``max_retrieval``,
0 = all) and, inside it, the *generation* sample (``max_generation``) for the systems that generate.
Adding a system = one function and one ``System`` line in ``SYSTEMS``; the metrics, predictions, plots and the
summary follow from the registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.data import schemas
from pipeline.data.items import item_titles
from pipeline.data.splits import seeded_sample
from pipeline.evaluation.baselines import BM25Retriever, context_echo
from pipeline.evaluation.content_check import content_check
from pipeline.evaluation.conversation import dialogue_management, response_metrics
from pipeline.evaluation.metrics import Instance, dedup, paired_difference, recommendation_metrics, without_named
from pipeline.model.encoder import Encoder, SharedTrunk
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import RecommenderSettings
from pipeline.retrieval.context_embeddings import ContextEmbeddings
from pipeline.retrieval.corpus import ConversationStore, ItemCorpus, context_item_lists, gold_rows, top_rows
from pipeline.retrieval.popularity import log_counts, popularity_ranking, training_gold
from pipeline.tasks import templates
from pipeline.tasks.ranking import ParsedRanking, parse_statistics, random_ranking
from pipeline.timing import Timer
from pipeline.training.catalogue import PriorChoice, prior_sweep
from pipeline.workflow.fusion import (
    KnowledgeChoice,
    KnowledgeGrid,
    KnowledgeScorer,
    Queries,
    context_items,
    every_training_turn,
)
from pipeline.workflow.reficr import ReFICR

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    max_retrieval: int  # test instances for retrieval-only systems (0 = all)
    max_generation: int  # of those, instances for systems that generate
    max_responses: int  # generated responses scored for Distinct-n and item mentions
    max_dm: int  # held-out IARD turns for dialogue management (0 = all)
    target_length: int  # tokens of a gold response scored for perplexity
    bootstrap: int  # bootstrap resamples for the 95% CIs
    seed: int
    temperature: float  # the fine-tuning temperature: retrieval+prior adds beta * log(1 + count) to cosine / temperature
    prior_betas: list[float]  # the betas tried on the validation split (the best is used on test)
    max_validation: int  # validation contexts used to choose beta (0 = all)
    # retrieval+prior's beta as fine-tuning's last validation pass chose it (``prior_choice``); None: choose here
    prior: PriorChoice | None = None
    max_dm_generation: int = 60  # of the DM turns, those the unconstrained generation is also run on (0 = all)
    prior_chosen_at: str = ""  # where ``prior`` was chosen when not there (fit_items, with the item offsets it adopted)
    knowledge: KnowledgeGrid | None = None  # the collaborative signals' settings the validation split chooses among


@dataclass
class EvalData:
    """What one dataset's evaluation reads (test turns are read here and nowhere else)."""

    dataset: str
    items: pd.DataFrame
    dialogues: pd.DataFrame
    train_gold: list[list[str]]  # gold items of the training split's recommender turns (popularity)
    turns_train: pd.DataFrame
    turns_valid: pd.DataFrame  # settings are chosen here (retrieval+prior's beta), never on test
    turns_test: pd.DataFrame
    responses_test: pd.DataFrame
    dm_train: pd.DataFrame  # IARD training turns (the majority-action baseline; DM's choices)
    dm_test: pd.DataFrame | None  # IARD held-out turns (evaluated with ReDial only)
    train_all: pd.DataFrame | None = None  # every training turn (query, gold_item_ids): the collaborative neighbours
    contexts: dict[str, ContextEmbeddings] | None = None  # the fine-tuned model's train/valid contexts (embed_contexts)

    @classmethod
    def read(cls, root: str | Path, dataset: str, with_dm: bool) -> "EvalData":
        root = Path(root)
        interim, instructions = root / "data/interim" / dataset, root / "data/instructions"
        rec_turns = schemas.read_table(interim / "rec_turns.parquet", schemas.REC_TURNS)

        def turns(name: str) -> pd.DataFrame:
            frame = pd.read_parquet(instructions / name)
            return frame[frame["dataset"] == dataset].reset_index(drop=True)

        return cls(dataset, schemas.read_table(interim / "items.parquet", schemas.ITEMS),
                   schemas.read_table(interim / "dialogues.parquet", schemas.DIALOGUES),
                   training_gold(rec_turns),
                   turns("turns_train.parquet"), turns("turns_valid.parquet"), turns("turns_test.parquet"),
                   turns("response_test.parquet"), pd.read_parquet(instructions / "dm_train.parquet"),
                   pd.read_parquet(instructions / "dm_test.parquet") if with_dm else None,
                   every_training_turn(instructions / "catalogue_train.parquet", dataset),
                   {split: ContextEmbeddings.load(root / "data/embeddings/reficr" / dataset, split) for split in ("train", "valid")})


def build_system(lm: RetrievableLM, data: EvalData, settings: RecommenderSettings, item_vectors: np.ndarray | None = None,
                 item_bias: np.ndarray | None = None, store: SharedTrunk | None = None,
                 generator: RetrievableLM | None = None) -> ReFICR:
    """ReFICR over ``data``'s corpus and training conversations (``store``: shared with another model, else
    embedded) by ``lm``; items given or embedded; ``item_bias``: a learned per-item score (``pipeline.training.catalogue``);
    ``generator``: the model that generates, where it is not ``lm`` (``ModelSettings.load_tuned``)."""
    encoder = Encoder(lm, settings.query_length, settings.document_length, settings.embed_batch)
    if item_vectors is None:
        item_vectors = encoder.items(data.items["description"].tolist())
    store_vectors = (store.embed(encoder) if store is not None
                     else encoder.conversations(data.turns_train["query"].tolist(), templates.CONV2CONV_SAMPLE))
    corpus = ItemCorpus(data.items["item_id"].tolist(), item_vectors, item_bias)
    return ReFICR(generator or lm, corpus, ConversationStore.from_turns(data.turns_train, store_vectors),
                  item_titles(data.items), settings, retriever=lm)


class EvalRun:
    """One dataset's evaluation: its samples, the base and fine-tuned systems (built on first use; the base
    model is dropped as soon as its lists are made, before the fine-tuned one is loaded: SYSTEMS lists the
    base model's systems first), and what the systems produced.

    ``shared_layers``: the decoder layers below the fine-tuned model's lowest LoRA layer (the base model's in
    both): the retrieval sample's queries go through them once (``SharedTrunk``)."""

    def __init__(self, data: EvalData, load_base: Callable[[], ReFICR], load_reficr: Callable[[], ReFICR],
                 settings: EvalSettings, recommender: RecommenderSettings, timer: Timer, shared_layers: int = 0):
        self.data, self.settings, self.recommender, self.timer = data, settings, recommender, timer
        self._load_base, self._load_reficr = load_base, load_reficr
        self.retr = seeded_sample(data.turns_test, settings.max_retrieval or None, settings.seed)
        self.retrieval_queries = SharedTrunk(self.retr["query"].tolist(), templates.CONV2ITEM_QUERY, shared_layers)
        self.gen = seeded_sample(self.retr, settings.max_generation or None, settings.seed)
        self.ranking_outputs: dict[str, tuple[list[ParsedRanking], list[str]]] = {}
        self.extra_metrics: dict[str, float] = {}  # what systems report about themselves (e.g. the chosen beta)
        log.info("%s: %d test instances, %d in the retrieval sample, %d in the generation sample",
                 data.dataset, len(data.turns_test), len(self.retr), len(self.gen))

    def sample(self, name: str) -> pd.DataFrame:
        return self.retr if name == "retrieval" else self.gen

    @cached_property
    def popular(self) -> list[str]:
        return popularity_ranking(self.data.train_gold, self.data.items["item_id"].tolist())

    @cached_property
    def base(self) -> dict[str, list]:
        with self.timer("base model: retrieval and knowledge"):
            system = self._load_base()
            return {"retrieved": system.corpus.top(self.retrieval_queries.embed(system.encoder), self.recommender.top_k),
                    "knowledge": system.knowledge(self.gen["query"].tolist(), self.gen.dialogue_id.tolist())}

    @cached_property
    def reficr(self) -> ReFICR:
        with self.timer("reficr: load, embed items and training conversations"):
            return self._load_reficr()

    @cached_property
    def query_vectors(self) -> np.ndarray:
        """The retrieval sample's contexts embedded for Conv2Item by the fine-tuned model."""
        with self.timer("reficr: embed the retrieval sample"):
            return self.retrieval_queries.embed(self.reficr.encoder)

    @cached_property
    def retrieved(self) -> list[list[str]]:
        return self.reficr.corpus.top(self.query_vectors, self.recommender.top_k)

    @cached_property
    def retrieved_gen(self) -> list[list[str]]:
        return self.on_generation_sample(self.retrieved)

    def on_generation_sample(self, lists: list[list[str]]) -> list[list[str]]:
        position = dict(zip(self.retr.instance_id, lists))
        return [position[i] for i in self.gen.instance_id]

    # ------------------------------------------------------------------ collaborative signals, retrieval+knowledge
    @cached_property
    def scorer(self) -> KnowledgeScorer:
        with self.timer("collaborative signals: fit on the training split"):
            return KnowledgeScorer.from_tables(self.data.items, self.data.dialogues, self.data.train_all, self.data.contexts["train"],
                                               self.data.train_gold)

    def queries(self, frame: pd.DataFrame, vectors: np.ndarray, named: list[list[str]]) -> Queries:
        """``frame``'s contexts as the scorer reads them (``named``: the items each names), with ReFICR's query
        vectors and retrieval logits."""
        return Queries(frame["query"].tolist(), named, vectors, self.reficr.corpus.scores(vectors) / self.settings.temperature)

    @cached_property
    def named(self) -> list[list[str]]:
        """The items each context of the retrieval sample names (co-mention; what a product leaves out)."""
        return context_items(self.data.dialogues, self.retr.instance_id.tolist())

    @cached_property
    def knowledge_choice(self) -> KnowledgeChoice:
        """Every knowledge setting, chosen on the validation contexts ``embed_contexts`` embedded (dedup gold)."""
        valid = self.data.contexts["valid"]
        frame = self.data.turns_valid.set_index("instance_id").loc[valid.contexts.instance_id].reset_index()
        with self.timer("collaborative signals and retrieval+knowledge: choose on the validation split"):
            named = context_items(self.data.dialogues, frame.instance_id.tolist())
            return self.scorer.choose(self.queries(frame, valid.vectors, named),
                                      gold_rows(frame.gold_item_ids, self.scorer.row, frame.gold_seen_in_context), self.settings.knowledge)

    @cached_property
    def test_parts(self) -> dict[str, np.ndarray]:
        with self.timer("collaborative signals and retrieval+knowledge on the retrieval sample"):
            return self.scorer.parts(self.queries(self.retr, self.query_vectors, self.named), self.knowledge_choice)

    def knowledge_lists(self, weights: dict[str, float]) -> list[list[str]]:
        """The mixture ``weights`` of the test parts, ``LONG_LIST`` times top_k items per instance (so that a list
        without the context's items still holds top_k)."""
        scores = self.scorer.mix(self.test_parts, weights)
        ids = self.scorer.item_ids
        return [[ids[i] for i in row] for row in top_rows(scores, LONG_LIST * self.recommender.top_k)]

    @cached_property
    def candidates(self) -> list[list[str]]:
        """``retrieval+knowledge``'s lists: the candidates the LLM ranks."""
        return self.knowledge_lists(self.knowledge_choice.fusion_weights)

    @cached_property
    def candidates_gen(self) -> list[list[str]]:
        return self.on_generation_sample(self.candidates)

    def ranked(self, name: str, knowledge: list[str]) -> list[list[str]]:
        with self.timer(f"ranking: {name}"):
            ranked, parsed, outputs = self.reficr.rank(self.gen["query"].tolist(), self.candidates_gen, knowledge)
        self.ranking_outputs[name] = (parsed, outputs)
        return ranked


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class System:
    name: str
    sample: str  # "retrieval" | "generation": which test sample it is scored on
    about: str
    rank: Callable[[EvalRun], list[list[str]]] = field(repr=False)  # one ranked item list per instance of the sample


def _bm25(run: EvalRun) -> list[list[str]]:
    items = run.data.items
    return BM25Retriever(items["item_id"].tolist(), items["description"].tolist()).retrieve(run.retr["query"].tolist(), run.recommender.top_k)


def _retrieval_prior(run: EvalRun) -> list[list[str]]:
    """cosine / temperature + beta * log(1 + training count), beta chosen on the validation split (the mean of
    Recall@10 and @50): by fine-tuning's last validation pass (or fit_items) where it made the choice, else here."""
    item_ids = run.data.items["item_id"].tolist()
    prior = log_counts(run.data.train_gold, item_ids)
    s, k = run.settings, run.recommender.top_k
    if s.prior is not None:
        beta, chosen, where = s.prior.beta, s.prior, s.prior_chosen_at or f"finetune validation, step {s.prior.step}"
        run.extra_metrics.update({"retrieval+prior.beta": beta, "retrieval+prior.validation_n": chosen.n, "retrieval+prior.chosen_at": where,
                                  f"retrieval+prior.validation_recall@10_50.beta={beta}": chosen.score,
                                  "retrieval+prior.validation_recall@10_50.beta=0": chosen.score_without})
        log.info("retrieval+prior: beta %s, chosen by %s", beta, where)
    else:
        valid = seeded_sample(run.data.turns_valid, s.max_validation or None, s.seed)
        position = {item: r for r, item in enumerate(item_ids)}
        gold_rows = [[position[g] for g in gold if g in position] for gold in valid.gold_item_ids]
        with run.timer("retrieval+prior: choose beta on the validation split"):
            valid_scores = run.reficr.item_scores(valid["query"].tolist()) / s.temperature
            beta, tried, chosen_recall = prior_sweep(valid_scores, prior, gold_rows, s.prior_betas, k)
        run.extra_metrics.update({"retrieval+prior.beta": beta, "retrieval+prior.validation_n": chosen_recall["n"],
                                  "retrieval+prior.chosen_at": "evaluate"}
                                 | {f"retrieval+prior.validation_recall@10_50.beta={b}": v for b, v in tried.items()})
        log.info("retrieval+prior: validation Recall (mean of @10 and @%d) per beta %s -> beta %s", k, tried, beta)
    test_scores = run.reficr.corpus.scores(run.query_vectors) / s.temperature + beta * prior
    return [[item_ids[i] for i in row] for row in top_rows(test_scores, k)]


def _context_echo(run: EvalRun) -> list[list[str]]:
    contexts = context_item_lists(run.data.dialogues, run.retr.instance_id.tolist())
    return [context_echo(c, run.popular, run.recommender.top_k) for c in contexts]


LONG_LIST = 2  # the lists of FILTERED systems hold this many times top_k items


SYSTEMS: list[System] = [
    System("popularity", "retrieval", "items by training-split recommendation count",
           lambda run: [run.popular[: LONG_LIST * run.recommender.top_k]] * len(run.retr)),
    System("context_echo", "retrieval", "items mentioned earlier in the dialogue, most recent first, then popularity", _context_echo),
    System("bm25", "retrieval", "BM25 between the context and the item descriptions", _bm25),
    System("base_embedder", "retrieval", "Conv2Item with the un-tuned base model", lambda run: run.base["retrieved"]),
    System("co_mention", "retrieval", "items named in the same training dialogues as the context's items (count-normalised)",
           lambda run: run.knowledge_lists({"co_mention": 1.0})),
    System("conversation_knn", "retrieval", "gold items of the most similar training contexts (TF-IDF of words and item ids)",
           lambda run: run.knowledge_lists({"text_neighbours": 1.0})),
    System("collaborative_mix", "retrieval", "co_mention + conversation_knn + popularity, weights chosen on validation",
           lambda run: run.knowledge_lists(run.knowledge_choice.mix_weights)),
    System("retrieval/no_instruction", "retrieval", "ablation: Conv2Item without the retrieval instruction",
           lambda run: run.reficr.retrieve(run.retr["query"].tolist(), instruction="")),
    System("retrieval", "retrieval", "ReFICR Conv2Item over the whole corpus", lambda run: run.retrieved),
    System("retrieval+prior", "retrieval", "retrieval + beta * log(1 + training count), beta chosen on validation", _retrieval_prior),
    System("retrieval+knowledge", "retrieval", "an extension: Conv2Item + the training conversations nearest by ReFICR's "
           "encoder + collaborative_mix's signals, weights chosen on validation", lambda run: run.candidates),
    System("retrieval@gen", "generation", "the same retrieval lists, on the generation sample", lambda run: run.retrieved_gen),
    System("retrieval+knowledge@gen", "generation", "retrieval+knowledge's lists on the generation sample: what the LLM ranks",
           lambda run: run.candidates_gen),
    System("random_ranking", "generation", "ablation: the top-N candidates in a seeded random order",
           lambda run: random_ranking(run.candidates_gen, run.recommender.candidates,
                                      [f"{run.settings.seed}:{i}" for i in run.gen.instance_id])),
    System("ranked", "generation", "LLM ranking of the top-N candidates, no knowledge",
           lambda run: run.ranked("ranked", [templates.NO_KNOWLEDGE] * len(run.gen))),
    System("ranked+knowledge/base", "generation", "ablation: ranking with knowledge retrieved by the un-tuned model",
           lambda run: run.ranked("ranked+knowledge/base", run.base["knowledge"])),
    System("ranked+knowledge", "generation", "the full ReFICR: ranking with Conv2Conv knowledge",
           lambda run: run.ranked("ranked+knowledge", run.reficr.knowledge(run.gen["query"].tolist(), run.gen.dialogue_id.tolist()))),
]
SYSTEM_NAMES = [s.name for s in SYSTEMS]
BASELINES = ("popularity", "context_echo", "bm25", "base_embedder", "co_mention", "conversation_knn", "collaborative_mix")
# Paired differences (bootstrap over dialogues) of ReFICR's retrieval systems against each retrieval baseline.
PAIRED = ([(a, b) for a in ("retrieval", "retrieval+prior") for b in BASELINES[:4]] + [("retrieval", "collaborative_mix")]
          + [("retrieval+knowledge", b) for b in BASELINES])
# Scored also as a product shows them: the items named in the context left out of the list (dedup gold only).
FILTERED = ("popularity", "co_mention", "conversation_knn", "collaborative_mix", "retrieval+knowledge")


# ----------------------------------------------------------------------------- running it
@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: pd.DataFrame  # one row per (system, instance): the ranked list and the gold
    ranking_outputs: pd.DataFrame
    responses: pd.DataFrame
    dm: pd.DataFrame | None
    recall_curve: pd.DataFrame  # system, k, recall (full, per item): the DVC plot
    timings: dict[str, float]
    system: ReFICR  # the fine-tuned system (its embeddings are saved for `reficr` to reuse)
    knowledge: KnowledgeChoice  # retrieval+knowledge's settings, chosen on validation (saved for `reficr` too)


def _instances(frame: pd.DataFrame) -> list[Instance]:
    return [Instance(r.instance_id, r.dialogue_id, list(r.gold_item_ids), list(r.gold_seen_in_context)) for r in frame.itertuples()]


def filtered_metrics(run: EvalRun, lists: dict[str, dict[str, list[str]]]) -> dict[str, float]:
    """``FILTERED`` systems scored as a product shows their lists, the items the context names left out:
    ``<system>.filtered.dedup.*`` (dedup gold only: a gold item named earlier cannot be recommended)."""
    named = dict(zip(run.retr.instance_id, map(set, run.named)))
    instances, out = _instances(run.retr), {}
    for name in FILTERED:
        out.update(without_named(lists[name], named, instances, run.recommender.top_k, name, run.settings.bootstrap, run.settings.seed))
    return out


def evaluate(run: EvalRun) -> EvalResult:
    """Every registered system on its sample, then the conversation metrics; metrics are rounded to 6 places."""
    lists = {s.name: dict(zip(run.sample(s.sample).instance_id, s.rank(run))) for s in SYSTEMS}
    metrics: dict[str, float] = {}
    rows = []
    with run.timer("recommendation metrics"):
        for s in SYSTEMS:
            instances = _instances(run.sample(s.sample))
            metrics.update(recommendation_metrics(lists[s.name], instances, s.name, bootstrap=run.settings.bootstrap, seed=run.settings.seed))
            rows += [{"instance_id": i.instance_id, "dialogue_id": i.dialogue_id, "system": s.name, "ranked_item_ids": lists[s.name][i.instance_id],
                      "gold_item_ids": i.gold, "gold_seen_in_context": i.seen} for i in instances]
    with run.timer("paired differences"):
        full = _instances(run.retr)
        variants = {"full": full, "dedup": [d for d in map(dedup, full) if d is not None]}
        for a, b in PAIRED:
            for variant, chosen in variants.items():
                for k in (10, 50):
                    diff = paired_difference(lists[a], lists[b], chosen, k, run.settings.bootstrap, run.settings.seed)
                    metrics.update({f"paired.{a}-{b}.{variant}.recall@{k}.per_item{key}": v for key, v in diff.items()})
    with run.timer("filtered lists (the context's items left out)"):
        metrics.update(filtered_metrics(run, lists))
    metrics.update(run.knowledge_choice.metrics())
    metrics["knowledge.train_dialogues"] = int(run.data.dialogues.loc[run.data.dialogues.split == "train", "dialogue_id"].nunique())
    if run.data.dataset == "redial":  # the content check's genres come from ReDial's metadata
        with run.timer("content check"):
            metrics.update(content_check(run.reficr, run.scorer, run.knowledge_choice, run.settings.temperature, run.data.items))
    metrics.update(run.extra_metrics)
    for name, (parsed, _) in run.ranking_outputs.items():
        metrics.update({f"{name}.ranking_output.{k}": v for k, v in parse_statistics(parsed).items()})
    response, responses = response_metrics(run, lists["ranked+knowledge"])
    metrics.update(response)
    dm = None
    if run.data.dm_test is not None:
        dm_metrics, dm = dialogue_management(run)
        metrics.update(dm_metrics)
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    gen_ids = run.gen.instance_id.tolist()
    outputs = pd.DataFrame([{"instance_id": i, "system": name, "output": o}
                            for name, (_, outs) in run.ranking_outputs.items() for i, o in zip(gen_ids, outs)])
    curve = pd.DataFrame([{"system": s, "k": k, "recall": metrics[f"{s}.full.recall@{k}.per_item"]} for s in SYSTEM_NAMES for k in (1, 5, 10, 50)])
    return EvalResult(metrics, pd.DataFrame(rows), outputs, responses, dm, curve, run.timer.times, run.reficr, run.knowledge_choice)
