"""How every stage embeds items and conversations: the paper's instructions (``templates``) and the token caps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.model.lm import RetrievableLM
from pipeline.model.trunk import Trunk, TrunkMismatchError, embed_trunk, trunk_states
from pipeline.tasks import templates

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    """Embeds items and conversations as every stage does (instructions from ``templates``, token caps)."""

    lm: RetrievableLM
    query_length: int
    document_length: int
    batch_size: int

    def items(self, descriptions: list[str]) -> np.ndarray:
        return self.lm.embed(descriptions, templates.CONV2ITEM_SAMPLE, batch_size=self.batch_size, max_length=self.document_length)

    def conversations(self, texts: list[str], instruction: str) -> np.ndarray:
        """Rendered contexts, their most recent part kept (queries, and Conv2Conv documents)."""
        return self.lm.embed(texts, instruction, batch_size=self.batch_size, max_length=self.query_length, truncation_side="left")

    def conversation_trunk(self, texts: list[str], instruction: str, layers: int) -> Trunk:
        """``conversations``' inputs through the bottom ``layers`` decoder layers only (``pipeline.model.trunk``):
        any model sharing those layers finishes them (``pipeline.model.trunk.embed_trunk``)."""
        return trunk_states(self.lm, texts, instruction, layers=layers, batch_size=self.batch_size, max_length=self.query_length,
                            truncation_side="left")


@dataclass
class SharedTrunk:
    """Conversations that several models embed with ``instruction``, models that share their bottom ``layers`` (the
    base model and one with LoRA above them): the first model's encoder runs them through those layers
    (``Encoder.conversation_trunk``), each model runs the layers above; after ``users`` models the states are
    dropped. With ``layers`` 0 nothing is kept; a model whose bottom layers differ (``TrunkMismatchError``) embeds
    them through every layer."""

    texts: list[str]
    instruction: str
    layers: int
    users: int = 2
    _trunk: Trunk | None = field(default=None, repr=False)
    _used: int = 0

    def embed(self, encoder: Encoder) -> np.ndarray:
        if not self.layers or self._used >= self.users:  # nothing shared (an adapter on every layer), or states gone
            return encoder.conversations(self.texts, self.instruction)
        if self._trunk is None:
            self._trunk = encoder.conversation_trunk(self.texts, self.instruction, self.layers)
        try:
            vectors = embed_trunk(encoder.lm, self._trunk)
        except TrunkMismatchError as error:  # e.g. a 4-bit base re-quantized around a merged adapter
            log.warning("%s; embedding %d conversations through every layer", error, len(self.texts))
            vectors = encoder.conversations(self.texts, self.instruction)
        self._used += 1
        if self._used == self.users:
            self._trunk = None
        return vectors
