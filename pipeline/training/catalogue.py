"""Conv2Item against the whole catalogue: an extension beside the paper's objective, for budgets where the
paper's objective cannot learn (the small CPU profile).

The paper's Conv2Item loss (Eq. 4-5) scores each query against its positive and k mined negatives, all
re-encoded every step. Its negatives follow the positives' popularity, so the model learns roughly
log p(item | context) - log Q(item) and never sees the thousands of rarely recommended items that crowd a
full-corpus top-50. Here instead each query is scored against **every item** of a fixed table of item
embeddings (the un-tuned base model's, from ``embed_base_items``), with gradients on the query side only:

    logits[q, i] = cos(query_q, item_i) / temperature + bias_i        softmax over the whole catalogue

``bias_i`` (optional, ``finetune.item_bias``) is one learned number per item with its own learning rate: the
item side has to move for the softmax to separate items the base model embeds alike, and a bias is the
cheapest way (an extension of the paper's model; report it as such). It starts at 0 or (``item_bias_init:
log_count``) at log(1 + the item's training-split recommendation count): the log of the catalogue's marginal,
which is what a context-free softmax converges to, so training spends its few steps on what the context adds
to popularity instead of first re-learning popularity (training-split counts only). The query's other gold
items are masked out of its negatives.

The base model's pooled states sit in a narrow cone (ReDial's items: mean pairwise cosine 0.885, standard
deviation 0.048, about one logit at temperature 0.05 against the log-count bias' spread of ~6), so a query
barely reorders the items. ``item_table: centered`` (``ITEM_TABLES``) subtracts the table's mean vector and
re-normalises (Mu and Viswanath, ICLR 2018, "all-but-the-top"): the cosines then spread (standard deviation
0.17), and the query can separate the items the base model embeds alike, at the price of amplifying the
un-tuned query's noise as much (validation: README). A fixed transform of the table, recorded in the
adapter's manifest and applied again wherever the table is scored.

``offset_i`` (optional, ``finetune.item_offset``; an extension too) is one learned vector per item added to its
row of the fixed table, the row then re-normalised: the item side itself moves, as in a two-tower recommender's item
embeddings, so items recommended in similar contexts are drawn toward those contexts' queries, which a bias (one
number) cannot do. It starts at 0 (the table as it was) and has its own learning rate (``item_offset_lr``); what
it did on the validation split (INSPIRED up, ReDial not, trained jointly for 72 steps): README, "Moving the item side".

Retrieval then ranks by ``cos(query, item) + temperature * bias`` against the same table (with its offsets), so
training and inference score items the same way (``pipeline.retrieval.corpus.ItemCorpus`` takes the bias).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file

from pipeline.errors import DataError
from pipeline.model.lm import ADAPTER_MANIFEST, RetrievableLM
from pipeline.model.trunk import Trunk, TrunkMismatchError, embed_trunk, frozen_bottom_layers, trunk_states
from pipeline.retrieval.corpus import rank_scores
from pipeline.tasks import templates

BIAS_FILE = "item_bias.safetensors"  # in the fine-tuned model folder: the item side's learned tensors, by name:
OFFSET = "offset."  # a dataset's bias under its name, its item offsets [items, dim] under OFFSET + its name
ITEM_TABLES = ("base", "centered")  # the fixed table as embedded, or centred on its mean and re-normalised


def moved_rows(table: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Each row of ``table`` plus its learned ``offset``, re-normalised: the table learned item offsets score."""
    return torch.nn.functional.normalize(table + offset, dim=1)


