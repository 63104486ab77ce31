"""Item offsets fitted **after** fine-tuning (stage ``fit_items``; an extension of the paper's model, like the item
bias): the fine-tuned query encoder embeds training contexts once and stays fixed; one vector per item, added to its
row of the table fine-tuning scored against and re-normalised (``pipeline.training.catalogue.moved_rows``), is learned by the
same softmax over the whole catalogue (``catalogue_loss``). Fitting them jointly with the adapter
(``finetune.item_offset``) moved them under a query encoder that was still moving and did not pass validation on
ReDial; fitted against the trained encoder they reached ReDial's validation gain only with ~5,000 contexts
(docs/experiments.md). Whether a dataset keeps them is decided on its validation split
(``OffsetChoice.decide``), with retrieval+prior's beta chosen again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from tqdm.auto import tqdm

from pipeline.errors import DataError
from pipeline.training.catalogue import PriorChoice, catalogue_loss, moved_rows, prior_sweep, recall_per_item

OFFSETS_FILE = "offsets.safetensors"  # in models/item_offsets/<dataset>: the fitted offsets, under the dataset's name
OFFSETS_CHOICE = "choice.json"  # ... and whether validation kept them (``OffsetChoice``)


def fit_offsets(queries: torch.Tensor, gold_rows: list[list[int]], table: torch.Tensor, bias: torch.Tensor | None,
                temperature: float, lr: float, epochs: int, batch_size: int, seed: int,
                after_epoch: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Item offsets (``moved_rows``) fitted with the ``queries`` fixed (embedded once by a trained query encoder):
    one example per (query, gold row), ``catalogue_loss`` over the whole ``table`` (the query's other gold rows
    masked; ``bias`` at logit scale, fixed), Adam at a constant ``lr``, ``epochs`` passes over the examples in a
    seeded order, ``batch_size`` at a time. The offsets start at 0; ``after_epoch(epoch, offsets)`` sees them
    after each pass. Returns the offsets [items, dim] (no gradient)."""
    examples = [(q, r) for q, rows in enumerate(gold_rows) for r in rows]
    if not examples:
        raise DataError("item offsets: no (query, gold item) pair to fit them on; expected training contexts with gold items")
    if queries.shape[1] != table.shape[1]:
        raise DataError(f"item offsets: queries of dimension {queries.shape[1]} for a table of dimension {table.shape[1]}")
    order_rng = torch.Generator().manual_seed(seed)
    offset = torch.zeros_like(table, requires_grad=True)
    optimizer = torch.optim.Adam([offset], lr=lr)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(examples), generator=order_rng).tolist()
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=f"item offsets, epoch {epoch}/{epochs}", unit="batch", disable=len(starts) < 20):
            batch = [examples[i] for i in order[start:start + batch_size]]
            loss = catalogue_loss(queries[[q for q, _ in batch]], moved_rows(table, offset), torch.tensor([r for _, r in batch]),
                                  temperature, bias, [gold_rows[q] for q, _ in batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if after_epoch is not None:
            with torch.no_grad():
                after_epoch(epoch, offset.detach())
    return offset.detach()


def validation_side(scores: np.ndarray, prior: np.ndarray, full: list[list[int]], dedup: list[list[int]],
                    betas: list[float]) -> dict:
    """One item side on the validation split: retrieval's Recall@10/50 per item, full and dedup (``scores``:
    cosine / temperature + bias), and retrieval+prior at the beta ``prior_sweep`` chooses (full cut, as
    fine-tuning's validation chooses it): its score (mean of @10 and @50) and recalls."""
    beta, tried, chosen = prior_sweep(scores, prior, full, betas)
    with_prior = scores + beta * prior[None, :]
    return {"retrieval": {"full": recall_per_item(scores, full), "dedup": recall_per_item(scores, dedup)},
            "prior_beta": beta, "prior_score": tried[beta], "prior_score_beta0": tried.get(0, float("nan")),
            "retrieval+prior": {"full": chosen, "dedup": recall_per_item(with_prior, dedup)}}


@dataclass
class OffsetChoice:
    """Stage ``fit_items``' decision for one dataset: item offsets fitted after fine-tuning are kept (``adopted``)
    when, on the validation split, retrieval+prior's score (mean of Recall@10 and @50 per item, full, beta chosen
    again for each side) is higher with them than without, and retrieval alone's dedup Recall@50 does not drop."""

    dataset: str
    fitted: bool
    adopted: bool
    reason: str
    without: dict = field(default_factory=dict)  # ``validation_side`` of the fine-tuned item side
    with_offsets: dict = field(default_factory=dict)  # ... with the fitted offsets
    settings: dict = field(default_factory=dict)  # what was fitted: contexts, (context, gold item) pairs, lr, epochs, batch

    @classmethod
    def decide(cls, dataset: str, without: dict, with_offsets: dict, settings: dict, decimals: int = 9) -> "OffsetChoice":
        better = round(with_offsets["prior_score"], decimals) > round(without["prior_score"], decimals)
        kept = round(with_offsets["retrieval"]["dedup"]["recall@50"], decimals) >= round(without["retrieval"]["dedup"]["recall@50"], decimals)
        reason = (f"retrieval+prior validation score {with_offsets['prior_score']:.4f} with offsets vs {without['prior_score']:.4f} "
                  f"without; retrieval dedup R@50 {with_offsets['retrieval']['dedup']['recall@50']:.4f} vs "
                  f"{without['retrieval']['dedup']['recall@50']:.4f}")
        return cls(dataset, True, better and kept, reason, without, with_offsets, settings)

    def prior(self, step: int) -> PriorChoice | None:
        """retrieval+prior's beta with the offsets, for evaluation (None when they are not adopted); ``step``: the
        fine-tuned model's last step (the offsets were fitted after it)."""
        if not self.adopted:
            return None
        side = self.with_offsets
        return PriorChoice(side["prior_beta"], int(side["retrieval+prior"]["full"]["n"]), step, side["prior_score"],
                           side["prior_score_beta0"])

    def to_json(self) -> dict:
        return asdict(self)


def adopted_offsets(folder: str | Path, dataset: str, rows: int) -> tuple[np.ndarray | None, OffsetChoice | None]:
    """What stage ``fit_items`` left in ``folder`` for ``dataset``: the offsets (None unless validation adopted them)
    and its choice (None for a run without the stage's folder)."""
    folder = Path(folder)
    if not (folder / OFFSETS_CHOICE).exists():
        return None, None
    choice = OffsetChoice(**json.loads((folder / OFFSETS_CHOICE).read_text()))
    if not choice.adopted:
        return None, choice
    path = folder / OFFSETS_FILE
    offsets = load_file(str(path)).get(dataset) if path.exists() else None
    if offsets is None or offsets.shape[0] != rows:
        raise DataError(f"{path}: expected the adopted item offsets of {dataset!r} ({rows} rows), found "
                        f"{None if offsets is None else offsets.shape}; re-run `dvc repro fit_items@{dataset}`")
    return offsets, choice
