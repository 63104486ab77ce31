"""INSPIRED reader (Hayati et al., EMNLP 2020).

Two formats:
- the official TSV (``dialog_data/{train,dev,test}.tsv``): one row per utterance, 19 columns, read with
  quoting off (quotes inside utterances are raw ``"`` or the token ``QUOTATION_MARK``, which becomes ``"``);
- the UniCRS-processed JSON lines (``unicrs_format_*/train_data_dbpedia.jsonl``): one dialogue per line,
  a list of turns ``{text, role, movie: ["Title (Year)", ...]}`` — the only copy of train on the mirror.
  Used for a split only when its TSV is absent.

Items are keyed ``inspired:<Title> (<Year>)``; a mention without a year is never a key:
it is dropped from the item ids, counted and reported. Descriptions: ``movie_database.tsv`` when present,
else ReDial metadata joined by (title, year), else the title alone; the report counts each case.
Splits: train, dev (-> valid), test, as released.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from pipeline.data import schemas
from pipeline.data.common import (
    Dialogue,
    IngestError,
    IngestLog,
    Utterance,
    check_list,
    check_object,
    check_record_size,
    check_text,
    display_title,
    normalize_space,
    read_text,
    split_title_year,
)
from pipeline.data.items import describe

TSV_COLUMNS = ("dialog_id", "utt_id", "speaker", "text", "movies")
SPEAKER = {"SEEKER": "seeker", "RECOMMENDER": "recommender"}


def item_id(title: str, year: int) -> str:
    return f"inspired:{display_title(title, year)}"


def parse_mentions(titles: list[str], log: IngestLog, file: str, where: str, catalogue: dict[str, tuple[str, int]]) -> list[str]:
    items = []
    for raw in titles:
        raw = normalize_space(raw)
        if not raw:
            continue
        title, year = split_title_year(raw)
        if year is None:
            log.record("dropped", "mention_without_year", file, where, repr(raw))
            continue
        key = item_id(title, year)
        catalogue.setdefault(key, (title, year))
        if key not in items:
            items.append(key)
    return items


def read_tsv(path: Path, split: str, log: IngestLog, catalogue: dict) -> list[Dialogue]:
    text = read_text(path, "INSPIRED dialogue TSV with a header row")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    missing = [c for c in TSV_COLUMNS if c not in header]
    if missing:
        raise IngestError(f"{path}: line 1: column(s) {missing} missing; expected a header with {list(TSV_COLUMNS)}")
    col = {name: header.index(name) for name in TSV_COLUMNS}
    dialogues: dict[str, Dialogue] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise IngestError(f"{path}: line {number}: {len(row)} fields; expected {len(header)} (tab-separated, no quoting)")
        speaker = SPEAKER.get(row[col["speaker"]].strip().upper())
        where = f"line {number}, dialog_id {row[col['dialog_id']]}"
        if speaker is None:
            log.record("dropped", "unknown_speaker", path, where, repr(row[col["speaker"]]))
            continue
        dialog_id = row[col["dialog_id"]]
        raw_text = check_text(row[col["text"]], path, where, "the text field", log.max_utterance_chars)
        utterance_text = normalize_space(raw_text.replace("QUOTATION_MARK", '"'))
        items = parse_mentions(row[col["movies"]].split(";"), log, str(path), where, catalogue)
        dialogue = dialogues.setdefault(dialog_id, Dialogue(f"inspired:{dialog_id}", split, [], path.name))
        dialogue.utterances.append(Utterance(speaker, utterance_text, items))
    return list(dialogues.values())


def read_unicrs(path: Path, split: str, log: IngestLog, catalogue: dict) -> list[Dialogue]:
    text = read_text(path, "JSON lines, one INSPIRED dialogue (a list of turns) per line")
    dialogues = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        check_record_size(line, path, number, log.max_record_chars)
        try:
            turns = json.loads(line)
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}: line {number}: invalid JSON at column {err.colno} ({err.msg}); expected a JSON list of turns") from err
        if not isinstance(turns, list):
            raise IngestError(f"{path}: line {number}: a JSON {type(turns).__name__}; expected a list of turns")
        utterances = []
        for index, turn in enumerate(turns):
            where = f"line {number}, turn {index}"
            check_object(turn, path, where, "the turn")
            for key in ("text", "role", "movie"):
                if key not in turn:
                    raise IngestError(f"{path}: {where}: key {key!r} missing; expected keys text, role, movie")
            speaker = SPEAKER.get(str(turn["role"]).upper())
            if speaker is None:
                log.record("dropped", "unknown_speaker", path, where, repr(turn["role"]))
                continue
            movies = [] if turn["movie"] is None else check_list(turn["movie"], path, where, "'movie'")
            items = parse_mentions([str(m) for m in movies], log, str(path), where, catalogue)
            text = check_text(turn["text"], path, where, "'text'", log.max_utterance_chars)
            utterances.append(Utterance(speaker, normalize_space(text), items))
        # UniCRS drops the dialogue ids: the line number (stable for a pinned file) stands in.
        dialogues.append(Dialogue(f"inspired:{split}-{number:04d}", split, utterances, path.name))
    return dialogues


def read_movie_database(path: Path) -> dict[tuple[str, int], str]:
    """(lower-cased title, year) -> description, from the official ``movie_database.tsv``."""
    text = read_text(path, "INSPIRED movie database TSV with a header row")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip().lower() for h in rows[0]]
    if "title" not in header:
        raise IngestError(f"{path}: line 1: no 'title' column; expected the INSPIRED movie database header")
    out = {}
    for row in rows[1:]:
        record = dict(zip(header, row))
        title, year = split_title_year(record.get("title", ""))
        if year is None and str(record.get("year", "")).strip().isdigit():
            year = int(record["year"])
        if year is None:
            continue
        fields = [f"{k.capitalize()}: {normalize_space(v)}." for k, v in record.items()
                  if k in ("genre", "director", "actors", "plot", "short_plot") and v.strip()]
        out[(title.lower(), year)] = " ".join([display_title(title, year) + "."] + fields)
    return out


def inspired_items(catalogue: dict, movie_db: dict | None, redial_meta: dict, log: IngestLog) -> pd.DataFrame:
    rows = []
    for key in sorted(catalogue):
        title, year = catalogue[key]
        lookup = (title.lower(), year)
        if movie_db and lookup in movie_db:
            description, source = movie_db[lookup], "movie_database.tsv"
        elif lookup in redial_meta:
            description, source = describe(title, year, redial_meta[lookup]), "id2info.json:title_year"
        else:
            description, source = describe(title, year, None), "title_only"
        log.count(f"items_description_from:{source}")
        rows.append({"item_id": key, "title": title, "year": year, "description": description, "metadata_source": source})
    frame = pd.DataFrame(rows, columns=schemas.ITEMS.names)
    frame["year"] = frame["year"].astype("Int64")
    return schemas.validate(frame, schemas.ITEMS)
