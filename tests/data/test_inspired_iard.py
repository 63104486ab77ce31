"""INSPIRED (both formats) and IARD ingest on the committed slices, with hand-checked values."""

from __future__ import annotations

import pytest

from pipeline.data.common import IngestError, IngestLog
from pipeline.data.ingest import ingest
from pipeline.data.inspired import read_tsv
from tests.conftest import RAW


@pytest.fixture(scope="module")
def inspired():
    return ingest("inspired", RAW)


@pytest.fixture(scope="module")
def iard():
    return ingest("iard", RAW, seed=0, iard_heldout_fraction=0.15)


def test_inspired_splits_and_sources(inspired):
    splits = inspired.report["splits"]
    assert {k: v["dialogues"] for k, v in splits.items()} == {"train": 3, "valid": 2, "test": 2}
    assert inspired.report["split_sources"]["train"].endswith("train_data_dbpedia.jsonl")  # no train.tsv here
    assert inspired.report["split_sources"]["test"].endswith("test.tsv")


def test_inspired_tsv_speakers_quotes_and_multi_title_mentions(inspired):
    d = inspired.tables["dialogues"]
    first = d[d.dialogue_id == "inspired:20191202-103716_425_live.pkl"].sort_values("turn_index")
    assert list(first.speaker[:2]) == ["recommender", "seeker"]
    assert "QUOTATION_MARK" not in " ".join(d.text)
    # 'San Andreas (2015);  Die Hard (1988)' is two items (titles may hold commas, so split on ';' only)
    turn = inspired.tables["rec_turns"].set_index("instance_id").loc["inspired:20191130-081727_440_live.pkl#25"]
    assert list(turn.gold_item_ids) == ["inspired:San Andreas (2015)", "inspired:Die Hard (1988)"]


def test_inspired_item_descriptions_are_counted_by_source(inspired):
    items = inspired.tables["items"].set_index("item_id")
    assert items.loc["inspired:Die Hard (1988)"].metadata_source == "id2info.json:title_year"
    assert "Director: John McTiernan" in items.loc["inspired:Die Hard (1988)"].description
    assert items.loc["inspired:Knives Out (2019)"].description == "Knives Out (2019)."
    counts = inspired.report["counts"]
    assert counts["items_description_from:id2info.json:title_year"] + counts["items_description_from:title_only"] == len(items)


def test_inspired_seen_in_context(inspired):
    turn = inspired.tables["rec_turns"].set_index("instance_id").loc["inspired:train-0001#20"]
    assert list(turn.gold_item_ids) == ["inspired:Knives Out (2019)", "inspired:Given (2017)", "inspired:Action (1980)"]
    assert list(turn.gold_seen_in_context) == [True, False, False]


def test_mention_without_year_is_dropped_and_reported(raw_copy):
    path = raw_copy / "inspired/dialog_data/test.tsv"
    text = path.read_text()
    assert "San Andreas (2015);  Die Hard (1988)" in text
    path.write_text(text.replace("San Andreas (2015);  Die Hard (1988)", "San Andreas (2015);  Akira ()"))
    result = ingest("inspired", raw_copy)
    assert result.report["issues"]["by_reason"] == {"dropped:mention_without_year": 1}
    record = result.report["issues"]["records"][0]
    assert record["file"].endswith("test.tsv") and record["where"].startswith("line ") and "Akira" in record["detail"]


def test_tsv_with_a_missing_column_or_a_bad_row_is_an_error(raw_copy):
    path = raw_copy / "inspired/dialog_data/dev.tsv"
    lines = path.read_text().split("\n")
    path.write_text("\n".join([lines[0].replace("speaker", "who")] + lines[1:]))
    with pytest.raises(IngestError, match=r"dev.tsv: line 1: column\(s\) \['speaker'\] missing"):
        read_tsv(path, "valid", IngestLog(), {})
    path.write_text("\n".join(lines[:3] + [lines[3] + "\textra"] + lines[4:]))
    with pytest.raises(IngestError, match=r"dev.tsv: line 4: 20 fields; expected 19"):
        read_tsv(path, "valid", IngestLog(), {})


def test_iard_codes_use_the_file_spelling_with_readme_descriptions(iard):
    codes = iard.tables["iard_codes"].set_index(["role", "code"])
    assert codes.loc[("recommender", "CLQ")].readme_code == "CLA"
    assert codes.loc[("recommender", "RESP")].readme_code == "RES"
    assert codes.loc[("recommender", "R-ANS")].readme_code == "ANS"
    assert codes.loc[("seeker", "ANS")].description == "Seeker answers the question issued by the recommender"
    assert codes.loc[("recommender", "REC-S")].top_level == "Recommend"
    assert len(codes) == 26


def test_iard_turns_hand_checked(iard):
    turns = iard.tables["iard_turns"].set_index("instance_id")
    first = turns.loc["iard:474#1"]
    assert first.response == "Yes, how about It (2017) ?"
    assert list(first.user_intents) == ["OTH", "IQU"] and list(first.system_actions) == ["REC-E"]
    assert [c["speaker"] for c in first.context] == ["seeker"]
    # seeker utterance 13 accepts: the recommender turn just before it (pos 12 -> index 11) is accepted
    assert turns.loc["iard:474#11"].accepted
    assert not turns.loc["iard:474#1"].accepted
    counts = iard.report["splits"]
    assert counts["train"]["dialogues"] + counts["test"]["dialogues"] == 3
