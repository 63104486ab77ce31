"""How every stage embeds items and conversations: the paper's instructions (``templates``) and the token caps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import templates
from pipeline.model import RetrievableLM


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
