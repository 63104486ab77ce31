"""The fine-tuned model's Conv2Item query embeddings of training and validation contexts, made once by stage
``embed_contexts@<dataset>`` and read by the stages that need them: ``fit_items`` (the item offsets are fitted on the
training contexts and judged on the validation ones) and ``evaluate`` (``retrieval+knowledge``: the training
contexts are the neighbours the encoder finds, the validation ones choose its weights).

On disk, per split (``train``, ``valid``): ``<split>.npy`` (float32, L2-normalised, one row per context) and
``<split>.parquet`` (instance_id, dialogue_id, gold_item_ids, gold_seen_in_context; same order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.splits import seeded_sample
from pipeline.errors import DataError, MissingArtifactError

SPLITS = ("train", "valid")
COLUMNS = ["instance_id", "dialogue_id", "gold_item_ids", "gold_seen_in_context"]


def training_contexts(pairs: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """One row per training turn of the catalogue pairs (``catalogue_train``: every training turn), a seeded sample of
    ``limit`` of them (0 = all)."""
    turns = pairs.drop_duplicates("instance_id")
    if "gold_seen_in_context" not in turns:  # the pairs carry no seen flags; training contexts are never deduplicated
        turns = turns.assign(gold_seen_in_context=[[False] * len(g) for g in turns["gold_item_ids"]])
    return seeded_sample(turns, limit or None, seed)


@dataclass
class ContextEmbeddings:
    """One split's contexts (``COLUMNS``) and their embeddings, row for row."""

    contexts: pd.DataFrame
    vectors: np.ndarray

    def __post_init__(self):
        if len(self.contexts) != len(self.vectors):
            raise DataError(f"{len(self.contexts)} contexts for {len(self.vectors)} embeddings; expected one row each")

    def save(self, folder: Path, split: str) -> None:
        np.save(folder / f"{split}.npy", np.ascontiguousarray(self.vectors, dtype=np.float32), allow_pickle=False)
        frame = self.contexts[COLUMNS].copy()
        for column in ("gold_item_ids", "gold_seen_in_context"):
            frame[column] = frame[column].map(list)
        frame.to_parquet(folder / f"{split}.parquet", index=False)

    @classmethod
    def load(cls, folder: str | Path, split: str) -> "ContextEmbeddings":
        folder = Path(folder)
        vectors, table = folder / f"{split}.npy", folder / f"{split}.parquet"
        if not vectors.exists() or not table.exists():
            raise MissingArtifactError(f"{folder}: no {split}.npy / {split}.parquet; expected the fine-tuned model's context "
                                       f"embeddings: `dvc repro embed_contexts@{folder.name}` makes them")
        return cls(pd.read_parquet(table), np.load(vectors, allow_pickle=False))
