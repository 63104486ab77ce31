"""Embedding through a shared, frozen trunk.

With LoRA on the top N decoder layers only (``model.lora.layers``), the layers below are the base model's own
weights in the un-tuned model, in the fine-tuned one (merged or not) and at every training step: for the same
text their states are the same. ``trunk_states`` runs a set of texts through those layers once, batched exactly as
``RetrievableLM.embed`` batches them; ``embed_trunk`` finishes them in any model whose bottom layers are the
same weights (a checksum says so, else ``TrunkMismatchError``), running only the layers above. The result is
``embed``'s, bit for bit (the same operations on the same states); the second model pays N of the layers.

    trunk = trunk_states(base, queries, instruction, layers=adapter_bottom_layers("models/reficr"))
    base_vectors, tuned_vectors = embed_trunk(base, trunk), embed_trunk(tuned, trunk)
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.model.lm import RetrievableLM, mean_pool


class TrunkMismatchError(ValueError):
    """A trunk offered to a model whose bottom layers are not the weights that made it."""


@dataclass
class Trunk:
    """Texts tokenized and batched as ``RetrievableLM.embed`` batches them, after the bottom ``layers`` decoder
    layers of a model whose token embeddings and bottom layers have the checksum ``fingerprint``."""

    layers: int
    fingerprint: tuple
    n: int
    # per batch: its rows in the texts' order, the states after ``layers`` layers (CPU), attention and pooling masks
    batches: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]


def num_layers(lm: RetrievableLM) -> int:
    return len(lm.decoder().layers)


def adapter_bottom_layers(adapter_dir: str | Path) -> int:
    """Decoder layers below the lowest layer a saved LoRA adapter changes (0 when it adapts every layer): the
    layers a model with this adapter, merged or not, shares with its base model."""
    return _lowest(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("layers_to_transform"))


def frozen_bottom_layers(lm: RetrievableLM) -> int | None:
    """Decoder layers below the lowest layer of ``lm``'s attached (unmerged) LoRA adapter; all of them without an
    adapter; None once an adapter was merged (nothing says which layers it changed)."""
    config = getattr(lm.model, "peft_config", None)
    if config is None:
        return None if lm.merged else num_layers(lm)
    return _lowest(next(iter(config.values())).layers_to_transform)


def _lowest(layers_to_transform) -> int:
    if layers_to_transform is None:
        return 0
    return min(layers_to_transform) if isinstance(layers_to_transform, list) else int(layers_to_transform)


def bottom_fingerprint(lm: RetrievableLM, layers: int) -> tuple:
    """A checksum of the token embeddings and the bottom ``layers`` decoder layers (their dtype and the float64
    sum of each weight): equal in two models whose trunk states are interchangeable."""
    decoder = lm.decoder()
    params = [*decoder.embed_tokens.parameters(), *(p for layer in list(decoder.layers)[:layers] for p in layer.parameters())]
    return (layers, str(params[0].dtype), *(float(p.data.double().sum()) for p in params))


@contextmanager
def _decoder_slice(lm: RetrievableLM, start: int, stop: int, final_norm: bool):
    """``lm``'s decoder with only its layers ``start``..``stop - 1`` (and its final norm, or none), restored after."""
    decoder = lm.decoder()
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


@torch.no_grad()
def trunk_states(lm: RetrievableLM, texts: Sequence[str], instruction: str = "", *, layers: int, batch_size: int = 16,
                 max_length: int = 256, truncation_side: str = "right", progress: bool | None = None) -> Trunk:
    """``texts`` batched as ``lm.embed`` would batch them, through the bottom ``layers`` decoder layers only."""
    if not 0 <= layers <= num_layers(lm):
        raise ValueError(f"trunk layers {layers}; the model has {num_layers(lm)} decoder layers")
    was_training = lm.model.training
    lm.model.eval()
    tokenized = lm.tokenize_for_embedding(texts, instruction, max_length, truncation_side)
    batches = lm.embedding_batches(tokenized, batch_size, sort_by_length=True)
    show = progress if progress is not None else len(batches) > 10
    out = []
    with _decoder_slice(lm, 0, layers, final_norm=False) as decoder:
        for chunk in tqdm(batches, desc=f"embed (layers 1-{layers})", unit="batch", disable=not show):
            ids, mask, pool = lm.embedding_batch([tokenized[i] for i in chunk])
            states = decoder(input_ids=ids, attention_mask=mask, is_causal=False).last_hidden_state
            out.append((chunk, states.cpu(), mask.cpu(), pool.cpu()))
    lm.model.train(was_training)
    return Trunk(layers, bottom_fingerprint(lm, layers), len(texts), out)


@torch.no_grad()
def embed_trunk(lm: RetrievableLM, trunk: Trunk, progress: bool | None = None) -> np.ndarray:
    """``lm.embed``'s result for the trunk's texts, running only the layers above ``trunk.layers``;
    ``TrunkMismatchError`` when ``lm``'s bottom layers are not the weights that made the trunk."""
    if bottom_fingerprint(lm, trunk.layers) != trunk.fingerprint:
        raise TrunkMismatchError(f"this model's bottom {trunk.layers} decoder layers are not those that made the trunk "
                                 "(an adapter below them, another base model or dtype): embed the texts instead")
    was_training = lm.model.training
    lm.model.eval()
    top = num_layers(lm)
    out = np.zeros((trunk.n, lm.hidden_size), dtype=np.float32)
    show = progress if progress is not None else len(trunk.batches) > 10
    for chunk, states, mask, pool in tqdm(trunk.batches, desc=f"embed (layers {trunk.layers + 1}-{top})", unit="batch",
                                          disable=not show):
        out[chunk] = finish_states(lm, trunk.layers, states.to(lm.device), mask.to(lm.device), pool.to(lm.device)).cpu().numpy()
    lm.model.train(was_training)
    return out


def finish_states(lm: RetrievableLM, layers: int, states: torch.Tensor, mask: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Pooled, L2-normalised embeddings of one trunk batch: its ``states`` after the bottom ``layers`` decoder layers
    run through the layers above and the final norm (with gradients where they are enabled: ``trunk_pass`` trains
    on them)."""
    with _decoder_slice(lm, layers, num_layers(lm), final_norm=True) as decoder:
        hidden = decoder(inputs_embeds=states, attention_mask=mask, is_causal=False).last_hidden_state
    return mean_pool(hidden, pool)
