from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data import schemas


def _items(**over):
    row = {"item_id": "redial:1", "title": "X", "year": 2000, "description": "X (2000).", "metadata_source": "title_only"}
    row.update(over)
    return pd.DataFrame([row])


def test_valid_table_passes_and_is_reordered():
    frame = _items()[["title", "item_id", "year", "description", "metadata_source"]]
    assert list(schemas.validate(frame, schemas.ITEMS).columns) == schemas.ITEMS.names


@pytest.mark.parametrize(
    "frame, message",
    [
        (_items().drop(columns=["title"]), r"missing column\(s\) \['title'\]"),
        (_items().assign(extra=1), r"unexpected column\(s\) \['extra'\]"),
        (_items(title=3), r"row 0, column 'title' = 3; expected str"),
        (_items(description=None), r"row 0, column 'description' is null"),
        (pd.concat([_items(), _items()]), r"duplicate key \{'item_id': 'redial:1'\}"),
    ],
)
def test_contract_violations_name_table_row_and_column(frame, message):
    with pytest.raises(schemas.SchemaError, match=message):
        schemas.validate(frame, schemas.ITEMS, source="items.parquet")


def test_context_column_checks_speakers():
    row = {"instance_id": "a#1", "dialogue_id": "a", "split": "test", "context": [{"speaker": "bot", "text": "hi"}],
           "response": "r", "gold_item_ids": ["x"], "gold_seen_in_context": [False]}
    with pytest.raises(schemas.SchemaError, match="column 'context'"):
        schemas.validate(pd.DataFrame([row]), schemas.REC_TURNS)
    row["context"] = [{"speaker": "seeker", "text": "hi"}]
    row["split"] = "dev"
    with pytest.raises(schemas.SchemaError, match="split 'dev'"):
        schemas.validate(pd.DataFrame([row]), schemas.REC_TURNS)
