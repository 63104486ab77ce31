"""Seeded, order-independent samples and splits: the same seed picks the same rows whatever the frame's order."""

from __future__ import annotations

import pandas as pd

from pipeline.data.common import hash_fraction
from pipeline.errors import DataError


def validation_split(dm_train: pd.DataFrame, fraction: float, limit: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, valid): the turns of ``fraction`` of the training dialogues (those with the smallest seeded hash; at
    least one, never all) are validation (at most ``limit`` of them, a seeded sample; 0 = all), the other dialogues'
    turns fit the choices and prior."""
    dialogues = sorted(dm_train["dialogue_id"].unique(), key=lambda d: (hash_fraction(f"dm-validation:{d}", seed), d))
    if len(dialogues) < 2:
        raise DataError(f"dialogue-management validation: {len(dialogues)} training dialogue(s); expected at least 2 "
                        "(one to fit the choices, one to validate)")
    held = set(dialogues[: min(max(1, round(fraction * len(dialogues))), len(dialogues) - 1)])
    in_valid = dm_train["dialogue_id"].isin(held)
    fit = dm_train[~in_valid].reset_index(drop=True)
    return fit, seeded_sample(dm_train[in_valid].reset_index(drop=True), limit or None, seed)


def seeded_sample(frame: pd.DataFrame, limit: int | None, seed: int, key: str = "instance_id") -> pd.DataFrame:
    """The ``limit`` rows with the smallest seeded hash of ``key``, in their original order."""
    if limit is None or limit <= 0 or len(frame) <= limit:
        return frame.reset_index(drop=True)
    ranks = frame[key].map(lambda k: hash_fraction(str(k), seed))
    keep = ranks.nsmallest(limit).index
    return frame.loc[sorted(keep)].reset_index(drop=True)
