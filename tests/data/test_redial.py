"""ReDial ingest on the committed slices: roles, mentions, de-duplication, splits, bad input."""

from __future__ import annotations

import json

import pytest

from pipeline.data import schemas
from pipeline.data.common import IngestError, IngestLog
from pipeline.data.ingest import ingest, write_ingest
from pipeline.data.items import read_redial_movies
from pipeline.data.redial import read_jsonl, read_redial
from tests.conftest import RAW


@pytest.fixture(scope="module")
def redial():
    return ingest("redial", RAW, seed=0, redial_valid_fraction=0.1)


def test_roles_come_from_worker_ids_not_position(redial):
    d = redial.tables["dialogues"]
    first = d[(d.dialogue_id == "redial:20001")].sort_values("turn_index")
    assert first.iloc[0].speaker == "seeker"
    assert first.iloc[0].text == "Hi I am looking for a movie like Super Troopers (2001)"
    assert list(first.iloc[0].item_ids) == ["redial:111776"]
    assert first.iloc[1].speaker == "recommender"
    # consecutive seeker utterances stay separate utterances
    assert list(first.speaker[:4]) == ["seeker", "recommender", "seeker", "seeker"]
    # a dialogue the recommender opens must not be flipped
    raw = [json.loads(line) for line in (RAW / "redial/test_data.jsonl").read_text().splitlines()]
    for record in raw:
        rows = d[d.dialogue_id == f"redial:{record['conversationId']}"].sort_values("turn_index")
        expected = ["seeker" if m["senderWorkerId"] == record["initiatorWorkerId"] else "recommender" for m in record["messages"]]
        assert list(rows.speaker) == expected


def test_train_files_are_deduplicated_by_conversation_id_with_provenance(redial):
    sources = redial.report["train_sources"]
    shupeili = next(v for k, v in sources.items() if "shupeili" in k)
    assert shupeili == {"dialogues": 7, "new": 6, "duplicates": 1}
    splits = redial.report["splits"]
    assert splits["train"]["dialogues"] + splits["valid"]["dialogues"] == 16  # 3 + 7 + 7 - 1 duplicate
    assert splits["test"]["dialogues"] == 4


def test_valid_split_is_a_deterministic_hash_of_the_id(redial):
    again = ingest("redial", RAW, seed=0, redial_valid_fraction=0.1)
    assert again.tables["dialogues"].equals(redial.tables["dialogues"])
    other_seed = ingest("redial", RAW, seed=1, redial_valid_fraction=0.5)
    valid = set(other_seed.tables["dialogues"].query("split == 'valid'").dialogue_id)
    assert 0 < len(valid) < 16
    assert not valid & set(redial.tables["dialogues"].query("split == 'test'").dialogue_id)


def test_rec_turns_gold_items_and_seen_flags(redial):
    turns = redial.tables["rec_turns"].set_index("instance_id")
    turn = turns.loc["redial:20001#1"]
    assert [c["speaker"] for c in turn.context] == ["seeker"]
    assert list(turn.gold_item_ids) == ["redial:151656"]
    assert list(turn.gold_seen_in_context) == [False]
    d = redial.tables["dialogues"]
    for instance_id, row in turns.iterrows():
        dialogue = d[d.dialogue_id == row.dialogue_id].sort_values("turn_index")
        start = int(instance_id.split("#")[1])
        earlier = {i for items in dialogue.item_ids[:start] for i in items}
        assert list(row.gold_seen_in_context) == [g in earlier for g in row.gold_item_ids]
        assert dialogue.iloc[start].speaker == "recommender" and dialogue.iloc[start - 1].speaker == "seeker"
    assert redial.report["splits"]["test"]["rec_turns_full"] == int((turns.split == "test").sum())


def test_items_have_descriptions_from_metadata_or_title(redial):
    items = redial.tables["items"].set_index("item_id")
    troopers = items.loc["redial:111776"]
    assert troopers.title == "Super Troopers" and troopers.year == 2001
    assert troopers.description.startswith("Super Troopers (2001). Genres: ")
    assert "Plot: " in troopers.description and troopers.metadata_source == "id2info.json"
    assert set(items.metadata_source) <= {"id2info.json", "title_only"}


def test_written_tables_validate_and_report_is_json(redial, tmp_path):
    write_ingest(redial, tmp_path / "redial")
    for name, table in (("items", schemas.ITEMS), ("dialogues", schemas.DIALOGUES), ("rec_turns", schemas.REC_TURNS)):
        schemas.read_table(tmp_path / f"redial/{name}.parquet", table)
    report = json.loads((tmp_path / "redial/ingest_report.json").read_text())
    assert report["splits"]["test"]["dialogues"] == 4


