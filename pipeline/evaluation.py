"""The evaluation protocol of EVALUATION.md as a library: the registry of systems, the samples they are
scored on, and the assembly of every metric. ``stages/evaluate.py`` reads params and writes what
``evaluate`` returns; ``stages/summarize.py`` and the tests read ``SYSTEMS``.

Samples of the test split, seeded by instance id (so ``n`` is known): the *retrieval* sample (``max_retrieval``,
0 = all) and, inside it, the *generation* sample (``max_generation``) for the systems that generate.
Adding a system = one function and one ``System`` line in ``SYSTEMS``; the metrics, predictions, plots and the
summary follow from the registry.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline import schemas, templates
from pipeline.baselines import BM25Retriever, context_echo, log_counts, popularity_ranking, training_gold
from pipeline.data.items import item_titles
from pipeline.dm_policy import HEAD, SHARES, free_generation
from pipeline.instructions import ACTIONS, cap
from pipeline.metrics import (Instance, bootstrap_ci, dedup, dialogue_management_metrics, distinct_n, majority_action_set,
                              paired_difference, perplexity, recommendation_metrics)
from pipeline.model import RetrievableLM
from pipeline.catalogue import PriorChoice, prior_sweep
from pipeline.ranking import ParsedRanking, parse_statistics, random_ranking
from pipeline.encoder import Encoder, SharedTrunk
from pipeline.grounding import ITEM_TAG, Catalogue, Reply, check_reply
from pipeline.recommender import ConversationStore, ItemCorpus, ReFICR, context_item_lists
from pipeline.settings import RecommenderSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
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
                   pd.read_parquet(instructions / "dm_test.parquet") if with_dm else None)


class Timer:
    """Wall time per named span (kept out of the metrics: it varies run to run), logged as it goes."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        log.info("%s ...", name)
        start = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.1f s", name, self.times[name])


def build_system(lm: RetrievableLM, data: EvalData, settings: RecommenderSettings, item_vectors: np.ndarray | None = None,
                 item_bias: np.ndarray | None = None, store: SharedTrunk | None = None) -> ReFICR:
    """ReFICR over ``data``'s corpus and training conversations (``store``: shared with another model, else
    embedded) by ``lm``; items given or embedded; ``item_bias``: a learned per-item score (``pipeline.catalogue``)."""
    encoder = Encoder(lm, settings.query_length, settings.document_length, settings.embed_batch)
    if item_vectors is None:
        item_vectors = encoder.items(data.items["description"].tolist())
    store_vectors = (store.embed(encoder) if store is not None
                     else encoder.conversations(data.turns_train["query"].tolist(), templates.CONV2CONV_SAMPLE))
    corpus = ItemCorpus(data.items["item_id"].tolist(), item_vectors, item_bias)
    return ReFICR(lm, corpus, ConversationStore.from_turns(data.turns_train, store_vectors), item_titles(data.items), settings)


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
        self.retr = cap(data.turns_test, settings.max_retrieval or None, settings.seed)
        self.retrieval_queries = SharedTrunk(self.retr["query"].tolist(), templates.CONV2ITEM_QUERY, shared_layers)
        self.gen = cap(self.retr, settings.max_generation or None, settings.seed)
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
        position = dict(zip(self.retr.instance_id, self.retrieved))
        return [position[i] for i in self.gen.instance_id]

    def ranked(self, name: str, knowledge: list[str]) -> list[list[str]]:
        with self.timer(f"ranking: {name}"):
            ranked, parsed, outputs = self.reficr.rank(self.gen["query"].tolist(), self.retrieved_gen, knowledge)
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


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


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
        valid = cap(run.data.turns_valid, s.max_validation or None, s.seed)
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


SYSTEMS: list[System] = [
    System("popularity", "retrieval", "items by training-split recommendation count",
           lambda run: [run.popular[: run.recommender.top_k]] * len(run.retr)),
    System("context_echo", "retrieval", "items mentioned earlier in the dialogue, most recent first, then popularity", _context_echo),
    System("bm25", "retrieval", "BM25 between the context and the item descriptions", _bm25),
    System("base_embedder", "retrieval", "Conv2Item with the un-tuned base model", lambda run: run.base["retrieved"]),
    System("retrieval/no_instruction", "retrieval", "ablation: Conv2Item without the retrieval instruction",
           lambda run: run.reficr.retrieve(run.retr["query"].tolist(), instruction="")),
    System("retrieval", "retrieval", "ReFICR Conv2Item over the whole corpus", lambda run: run.retrieved),
    System("retrieval+prior", "retrieval", "retrieval + beta * log(1 + training count), beta chosen on validation", _retrieval_prior),
    System("retrieval@gen", "generation", "the same retrieval lists, on the generation sample", lambda run: run.retrieved_gen),
    System("random_ranking", "generation", "ablation: the top-N candidates in a seeded random order",
           lambda run: random_ranking(run.retrieved_gen, run.recommender.candidates,
                                      [f"{run.settings.seed}:{i}" for i in run.gen.instance_id])),
    System("ranked", "generation", "LLM ranking of the top-N candidates, no knowledge",
           lambda run: run.ranked("ranked", [templates.NO_KNOWLEDGE] * len(run.gen))),
    System("ranked+knowledge/base", "generation", "ablation: ranking with knowledge retrieved by the un-tuned model",
           lambda run: run.ranked("ranked+knowledge/base", run.base["knowledge"])),
    System("ranked+knowledge", "generation", "the full ReFICR: ranking with Conv2Conv knowledge",
           lambda run: run.ranked("ranked+knowledge", run.reficr.knowledge(run.gen["query"].tolist(), run.gen.dialogue_id.tolist()))),
]
SYSTEM_NAMES = [s.name for s in SYSTEMS]
# Paired differences (bootstrap over dialogues) of ReFICR's retrieval against each retrieval baseline.
PAIRED = [(a, b) for a in ("retrieval", "retrieval+prior") for b in ("popularity", "context_echo", "bm25", "base_embedder")]


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


def _instances(frame: pd.DataFrame) -> list[Instance]:
    return [Instance(r.instance_id, r.dialogue_id, list(r.gold_item_ids), list(r.gold_seen_in_context)) for r in frame.itertuples()]


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
    sample = cap(resp.reset_index(), s.max_responses or None, s.seed)
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
    the prompt's instructions: ``response.raw.*`` for the model's generation, ``response.reply.*`` for what a person
    reads (``pipeline.grounding``), how many replies fell back to the fixed sentence and how many had it added."""
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
    dm = cap(run.data.dm_test, s.max_dm or None, s.seed)
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
    free = cap(dm, s.max_dm_generation or None, s.seed)
    with run.timer("dialogue management, free generation"):
        unconstrained, outputs = free_generation(
            lambda prompts: run.reficr.generate(prompts, run.reficr.settings.max_new_tokens_dm), free)
    metrics.update({f"dm.free_generation.{k}": v for k, v in unconstrained.items()})
    free_output = dict(zip(free.instance_id, outputs))
    return metrics, pd.DataFrame({"instance_id": dm.instance_id, "dialogue_id": dm.dialogue_id,
                                  "predicted_actions": predicted, "gold_actions": gold,
                                  "free_generation": [free_output.get(i) for i in dm.instance_id]})


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
    return EvalResult(metrics, pd.DataFrame(rows), outputs, responses, dm, curve, run.timer.times, run.reficr)