def offset_table(table: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """``moved_rows`` of saved arrays (``table`` itself without offsets)."""
    if offset is None:
        return table
    return moved_rows(torch.as_tensor(np.asarray(table, dtype=np.float32)),
                      torch.as_tensor(np.asarray(offset, dtype=np.float32))).numpy()


def item_table(base_items: np.ndarray, kind: str) -> np.ndarray:
    """The table the catalogue objective scores against: ``base_items`` (L2-normalised rows) as they are, or
    (``centered``) minus their mean vector, each row re-normalised."""
    if kind not in ITEM_TABLES:
        raise DataError(f"item table {kind!r}; expected one of {', '.join(ITEM_TABLES)}")
    table = np.asarray(base_items, dtype=np.float32)
    if kind == "base":
        return table
    centred = table - table.mean(axis=0, keepdims=True)
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class CatalogueTask:
    """One dataset's Conv2Item pairs, scored against its whole catalogue."""

    name: str  # the dataset: its catalogue is ``table``
    queries: list[str]
    targets: list[int]  # row in ``table`` of each pair's positive item
    gold_rows: list[list[int]]  # rows of all the query's gold items (masked out of its negatives)
    table: torch.Tensor  # [items, dim], L2-normalised, fixed (no gradient)
    bias: torch.nn.Parameter | None  # [items], learned, or None
    offset: torch.nn.Parameter | None = None  # [items, dim], learned, or None

    def __len__(self) -> int:
        return len(self.queries)

    def scored_table(self) -> torch.Tensor:
        """The table queries are scored against: ``table``, or with the learned offsets, its rows moved and
        re-normalised (with gradients to the offsets)."""
        return self.table if self.offset is None else moved_rows(self.table, self.offset)


def catalogue_loss(queries: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, temperature: float,
                   bias: torch.Tensor | None = None, gold_rows: list[list[int]] | None = None) -> torch.Tensor:
    """Mean cross-entropy of each query's target row over the whole table; ``gold_rows[q]`` other than the
    target are masked (a query with two gold items is not pushed away from the second)."""
    logits = queries @ table.T / temperature
    if bias is not None:
        logits = logits + bias
    if gold_rows:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for q, rows in enumerate(gold_rows):
            others = [r for r in rows if r != int(targets[q])]
            if others:
                mask[q, others] = True
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


def catalogue_tasks(conv2item: pd.DataFrame, items: dict[str, pd.DataFrame], tables: dict[str, np.ndarray],
                    item_bias: bool, device: torch.device | str = "cpu",
                    bias_init: dict[str, np.ndarray] | None = None, item_offset: bool = False) -> list[CatalogueTask]:
    """One task per dataset of ``conv2item`` (training pairs), against ``tables[dataset]`` (rows = ``items[dataset]``);
    a learned bias starts at ``bias_init[dataset]`` (one value per row) when given, else at 0; learned item
    offsets (``item_offset``) start at 0."""
    tasks = []
    for dataset, table in tables.items():
        pairs = conv2item[conv2item["dataset"] == dataset]
        row = {item: r for r, item in enumerate(items[dataset]["item_id"])}
        if len(table) != len(row):
            raise DataError(f"{dataset}: item table has {len(table)} rows for {len(row)} items; re-run embed_base_items")
        bias = None
        if item_bias:
            start = (bias_init or {}).get(dataset)
            if start is not None and len(start) != len(row):
                raise DataError(f"{dataset}: item bias start has {len(start)} values for {len(row)} items")
            start = torch.zeros(len(row)) if start is None else torch.as_tensor(np.asarray(start, dtype=np.float32))
            bias = torch.nn.Parameter(start.to(device))
        fixed = torch.as_tensor(np.asarray(table, dtype=np.float32), device=device)
        offset = torch.nn.Parameter(torch.zeros_like(fixed)) if item_offset else None
        tasks.append(CatalogueTask(dataset, pairs["query"].tolist(), [row[i] for i in pairs["item_id"]],
                                   [[row[g] for g in gold if g in row] for gold in pairs["gold_item_ids"]],
                                   fixed, bias, offset))
    return tasks


def catalogue_step_loss(lm: RetrievableLM, task: CatalogueTask, idx: list[int], temperature: float, query_length: int) -> torch.Tensor:
    """The loss of one batch ``idx`` of ``task``'s pairs (queries encoded with gradients)."""
    q = lm.encode(lm.tokenize_for_embedding([task.queries[i] for i in idx], templates.CONV2ITEM_QUERY, query_length,
                                            truncation_side="left"))
    targets = torch.tensor([task.targets[i] for i in idx], device=q.device)
    return catalogue_loss(q, task.scored_table(), targets, temperature, task.bias, [task.gold_rows[i] for i in idx])


def trained_item_side(model_dir: str | Path, dataset: str, base_items: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """How an adapter trained in ``model_dir`` scores ``dataset``'s items. Catalogue objective: the item table
    it was trained against (``base_items``, transformed as its manifest's ``item_table`` says, with its learned
    item offsets where it has them) and ``temperature`` x its learned item bias (None without one). Otherwise
    (None, None): the adapted model embeds the items itself."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / ADAPTER_MANIFEST).read_text())
    if manifest.get("retrieval_objective") != "catalogue":
        return None, None
    kind = manifest.get("item_table", "base")  # adapters from before the option: base
    if kind not in ITEM_TABLES:
        raise DataError(f"{model_dir / ADAPTER_MANIFEST}: item_table {kind!r}; expected one of {', '.join(ITEM_TABLES)}")
    table = item_table(base_items, kind)
    bias_file = model_dir / BIAS_FILE
    if not bias_file.exists():
        return table, None
    learned = load_file(str(bias_file))
    offset = learned.get(OFFSET + dataset)
    if offset is not None and offset.shape != table.shape:
        raise DataError(f"{bias_file}: expected item offsets of shape {table.shape} for {dataset!r}, found {offset.shape}")
    table = offset_table(table, offset)
    bias = learned.get(dataset)
    if bias is None and offset is not None:  # offsets learned without a bias
        return table, None
    if bias is None or len(bias) != len(base_items):
        raise DataError(f"{bias_file}: expected a bias of {len(base_items)} items for {dataset!r}, "
                         f"found {({k: v.shape for k, v in learned.items()})}")
    return table, (bias * manifest["temperature"]).astype(np.float32)


def recall_per_item(scores: np.ndarray, gold_rows: list[list[int]], ks=(10, 50)) -> dict[str, float]:
    """Recall@k per (query, gold item) of a score matrix [queries, items]."""
    hits = {k: [] for k in ks}
    for q, rows in enumerate(gold_rows):
        order = np.argsort(-scores[q], kind="stable")
        rank = {int(r): pos + 1 for pos, r in enumerate(order[: max(ks)])}
        for r in rows:
            for k in ks:
                hits[k].append(rank.get(r, max(ks) + 1) <= k)
    return {f"recall@{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()} | {"n": len(hits[ks[0]])}


def choose_beta(tried: dict[float, float], decimals: int = 9) -> float:
    """The beta of the best validation score; scores equal to ``decimals`` places are a tie, won by the smaller
    beta (the same hits summed in another order differ in the last bits: float noise must not pick the prior)."""
    return max(tried, key=lambda b: (round(tried[b], decimals), -b))


def prior_sweep(scores: np.ndarray, prior: np.ndarray, gold_rows: list[list[int]], betas: list[float],
                k: int = 50) -> tuple[float, dict[float, float], dict[str, float]]:
    """retrieval+prior on held-out queries: ``scores`` (cosine / temperature + bias) + beta * ``prior`` for each
    beta, scored by the mean of Recall@10 and @k per item; the chosen beta (``choose_beta``), every beta's score,
    and the chosen one's recall."""
    tried, recalls = {}, {}
    for beta in betas:
        recalls[beta] = recall_per_item(scores + beta * prior[None, :], gold_rows, ks=(10, k))
        tried[beta] = (recalls[beta]["recall@10"] + recalls[beta][f"recall@{k}"]) / 2 if recalls[beta]["n"] else 0.0
    beta = choose_beta(tried)
    return beta, tried, recalls[beta]


@dataclass
class CatalogueValidation:
    """Recall@10/50 per item of held-out contexts (the validation split) against each dataset's whole catalogue,
    scored as retrieval will score them. With a fixed table (the catalogue objective) only the queries are
    embedded, so it is cheap enough to run during training; without one (the paper's objective, where the item
    side is trained too) the catalogue is re-embedded by the current model each time. With ``priors`` and
    ``betas`` each row also has retrieval+prior's validation choice (``prior_sweep``): the last pass's
    ``prior_beta`` is the one evaluation uses, so the validation split is embedded once, here."""

    queries: dict[str, list[str]]  # dataset -> held-out rendered contexts
    gold_rows: dict[str, list[list[int]]]  # dataset -> their gold items' rows
    descriptions: dict[str, list[str]]  # dataset -> item descriptions, in table order
    tables: dict[str, torch.Tensor]  # dataset -> fixed table (catalogue objective); absent: re-embed
    biases: dict[str, torch.nn.Parameter]  # dataset -> learned item bias
    temperature: float
    query_length: int
    document_length: int
    batch_size: int
    priors: dict[str, np.ndarray] = field(default_factory=dict)  # dataset -> log(1 + training count) per item
    betas: list[float] = field(default_factory=list)  # retrieval+prior's betas tried
    _trunks: dict[str, Trunk] = field(default_factory=dict, repr=False)  # dataset -> its queries' frozen-layer states
    offsets: dict[str, torch.nn.Parameter] = field(default_factory=dict)  # dataset -> learned item offsets

    @classmethod
    def build(cls, turns: pd.DataFrame, items: dict[str, pd.DataFrame], tasks: list[CatalogueTask], limit: int, seed: int,
              temperature: float, query_length: int, document_length: int, batch_size: int,
              priors: dict[str, np.ndarray] | None = None, betas: list[float] | None = None) -> "CatalogueValidation":
        """``turns``: validation turns of every dataset in ``items``; at most ``limit`` per dataset (seeded by id)."""
        from pipeline.data.splits import seeded_sample

        queries, gold_rows = {}, {}
        for dataset, frame in items.items():
            chosen = seeded_sample(turns[turns["dataset"] == dataset], limit or None, seed)
            row = {item: r for r, item in enumerate(frame["item_id"])}
            queries[dataset] = chosen["query"].tolist()
            gold_rows[dataset] = [[row[g] for g in gold if g in row] for gold in chosen["gold_item_ids"]]
        return cls(queries, gold_rows, {d: f["description"].tolist() for d, f in items.items()},
                   {t.name: t.table for t in tasks}, {t.name: t.bias for t in tasks if t.bias is not None},
                   temperature, query_length, document_length, batch_size, dict(priors or {}), list(betas or []),
                   offsets={t.name: t.offset for t in tasks if t.offset is not None})

    def query_vectors(self, lm: RetrievableLM, dataset: str) -> np.ndarray:
        """``dataset``'s held-out contexts embedded for Conv2Item. With LoRA on the top layers only, the layers below
        are frozen: their states are kept from the first pass (``pipeline.model.trunk``), later passes run the
        adapted layers alone (the same embeddings; 8 of 30 layers adapted: ~3.7x cheaper, bench/README.md)."""
        kwargs = dict(batch_size=self.batch_size, max_length=self.query_length, truncation_side="left", progress=False)
        frozen = frozen_bottom_layers(lm)
        if not frozen:
            return lm.embed(self.queries[dataset], templates.CONV2ITEM_QUERY, **kwargs)
        trunk = self._trunks.get(dataset)
        if trunk is not None and trunk.layers == frozen:
            try:
                return embed_trunk(lm, trunk, progress=False)
            except TrunkMismatchError:  # the bottom layers moved (not LoRA-only training): states from this model
                pass
        trunk = self._trunks[dataset] = trunk_states(lm, self.queries[dataset], templates.CONV2ITEM_QUERY, layers=frozen, **kwargs)
        return embed_trunk(lm, trunk, progress=False)

    def __call__(self, lm: RetrievableLM) -> list[dict]:
        rows = []
        for dataset in self.queries:
            q = self.query_vectors(lm, dataset)
            if dataset in self.tables:
                offset = self.offsets.get(dataset)
                table = offset_table(self.tables[dataset].cpu().numpy(),
                                     None if offset is None else offset.detach().float().cpu().numpy())
            else:
                table = lm.embed(self.descriptions[dataset], templates.CONV2ITEM_SAMPLE, batch_size=self.batch_size,
                                 max_length=self.document_length)
            bias = self.biases.get(dataset)
            bias = None if bias is None else self.temperature * bias.detach().float().cpu().numpy()
            scores = rank_scores(q, table, bias)
            row = {"dataset": dataset, **recall_per_item(scores, self.gold_rows[dataset])}
            if self.betas and dataset in self.priors:
                beta, _, recall = prior_sweep(scores / self.temperature, self.priors[dataset], self.gold_rows[dataset], self.betas)
                row |= {"prior_beta": beta, "prior_recall@10": recall["recall@10"], "prior_recall@50": recall["recall@50"]}
            rows.append(row)
        return rows


@dataclass
class PriorChoice:
    """retrieval+prior's beta, chosen on the validation split by fine-tuning's last validation pass
    (``CatalogueValidation``), so evaluation need not embed the validation split again."""

    beta: float
    n: int  # validation gold items (per-item Recall's n; a context with two gold items counts twice)
    step: int  # the training step of that pass
    score: float  # validation Recall (mean of @10 and @50) at ``beta``
    score_without: float  # ... at beta = 0 (retrieval alone)


def prior_choice(validation_curve: pd.DataFrame, dataset: str) -> PriorChoice | None:
    """The last validation pass's retrieval+prior choice for ``dataset`` (plots/finetune_validation.csv), or
    None when no pass made one (fine-tuning ran no validation, or one without ``betas``)."""
    if "prior_beta" not in validation_curve.columns:
        return None
    rows = validation_curve[(validation_curve["dataset"] == dataset) & validation_curve["prior_beta"].notna()]
    if rows.empty:
        return None
    last = rows.loc[rows["step"].idxmax()]
    beta = float(last["prior_beta"])
    return PriorChoice(int(beta) if beta.is_integer() else beta, int(last["n"]), int(last["step"]),
                       float(last["prior_recall@10"] + last["prior_recall@50"]) / 2,
                       float(last["recall@10"] + last["recall@50"]) / 2)