def test_a_failed_write_leaves_no_output(redial, tmp_path, monkeypatch):
    import pipeline.data.ingest as ingest_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, "write_json", boom)
    with pytest.raises(OSError):
        write_ingest(redial, tmp_path / "redial")
    assert not (tmp_path / "redial").exists()
    assert list(tmp_path.iterdir()) == []


# ---- bad input -------------------------------------------------------------------------------

def edit_test_record(raw_copy, line_index: int, edit) -> dict:
    """Apply ``edit`` to the JSON record on one line of the test file; return the edited record."""
    path = raw_copy / "redial/test_data.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[line_index])
    edit(record)
    lines[line_index] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    return record


def test_truncated_json_line_names_file_and_line(raw_copy):
    path = raw_copy / "redial/test_data.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"test_data.jsonl: line 3: invalid JSON .*truncated"):
        ingest("redial", raw_copy)


def test_missing_key_names_file_line_and_key(raw_copy):
    edit_test_record(raw_copy, 1, lambda record: record.pop("respondentWorkerId"))
    with pytest.raises(IngestError, match=r"line 2: key 'respondentWorkerId' missing"):
        ingest("redial", raw_copy)


def test_unknown_movie_id_is_a_counted_repair(raw_copy):
    def edit(record):
        record["messages"][0]["text"] += " and @999999999"
        record["movieMentions"]["999999999"] = "Nowhere Film  (1999)"
        record["messages"][1]["text"] += " or @888888888"

    edit_test_record(raw_copy, 0, edit)
    result = ingest("redial", raw_copy)
    d = result.tables["dialogues"]
    first = d[d.dialogue_id == "redial:20001"].sort_values("turn_index")
    assert first.iloc[0].text.endswith("and Nowhere Film (1999)")
    assert list(first.iloc[0].item_ids) == ["redial:111776"]
    assert first.iloc[1].text.endswith("or @888888888")
    assert result.report["issues"]["by_reason"] == {"repaired:mention_not_in_catalogue": 2}
    assert {r["where"] for r in result.report["issues"]["records"]} == {
        "line 1, conversationId 20001, message 0", "line 1, conversationId 20001, message 1"}


def test_sender_outside_the_dialogue_is_dropped_and_reported(raw_copy):
    record = edit_test_record(raw_copy, 0, lambda r: r["messages"][2].update(senderWorkerId=-1))
    result = ingest("redial", raw_copy)
    assert result.report["counts"]["dropped:sender_not_a_participant"] == 1
    assert len(result.tables["dialogues"].query("dialogue_id == 'redial:20001'")) == len(record["messages"]) - 1


def test_empty_file_is_an_error(raw_copy):
    (raw_copy / "redial/test_data.jsonl").write_text("\n")
    with pytest.raises(IngestError, match=r"test_data.jsonl: file is empty; expected JSON lines"):
        ingest("redial", raw_copy)


def test_wrong_encoding_names_the_line(raw_copy):
    path = raw_copy / "redial/test_data.jsonl"
    data = path.read_bytes().splitlines(keepends=True)
    data[1] = data[1].replace(b"\"text\": \"", b"\"text\": \"caf\xe9 ", 1)  # latin-1 e-acute
    path.write_bytes(b"".join(data))
    with pytest.raises(IngestError, match=r"test_data.jsonl: line 2: byte \d+ is not valid UTF-8"):
        read_jsonl(path)


def test_crlf_and_missing_final_newline_read_the_same(raw_copy):
    path = raw_copy / "redial/test_data.jsonl"
    records = read_jsonl(path)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n").rstrip(b"\r\n"))
    assert read_jsonl(path) == records


def test_catalogue_header_is_checked(raw_copy):
    path = raw_copy / "redial/movies_with_mentions.csv"
    path.write_text("id,name\r\n1,X (2000)\r\n")
    with pytest.raises(IngestError, match=r"movies_with_mentions.csv: line 1: header"):
        read_redial_movies(path, IngestLog())


def test_test_dialogue_inside_train_is_an_error(raw_copy):
    test_line = (raw_copy / "redial/test_data.jsonl").read_text().splitlines()[0]
    with open(raw_copy / "redial/partial_train_subset_irreel/valid_data.jsonl", "a") as fh:
        fh.write(test_line + "\n")
    movies = read_redial_movies(raw_copy / "redial/movies_with_mentions.csv", IngestLog())
    with pytest.raises(IngestError, match="conversationId 20001 is also in train file"):
        read_redial([raw_copy / "redial/partial_train_subset_irreel/valid_data.jsonl"], raw_copy / "redial/test_data.jsonl",
                    movies, IngestLog(), 0.1, 0)
