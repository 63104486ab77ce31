"""What one training step computes: batches drawn from instruction data, turned into ReFICR's losses.

- ``WarmupObjective`` (ReFICR_INIT, Eq. 1): per task (Conv2Item, Conv2Conv) a batch of (query, positive)
  pairs, in-batch negatives, false negatives (a document that shares a gold item with the query) masked.
- ``FinetuneObjective`` (Eq. 4-7): per retrieval task a batch of queries, each with
  ``[positive, negative_1..negative_k]`` (mined), in-batch negatives optional; plus a batch of generation
  instances (ranking, dialogue management, response generation; a task drawn with probability proportional to
  its integer ``weight``, equal by default, 0 leaving it out) for the LM loss;
  ``loss = lambda_cl * mean(L_cl over tasks) + lambda_gen * L_gen``.
Batches come from the ``random.Random`` the loop passes in (seeded by step), so they are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch

from pipeline.errors import ParamError
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import Lengths
from pipeline.tasks import templates
from pipeline.training.catalogue import OFFSET, CatalogueTask, catalogue_step_loss
from pipeline.training.losses import (
    JointLossOutput,
    in_batch_info_nce,
    joint_loss,
    key_overlap_mask,
    mined_negatives_loss,
)


@dataclass
class RetrievalTask:
    """Queries with one positive each (warm-up) or one group ``[positive, negatives...]`` each (fine-tune).

    ``query_gold[i]``: the query's gold items; ``doc_keys[i][g]``: the gold items a document stands for
    (an item's own id; a conversation's gold items), used to mask false negatives.
    """

    name: str
    query_instruction: str
    doc_instruction: str
    queries: list[str]
    docs: list[list[str]]
    query_gold: list[set[str]]
    doc_keys: list[list[set[str]]]
    doc_truncation: str = "right"  # items keep their start; conversations ("left") their end

    def __len__(self) -> int:
        return len(self.queries)


@dataclass
class GenerationTask:
    name: str
    prompts: list[str]
    targets: list[str]
    weight: int = 1  # how often it is drawn against the other generation tasks (0: never)

    def __len__(self) -> int:
        return len(self.prompts)


def _sample(rng: random.Random, n: int, size: int) -> list[int]:
    return rng.sample(range(n), min(size, n))


def _embed_queries(lm: RetrievableLM, task: RetrievalTask, idx: list[int], lengths: Lengths) -> torch.Tensor:
    return lm.encode(lm.tokenize_for_embedding([task.queries[i] for i in idx], task.query_instruction,
                                               lengths.query, truncation_side="left"))


def _embed_docs(lm: RetrievableLM, task: RetrievalTask, texts: list[str], lengths: Lengths) -> torch.Tensor:
    return lm.encode(lm.tokenize_for_embedding(texts, task.doc_instruction, lengths.document,
                                               truncation_side=task.doc_truncation))


def catalogue_parameters(tasks: list[CatalogueTask]) -> dict[str, torch.nn.Parameter]:
    """Parameters a catalogue objective owns, trained beside the adapter: learned item biases (by dataset) and
    item offsets (``OFFSET`` + dataset)."""
    return ({task.name: task.bias for task in tasks if task.bias is not None}
            | {OFFSET + task.name: task.offset for task in tasks if task.offset is not None})


def catalogue_losses(lm: RetrievableLM, tasks: list[CatalogueTask], batch: int, rng: random.Random, temperature: float,
                     lengths: Lengths) -> list[torch.Tensor]:
    return [catalogue_step_loss(lm, task, _sample(rng, len(task), batch), temperature, lengths.query) for task in tasks if len(task)]


@dataclass
class WarmupObjective:
    """Eq. 1 over ``tasks``; with ``catalogue`` tasks (an extension, ``warmup.retrieval_objective: catalogue``)
    Conv2Item is scored against whole catalogues instead of in-batch (see ``pipeline.training.catalogue``)."""

    tasks: list[RetrievalTask]
    batch_size: int
    temperature: float
    lengths: Lengths
    catalogue: list[CatalogueTask] = field(default_factory=list)
    catalogue_batch: int = 0  # queries per catalogue task per step

    def extra_parameters(self) -> dict[str, torch.nn.Parameter]:
        return catalogue_parameters(self.catalogue)

    def __call__(self, lm: RetrievableLM, rng: random.Random) -> JointLossOutput:
        losses = []
        for task in self.tasks:
            if len(task) < 2:
                continue
            idx = _sample(rng, len(task), self.batch_size)
            q = _embed_queries(lm, task, idx, self.lengths)
            d = _embed_docs(lm, task, [task.docs[i][0] for i in idx], self.lengths)
            mask = key_overlap_mask([task.query_gold[i] for i in idx], [task.doc_keys[i][0] for i in idx]).to(q.device)
            losses.append(in_batch_info_nce(q, d, self.temperature, mask))
        losses += catalogue_losses(lm, self.catalogue, self.catalogue_batch, rng, self.temperature, self.lengths)
        if not losses:
            raise ValueError("warm-up needs at least one retrieval task with two or more pairs")
        loss_cl = torch.stack(losses).mean()
        return joint_loss(loss_cl, torch.zeros((), device=loss_cl.device), 1.0, 0.0)


@dataclass
class FinetuneObjective:
    retrieval: list[RetrievalTask]
    generation: list[GenerationTask]
    retrieval_batch: int
    generation_batch: int
    temperature: float
    lengths: Lengths
    lambda_cl: float = 1.0
    lambda_gen: float = 1.0
    in_batch_negatives: bool = True  # the paper's code scores the other queries' documents too
    catalogue: list[CatalogueTask] = field(default_factory=list)  # Conv2Item against whole catalogues (an extension)
    catalogue_batch: int = 0  # queries per catalogue task per step

    def extra_parameters(self) -> dict[str, torch.nn.Parameter]:
        return catalogue_parameters(self.catalogue)

    def __call__(self, lm: RetrievableLM, rng: random.Random) -> JointLossOutput:
        losses = []
        for task in self.retrieval:
            if not len(task):
                continue
            idx = _sample(rng, len(task), self.retrieval_batch)
            group = len(task.docs[idx[0]])
            if any(len(task.docs[i]) != group for i in idx):
                raise ValueError(f"{task.name}: every query needs the same number of documents (1 + negatives)")
            q = _embed_queries(lm, task, idx, self.lengths)
            d = _embed_docs(lm, task, [text for i in idx for text in task.docs[i]], self.lengths)
            keys = [key for i in idx for key in task.doc_keys[i]]
            mask = key_overlap_mask([task.query_gold[i] for i in idx], keys).to(q.device)
            losses.append(mined_negatives_loss(q, d, self.temperature, group, self.in_batch_negatives, mask))
        losses += catalogue_losses(lm, self.catalogue, self.catalogue_batch, rng, self.temperature, self.lengths)
        device = lm.device
        loss_cl = torch.stack(losses).mean() if losses else torch.zeros((), device=device)
        picks = self.generation_picks(rng)
        if picks:
            batch = lm.tokenize_pairs([p for p, _ in picks], [t for _, t in picks], self.lengths.prompt, self.lengths.target)
            loss_gen = lm.lm_loss(batch)
        else:
            loss_gen = torch.zeros((), device=device)
        return joint_loss(loss_cl, loss_gen, self.lambda_cl, self.lambda_gen)

    def generation_picks(self, rng: random.Random) -> list[tuple[str, str]]:
        """``generation_batch`` (prompt, target) pairs: each a task drawn with probability proportional to its weight
        (a task of weight w stands w times in the list drawn from, so equal weights draw as a uniform choice), then
        one of its instances."""
        slots = [t for t in self.generation if len(t) for _ in range(t.weight)]
        if not slots:  # no generation task, or every weight 0: no LM loss
            return []
        picks = []
        for _ in range(self.generation_batch):
            task = slots[rng.randrange(len(slots))]
            i = rng.randrange(len(task))
            picks.append((task.prompts[i], task.targets[i]))
        return picks


# ----------------------------------------------------------------------------- tasks from instruction tables
def warmup_tasks(conv2item: pd.DataFrame, conv2conv: pd.DataFrame) -> list[RetrievalTask]:
    """ReFICR_INIT's pairs: (context, gold item description) and (context, another context with a shared gold)."""
    return [
        RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, conv2item["query"].tolist(),
                      [[p] for p in conv2item["positive"]], [set(g) for g in conv2item["gold_item_ids"]],
                      [[{i}] for i in conv2item["item_id"]]),
        RetrievalTask("conv2conv", templates.CONV2CONV_QUERY, templates.CONV2CONV_SAMPLE, conv2conv["query"].tolist(),
                      [[p] for p in conv2conv["positive"]], [set(g) for g in conv2conv["gold_item_ids"]],
                      [[set(g)] for g in conv2conv["positive_gold_item_ids"]], doc_truncation="left"),
    ]


