"""ReDial reader (Li et al., NeurIPS 2018): JSON lines, one dialogue per line.

- Train: every train-split file present (the official ``train_data.jsonl`` and/or the partial subsets
  a mirror holds), de-duplicated by ``conversationId``; the report says how many came from where.
- Test: the official ``test_data.jsonl``. Valid: a deterministic 10% of train dialogues (id hash).
- Speaker roles from ``senderWorkerId`` against ``initiatorWorkerId`` (seeker) and
  ``respondentWorkerId`` (recommender), never from position.
- ``@movieId`` mentions are rendered "Title (Year)" and kept as item ids ``redial:<movieId>``.

Bad-input policy (each case is tested):
- not UTF-8, empty file, a line that is not a JSON object, a record without a required key, ``messages``
  that is not a list, a message that is not an object, a ``text`` that is not a string or longer than
  ``data.max_utterance_chars``, a line longer than ``data.max_record_chars``: error naming the file and line;
- ``movieMentions`` that is not an object: ignored, counted and reported;
- a message whose sender is neither worker: dropped, counted and reported;
- a mention of a movie id outside the catalogue: rendered from the dialogue's ``movieMentions`` when it
  names it (else left as ``@id``), not kept as an item id; counted and reported;
- the same ``conversationId`` in several files: the first copy is kept; differing copies are reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    hash_fraction,
    read_text,
    split_title_year,
)
from pipeline.data.items import Movie

MENTION = re.compile(r"@(\d+)")
REQUIRED_KEYS = ("conversationId", "messages", "initiatorWorkerId", "respondentWorkerId", "movieMentions")
MESSAGE_KEYS = ("senderWorkerId", "text")


def read_jsonl(path: str | Path, max_record_chars: int = IngestLog.max_record_chars) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; a bad line is an error naming file and line."""
    text = read_text(path, "JSON lines, one ReDial dialogue object per line")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        check_record_size(line, path, number, max_record_chars)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise IngestError(
                f"{path}: line {number}: invalid JSON at column {err.colno} ({err.msg}); "
                "expected one complete JSON object per line (truncated file?)"
            ) from err
        if not isinstance(record, dict):
            raise IngestError(f"{path}: line {number}: a JSON {type(record).__name__}; expected a JSON object")
        for key in REQUIRED_KEYS:
            if key not in record:
                raise IngestError(f"{path}: line {number}: key {key!r} missing; expected keys {list(REQUIRED_KEYS)}")
        records.append((number, record))
    return records


def render(text: str, mentions: dict, movies: dict[str, Movie], log: IngestLog, file: str, where: str) -> tuple[str, list[str]]:
    """Replace ``@id`` by 'Title (Year)'; return the text and the corpus item ids it mentions, in order."""
    items: list[str] = []

    def substitute(match: re.Match) -> str:
        movie_id = match.group(1)
        movie = movies.get(movie_id)
        if movie is not None:
            item = f"redial:{movie_id}"
            if item not in items:
                items.append(item)
            return display_title(movie.title, movie.year)
        name = mentions.get(movie_id) if isinstance(mentions, dict) else None
        log.record("repaired", "mention_not_in_catalogue", file, where,
                   f"@{movie_id} " + ("rendered from movieMentions" if name else "left as is"))
        return display_title(*split_title_year(name)) if name else match.group(0)

    return MENTION.sub(substitute, text), items


def parse_dialogue(record: dict, split: str, movies: dict[str, Movie], log: IngestLog, file: str, line: int) -> Dialogue:
    conv = str(record["conversationId"])
    seeker, recommender = record["initiatorWorkerId"], record["respondentWorkerId"]
    mentions = record.get("movieMentions") or {}
    if not isinstance(mentions, dict):
        log.record("repaired", "movie_mentions_not_an_object", file, f"line {line}, conversationId {conv}",
                   f"a JSON {type(mentions).__name__}: ignored (mentions outside the catalogue stay @id)")
        mentions = {}
    utterances = []
    for index, message in enumerate(check_list(record["messages"], file, f"line {line}, conversationId {conv}", "'messages'")):
        where = f"line {line}, conversationId {conv}, message {index}"
        check_object(message, file, where, "the message")
        for key in MESSAGE_KEYS:
            if key not in message:
                raise IngestError(f"{file}: {where}: key {key!r} missing; expected keys {list(MESSAGE_KEYS)}")
        sender = message["senderWorkerId"]
        if sender == seeker:
            speaker = "seeker"
        elif sender == recommender:
            speaker = "recommender"
        else:
            log.record("dropped", "sender_not_a_participant", file, where, f"senderWorkerId {sender}")
            continue
        raw_text = check_text(message["text"], file, where, "'text'", log.max_utterance_chars)
        text, items = render(raw_text, mentions, movies, log, file, where)
        utterances.append(Utterance(speaker, text, items))
    return Dialogue(f"redial:{conv}", split, utterances, Path(file).name)


def read_redial(
    train_files: list[Path],
    test_file: Path,
    movies: dict[str, Movie],
    log: IngestLog,
    valid_fraction: float,
    seed: int,
) -> tuple[list[Dialogue], dict]:
    """All ReDial dialogues with their split, and where the train dialogues came from."""
    dialogues: list[Dialogue] = []
    by_id: dict[str, tuple[str, dict]] = {}
    provenance = {}
    for path in train_files:
        records = read_jsonl(path, log.max_record_chars)
        new = duplicate = 0
        for line, record in records:
            conv = str(record["conversationId"])
            if conv in by_id:
                duplicate += 1
                if by_id[conv][1] != record:
                    log.record("dropped", "conflicting_duplicate", path, f"line {line}, conversationId {conv}",
                               f"differs from the copy in {by_id[conv][0]}; first copy kept")
                continue
            by_id[conv] = (str(path), record)
            new += 1
            split = "valid" if hash_fraction(conv, seed) < valid_fraction else "train"
            dialogues.append(parse_dialogue(record, split, movies, log, str(path), line))
        provenance[str(path)] = {"dialogues": len(records), "new": new, "duplicates": duplicate}
    test_ids = set()
    records = read_jsonl(test_file, log.max_record_chars)
    for line, record in records:
        conv = str(record["conversationId"])
        if conv in by_id:
            raise IngestError(f"{test_file}: line {line}: conversationId {conv} is also in train file {by_id[conv][0]}")
        if conv in test_ids:
            log.record("dropped", "duplicate_test_dialogue", test_file, f"line {line}, conversationId {conv}")
            continue
        test_ids.add(conv)
        dialogues.append(parse_dialogue(record, "test", movies, log, str(test_file), line))
    provenance[str(test_file)] = {"dialogues": len(records), "new": len(test_ids), "duplicates": len(records) - len(test_ids)}
    return dialogues, provenance
