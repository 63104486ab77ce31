"""Full passes of the catalogue objective over every training turn, on states of the frozen trunk computed once.

Joint fine-tuning draws ``catalogue_batch`` queries per dataset a step, so its few steps see a fraction of the
training turns. With LoRA on the top decoder layers only, the layers below are frozen: a query's states after them
never change during training. ``trunk_pass`` computes them once for every training turn's Conv2Item query
(``pipeline.model.trunk.trunk_states``; in bfloat16 where the CPU or GPU runs it fast, as inference does), then
trains the adapter's layers (and the learned item biases) on them for ``passes`` passes: each step pays the top
layers' forward and backward only. Every unique query is one example a pass, its target one of its gold items drawn
by the seeded RNG (its other gold items masked out of the negatives, as in ``catalogue_loss``); batches are the
trunk's length-sorted batches, shuffled per pass. Only the retrieval side is trained here, on layers generation
shares, and that undoes what the joint steps taught generation: the adapter as the joint steps left it is kept as
the fine-tuned adapter's generation adapter (``pipeline.model.settings.generation_adapter``), the one that generates.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeline.model.lm import RetrievableLM
from pipeline.model.trunk import Trunk, finish_states, frozen_bottom_layers, trunk_states
from pipeline.tasks import templates
from pipeline.training.catalogue import CatalogueTask, catalogue_loss
from pipeline.training.loop import TrainingDiverged, linear_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PassSettings:
    passes: int  # 0: none
    lr: float  # the adapter's peak learning rate (linear warm-up over warmup_ratio of the steps, then linear decay)
    bias_lr: float  # the learned item biases' peak learning rate
    batch_size: int  # queries a step (the trunk's batches)
    temperature: float
    query_length: int
    warmup_ratio: float
    seed: int
    cache_dtype: torch.dtype = torch.float32  # the trunk's forward: bfloat16 where it is fast (autocast)


@dataclass
class PassTask:
    """One dataset's unique training queries, their gold rows, and their trunk states."""

    task: CatalogueTask
    gold: list[list[int]]  # per unique query: the rows of every gold item it was paired with
    trunk: Trunk


def unique_queries(task: CatalogueTask) -> tuple[list[str], list[list[int]]]:
    """``task``'s queries once each (first appearance order) with every target and gold row they were paired with."""
    gold: dict[str, dict[int, None]] = {}  # ordered sets
    for query, target, rows in zip(task.queries, task.targets, task.gold_rows):
        gold.setdefault(query, {}).update(dict.fromkeys([target, *rows]))
    return list(gold), [list(rows) for rows in gold.values()]


def pass_tasks(lm: RetrievableLM, tasks: list[CatalogueTask], settings: PassSettings) -> list[PassTask]:
    """The trunk states of every task's unique queries, after the layers below the adapter (kept as float32)."""
    layers = frozen_bottom_layers(lm)
    if not layers:
        raise ValueError("a trunk pass needs frozen bottom layers: LoRA on the top decoder layers only (model.lora.layers)")
    out = []
    for task in tasks:
        queries, gold = unique_queries(task)
        started = time.perf_counter()
        autocast = (torch.autocast(lm.device.type, dtype=settings.cache_dtype)
                    if settings.cache_dtype != torch.float32 else contextlib.nullcontext())
        with autocast:
            trunk = trunk_states(lm, queries, templates.CONV2ITEM_QUERY, layers=layers, batch_size=settings.batch_size,
                                 max_length=settings.query_length, truncation_side="left", progress=True)
        trunk.batches = [(rows, states.float(), mask, pool) for rows, states, mask, pool in trunk.batches]
        log.info("%s: trunk states of %d training queries (layers 1-%d) in %.0f s", task.name, len(queries), layers,
                 time.perf_counter() - started)
        out.append(PassTask(task, gold, trunk))
    return out


def trunk_pass(lm: RetrievableLM, tasks: list[CatalogueTask], settings: PassSettings) -> list[dict]:
    """Train ``lm``'s adapter (and ``tasks``' learned biases) for ``settings.passes`` passes over every training
    query; returns the loss log, a row per step (step, loss, lr). Nothing is trained with 0 passes."""
    if settings.passes < 1 or not tasks:
        return []
    prepared = pass_tasks(lm, tasks, settings)
    batches = [(t, b) for t in prepared for b in t.trunk.batches]
    total = settings.passes * len(batches)
    adapter = [p for p in lm.model.parameters() if p.requires_grad]
    biases = [t.bias for t in tasks if t.bias is not None]
    groups = [{"params": adapter, "lr": settings.lr}] + ([{"params": biases, "lr": settings.bias_lr}] if biases else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, total, settings.warmup_ratio))
    lm.model.train()
    rows, step = [], 0
    bar = tqdm(total=total, desc="trunk pass", unit="step")
    for epoch in range(settings.passes):
        rng = random.Random(f"{settings.seed}:trunk-pass:{epoch}")
        order = batches[:]
        rng.shuffle(order)
        for prepared_task, (chunk, states, mask, pool) in order:
            golds = [prepared_task.gold[i] for i in chunk]
            targets = torch.tensor([rng.choice(g) for g in golds], device=lm.device)
            queries = finish_states(lm, prepared_task.trunk.layers, states.to(lm.device), mask.to(lm.device), pool.to(lm.device))
            task = prepared_task.task
            loss = catalogue_loss(queries, task.scored_table(), targets, settings.temperature, task.bias, golds)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"trunk pass: loss is {float(loss)} at step {step}; lower finetune.trunk_pass.lr")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            rows.append({"step": step, "loss": float(loss.detach()), "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    return rows