GENERATION_TASKS = ("ranking", "dm", "response")


def generation_weights(weights: Mapping[str, int] | None) -> dict[str, int]:
    """``finetune.generation_weights`` checked: a non-negative integer for each of GENERATION_TASKS (None: 1 each)."""
    if weights is None:
        return dict.fromkeys(GENERATION_TASKS, 1)
    if set(weights) != set(GENERATION_TASKS) or not all(type(w) is int and w >= 0 for w in weights.values()):
        raise ParamError(f"params.yaml: finetune.generation_weights {dict(weights)!r}; expected a non-negative integer "
                         f"for each of {', '.join(GENERATION_TASKS)} (e.g. {{ranking: 1, dm: 1, response: 1}})")
    return dict(weights)


def finetune_tasks(conv2item: pd.DataFrame, conv2conv: pd.DataFrame, ranking: pd.DataFrame, dm: pd.DataFrame,
                   response: pd.DataFrame, weights: Mapping[str, int] | None = None,
                   ) -> tuple[list[RetrievalTask], list[GenerationTask]]:
    """Joint fine-tuning's tasks: mined groups ``[positive, negatives...]`` (data/negatives) and the three
    generation tasks (ranking, dialogue management, response generation), drawn by ``weights``
    (``generation_weights``)."""
    retrieval = [
        RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, conv2item["query"].tolist(),
                      [[p, *list(n)] for p, n in zip(conv2item["positive"], conv2item["negatives"])],
                      [set(g) for g in conv2item["gold_item_ids"]],
                      [[{i}, *({x} for x in n)] for i, n in zip(conv2item["item_id"], conv2item["negative_ids"])]),
        RetrievalTask("conv2conv", templates.CONV2CONV_QUERY, templates.CONV2CONV_SAMPLE, conv2conv["query"].tolist(),
                      [[p, *list(n)] for p, n in zip(conv2conv["positive"], conv2conv["negatives"])],
                      [set(g) for g in conv2conv["gold_item_ids"]],
                      [[set(pg), *(set(x) for x in ng)] for pg, ng in zip(conv2conv["positive_gold_item_ids"], conv2conv["negative_gold_item_ids"])],
                      doc_truncation="left"),
    ]
    weight = generation_weights(weights)
    generation = [GenerationTask(name, f["prompt"].tolist(), f["target"].tolist(), weight[name])
                  for name, f in zip(GENERATION_TASKS, (ranking, dm, response))]
    return retrieval, generation
