"""Contrastive losses of ReFICR (Eq. 1, Eq. 4-5) and the joint loss (Eq. 7).

Layout contract for the mined-negative loss: documents are grouped per query,
``docs[i * G : (i + 1) * G] = [positive_i, negative_i1, ..., negative_ik]`` with ``G = 1 + k``, so the
target of query ``i`` is column ``i * G`` when every document of the batch is scored (in-batch negatives on),
or column ``0`` of its own group when only its own documents are (in-batch negatives off: the per-query
scores come from a ``[B, G, d]`` reshape, so no other query's document can leak in).

False negatives: ``false_negative[i, j] = True`` masks document ``j`` out of query ``i``'s softmax (another
query's document that is in fact a positive of ``i``, e.g. the same gold item). A query's own positive is
never masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def in_batch_info_nce(
    queries: torch.Tensor, docs: torch.Tensor, temperature: float, false_negative: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1: mean over i of -log softmax_j(sim(q_i, d_j) / tau)[i]; q and d L2-normalised (cosine)."""
    logits = queries @ docs.T / temperature
    if false_negative is not None:
        mask = false_negative.clone()
        mask.fill_diagonal_(False)
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def mined_negatives_loss(
    queries: torch.Tensor,
    docs: torch.Tensor,
    temperature: float,
    group_size: int,
    in_batch: bool = True,
    false_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 4-5 over groups ``[positive, k negatives]`` per query (see the module docstring)."""
    batch = len(queries)
    if docs.shape[0] != batch * group_size:
        raise ValueError(f"{docs.shape[0]} documents for {batch} queries of group size {group_size}")
    if in_batch:
        logits = queries @ docs.T / temperature  # [B, B*G]
        targets = torch.arange(batch, device=queries.device) * group_size
        if false_negative is not None:
            mask = false_negative.clone()
            mask[torch.arange(batch), targets] = False
            logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits, targets)
    grouped = docs.view(batch, group_size, -1)  # [B, G, d]
    logits = torch.einsum("bd,bgd->bg", queries, grouped) / temperature
    if false_negative is not None:
        own = false_negative.view(batch, batch, group_size)[torch.arange(batch), torch.arange(batch)].clone()
        own[:, 0] = False
        logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=queries.device))


def key_overlap_mask(query_keys: list[set[str]], doc_keys: list[set[str]]) -> torch.Tensor:
    """``[Q, D]`` bool: True where document j shares a key (gold item) with query i's positives."""
    mask = torch.zeros((len(query_keys), len(doc_keys)), dtype=torch.bool)
    for i, qk in enumerate(query_keys):
        for j, dk in enumerate(doc_keys):
            if qk & dk:
                mask[i, j] = True
    return mask


@dataclass
class JointLossOutput:
    loss: torch.Tensor
    loss_cl: torch.Tensor
    loss_gen: torch.Tensor


def joint_loss(loss_cl: torch.Tensor, loss_gen: torch.Tensor, lambda_cl: float, lambda_gen: float) -> JointLossOutput:
    """Eq. 7: lambda_cl * L_cl + lambda_gen * L_gen."""
    return JointLossOutput(lambda_cl * loss_cl + lambda_gen * loss_gen, loss_cl, loss_gen)
