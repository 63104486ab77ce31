"""The data contracts between stages, written down once and checked at the boundary.

Each table is a list of (column, kind) pairs; ``validate`` raises ``SchemaError`` naming the table, the
column and the first offending row. Stages validate on write and on read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, MissingArtifactError

SPEAKERS = ("seeker", "recommender")
SPLITS = ("train", "valid", "test")


def instance_id(dialogue_id: str, start: int) -> str:
    """The id of the instance whose turn starts at utterance ``start`` of ``dialogue_id``: ``<dialogue>#<start>``."""
    return f"{dialogue_id}#{start}"


def instance_start(instance: str) -> tuple[str, int]:
    """``instance_id``'s inverse: (dialogue id, index of the turn's first utterance)."""
    dialogue, start = instance.rsplit("#", 1)
    return dialogue, int(start)


class SchemaError(DataError):
    """A table does not match its contract."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str", "int", "nullable_int", "bool", "list_str", "list_bool", "context"
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


ITEMS = Table(
    "items",
    (
        Column("item_id", "str"),
        Column("title", "str"),
        Column("year", "nullable_int", nullable=True),
        Column("description", "str"),
        Column("metadata_source", "str"),
    ),
    unique=("item_id",),
)

DIALOGUES = Table(
    "dialogues",
    (
        Column("dialogue_id", "str"),
        Column("split", "str"),
        Column("turn_index", "int"),
        Column("speaker", "str"),
        Column("text", "str"),
        Column("item_ids", "list_str"),
        Column("source_file", "str"),
    ),
    unique=("dialogue_id", "turn_index"),
)

REC_TURNS = Table(
    "rec_turns",
    (
        Column("instance_id", "str"),
        Column("dialogue_id", "str"),
        Column("split", "str"),
        Column("context", "context"),
        Column("response", "str"),
        Column("gold_item_ids", "list_str"),
        Column("gold_seen_in_context", "list_bool"),
    ),
    unique=("instance_id",),
)

IARD_TURNS = Table(
    "iard_turns",
    (
        Column("instance_id", "str"),
        Column("dialogue_id", "str"),
        Column("split", "str"),
        Column("context", "context"),
        Column("response", "str"),
        Column("user_intents", "list_str"),
        Column("user_intents_top", "list_str"),
        Column("system_actions", "list_str"),
        Column("system_actions_top", "list_str"),
        Column("accepted", "bool"),
    ),
    unique=("instance_id",),
)

IARD_CODES = Table(
    "iard_codes",
    (
        Column("role", "str"),
        Column("code", "str"),
        Column("readme_code", "str"),
        Column("name", "str"),
        Column("top_level", "str"),
        Column("description", "str"),
    ),
    unique=("role", "code"),
)


def _check_value(kind: str, value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "nullable_int":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("list_str", "list_bool"):
        if not hasattr(value, "__len__") or isinstance(value, (str, dict)):
            return False
        want = str if kind == "list_str" else bool
        return all(isinstance(v, want) for v in value)
    if kind == "context":
        if not hasattr(value, "__len__") or isinstance(value, (str, dict)):
            return False
        return all(
            isinstance(u, dict) and u.get("speaker") in SPEAKERS and isinstance(u.get("text"), str)
            for u in value
        )
    raise ValueError(f"unknown column kind {kind!r}")


def _python(value):
    """Convert numpy scalars / arrays (as parquet round-trips give them) to Python objects."""
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def validate(frame: pd.DataFrame, table: Table, source: str = "") -> pd.DataFrame:
    """Check ``frame`` against ``table``; return it with columns in contract order.

    Extra columns are an error too: a contract that silently grows is no contract.
    """
    where = f"{table.name} table" + (f" ({source})" if source else "")
    missing = [c for c in table.names if c not in frame.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; expected {table.names}")
    extra = [c for c in frame.columns if c not in table.names]
    if extra:
        raise SchemaError(f"{where}: unexpected column(s) {extra}; expected {table.names}")
    for col in table.columns:
        for row, value in enumerate(frame[col.name].tolist()):
            value = _python(value)
            if value is None and not col.nullable:
                raise SchemaError(f"{where}: row {row}, column {col.name!r} is null; expected {col.kind}")
            if value is not None and not _check_value(col.kind, value):
                raise SchemaError(
                    f"{where}: row {row}, column {col.name!r} = {value!r:.80}; expected {col.kind}"
                )
    if table.unique and len(frame):
        dup = frame.duplicated(subset=list(table.unique), keep=False)
        if dup.any():
            first = frame[dup].iloc[0]
            key = {k: _python(first[k]) for k in table.unique}
            raise SchemaError(f"{where}: duplicate key {key}; {table.unique} must be unique")
    if "split" in frame.columns:
        bad = frame.loc[~frame["split"].isin(SPLITS), "split"]
        if len(bad):
            raise SchemaError(f"{where}: split {bad.iloc[0]!r}; expected one of {SPLITS}")
    return frame[table.names].reset_index(drop=True)


def read_table(path: str | Path, table: Table) -> pd.DataFrame:
    """Read a parquet table and validate it against its contract."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path}: no such {table.name} table (run the stage that writes it)")
    return validate(pd.read_parquet(path), table, source=str(path))
