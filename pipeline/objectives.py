"""What one training step computes: batches drawn from instruction data, turned into ReFICR's losses.

- ``warmup_objective`` (ReFICR_INIT, Eq. 1): per task (Conv2Item, Conv2Conv) a batch of (query, positive)
  pairs, in-batch negatives, false negatives (a document that shares a gold item with the query) masked.
- ``finetune_objective`` (Eq. 4-7): per retrieval task a batch of queries, each with
  ``[positive, negative_1..negative_k]`` (mined), in-batch negatives optional; plus a batch of generation
  instances (ranking, dialogue management, response generation, drawn task-uniformly) for the LM loss;
  ``loss = lambda_cl * mean(L_cl over tasks) + lambda_gen * L_gen``.
Batches come from the ``random.Random`` the loop passes in (seeded by step), so they are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from pipeline.losses import JointLossOutput, in_batch_info_nce, joint_loss, key_overlap_mask, mined_negatives_loss
from pipeline.model import RetrievableLM


@dataclass
class Lengths:
    query: int = 128  # tokens of a conversation query (its most recent part is kept)
    document: int = 64  # tokens of an item description / conversation document
    prompt: int = 512  # tokens of a generation prompt (its end is kept)
    target: int = 128  # tokens of a generation target


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


@dataclass
class WarmupObjective:
    tasks: list[RetrievalTask]
    batch_size: int
    temperature: float
    lengths: Lengths = field(default_factory=Lengths)

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
    lambda_cl: float = 1.0
    lambda_gen: float = 1.0
    in_batch_negatives: bool = True
    lengths: Lengths = field(default_factory=Lengths)

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
        device = lm.device
        loss_cl = torch.stack(losses).mean() if losses else torch.zeros((), device=device)
        tasks = [t for t in self.generation if len(t)]
        if tasks and self.generation_batch:
            picks = []
            for _ in range(self.generation_batch):
                task = tasks[rng.randrange(len(tasks))]
                i = rng.randrange(len(task))
                picks.append((task.prompts[i], task.targets[i]))
            batch = lm.tokenize_pairs([p for p, _ in picks], [t for _, t in picks], self.lengths.prompt, self.lengths.target)
            loss_gen = lm.lm_loss(batch)
        else:
            loss_gen = torch.zeros((), device=device)
        return joint_loss(loss_cl, loss_gen, self.lambda_cl, self.lambda_gen)
