"""What every dataset reader shares: the dialogue model, the ingest log, splits and instance building.

A dataset differs by its reader only; everything downstream of a list of ``Dialogue`` is common.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.data import schemas
from pipeline.errors import DataError

_WS = re.compile(r"\s+")
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?: film)?\)\s*$")


class IngestError(DataError):
    """Raw input that cannot be read: the message names the file, the line or record, and what was expected."""


def check_text(value, file: str | Path, where: str, what: str, max_chars: int) -> str:
    """``value`` as an utterance text: a string of at most ``max_chars`` characters, else an error naming where."""
    if not isinstance(value, str):
        shown = "null" if value is None else f"a JSON {type(value).__name__}"
        raise IngestError(f"{file}: {where}: {what} is {shown}; expected a string")
    if len(value) > max_chars:
        raise IngestError(f"{file}: {where}: {what} has {len(value):,} characters; expected at most {max_chars:,} "
                          "(data.max_utterance_chars)")
    return value


def check_record_size(line: str, file: str | Path, number: int, max_chars: int) -> None:
    if len(line) > max_chars:
        raise IngestError(f"{file}: line {number}: {len(line):,} characters; expected a record of at most {max_chars:,} "
                          "(data.max_record_chars)")


def check_object(value, file: str | Path, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        shown = "null" if value is None else f"a JSON {type(value).__name__}"
        raise IngestError(f"{file}: {where}: {what} is {shown}; expected a JSON object")
    return value


def check_list_of(value, kind: type, file: str | Path, where: str, what: str) -> list:
    """``value`` as a list whose every element is a ``kind`` (bool is not an int here)."""
    for element in check_list(value, file, where, what):
        if not isinstance(element, kind) or isinstance(element, bool):
            shown = "null" if element is None else f"a JSON {type(element).__name__}"
            raise IngestError(f"{file}: {where}: {what} holds {shown}; expected a list of {kind.__name__}")
    return value


def check_list(value, file: str | Path, where: str, what: str) -> list:
    if not isinstance(value, list):
        shown = "null" if value is None else f"a JSON {type(value).__name__}"
        raise IngestError(f"{file}: {where}: {what} is {shown}; expected a list")
    return value


def normalize_space(text: str) -> str:
    return _WS.sub(" ", text).strip()


def split_title_year(name: str) -> tuple[str, int | None]:
    """'Police Academy  (1984)' -> ('Police Academy', 1984); a name without a year keeps year None."""
    name = normalize_space(name)
    match = _TITLE_YEAR.match(name)
    if not match:
        return name, None
    return match.group("title"), int(match.group("year"))


def display_title(title: str, year: int | None) -> str:
    return f"{title} ({year})" if year is not None else title


def hash_fraction(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from a key: splits that never depend on file order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:12], 16) / float(1 << 48)


@dataclass
class Utterance:
    speaker: str  # "seeker" | "recommender"
    text: str
    item_ids: list[str] = field(default_factory=list)


@dataclass
class Dialogue:
    dialogue_id: str
    split: str
    utterances: list[Utterance]
    source_file: str


@dataclass
class IngestLog:
    """Counts and every dropped or repaired record, with the reason: the ingest report's raw material."""

    issues: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    max_utterance_chars: int = 10_000  # data.max_utterance_chars: a longer utterance is an error naming its line
    max_record_chars: int = 1_000_000  # data.max_record_chars: a longer JSON line is an error (before parsing it)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def record(self, action: str, reason: str, file: str | Path, where: str, detail: str = "") -> None:
        """``action`` is 'dropped' or 'repaired'; ``where`` names the line or record."""
        self.count(f"{action}:{reason}")
        self.issues.append(
            {"action": action, "reason": reason, "file": str(file), "where": where, "detail": detail}
        )

    def summary(self) -> dict:
        by_reason: dict[str, int] = {}
        for issue in self.issues:
            key = f"{issue['action']}:{issue['reason']}"
            by_reason[key] = by_reason.get(key, 0) + 1
        return {"by_reason": dict(sorted(by_reason.items())), "records": self.issues}


def read_text(path: str | Path, what: str) -> str:
    """Read a whole raw file as UTF-8; empty files and wrong encodings are clear errors."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: file not found; expected {what}")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory; expected a file: {what}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IngestError(f"{path}: cannot be read ({err.strerror}); expected a readable file: {what}") from err
    if not data.strip():
        raise IngestError(f"{path}: file is empty; expected {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise IngestError(
            f"{path}: line {line}: byte {err.start} is not valid UTF-8 ({err.reason}); expected {what} in UTF-8"
        ) from err


def dialogues_frame(dialogues: list[Dialogue]) -> pd.DataFrame:
    rows = [
        {
            "dialogue_id": d.dialogue_id,
            "split": d.split,
            "turn_index": i,
            "speaker": u.speaker,
            "text": u.text,
            "item_ids": list(u.item_ids),
            "source_file": d.source_file,
        }
        for d in dialogues
        for i, u in enumerate(d.utterances)
    ]
    frame = pd.DataFrame(rows, columns=schemas.DIALOGUES.names)
    return schemas.validate(frame, schemas.DIALOGUES)


def recommender_runs(speakers: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) index pairs of maximal runs of recommender utterances (end exclusive): a "turn"."""
    runs = []
    i = 0
    while i < len(speakers):
        if speakers[i] == "recommender":
            j = i
            while j < len(speakers) and speakers[j] == "recommender":
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def build_rec_turns(dialogues: list[Dialogue], corpus: set[str]) -> pd.DataFrame:
    """One instance per recommender turn with a non-empty context and >= 1 corpus item.

    A turn is a maximal run of recommender utterances; its context is every earlier utterance; its
    gold items are the corpus items it mentions, in order of first mention; ``gold_seen_in_context``
    says whether each was mentioned earlier in the dialogue, by either speaker.
    """
    rows = []
    for dialogue in dialogues:
        utts = dialogue.utterances
        for start, end in recommender_runs([u.speaker for u in utts]):
            if start == 0:
                continue
            gold: list[str] = []
            for utt in utts[start:end]:
                for item in utt.item_ids:
                    if item in corpus and item not in gold:
                        gold.append(item)
            if not gold:
                continue
            seen = {item for utt in utts[:start] for item in utt.item_ids}
            rows.append(
                {
                    "instance_id": schemas.instance_id(dialogue.dialogue_id, start),
                    "dialogue_id": dialogue.dialogue_id,
                    "split": dialogue.split,
                    "context": [{"speaker": u.speaker, "text": u.text} for u in utts[:start]],
                    "response": "\n".join(u.text for u in utts[start:end]),
                    "gold_item_ids": gold,
                    "gold_seen_in_context": [item in seen for item in gold],
                }
            )
    frame = pd.DataFrame(rows, columns=schemas.REC_TURNS.names)
    return schemas.validate(frame, schemas.REC_TURNS)


def split_counts(dialogues: list[Dialogue], rec_turns: pd.DataFrame) -> dict:
    """Per split: dialogues, utterances, rec_turns (full and dedup) and gold items (full and dedup)."""
    out: dict[str, dict] = {}
    for split in schemas.SPLITS:
        ds = [d for d in dialogues if d.split == split]
        if not ds:
            continue
        turns = rec_turns[rec_turns["split"] == split]
        seen_lists = [list(s) for s in turns["gold_seen_in_context"]]
        out[split] = {
            "dialogues": len(ds),
            "utterances": sum(len(d.utterances) for d in ds),
            "rec_turns_full": int(len(turns)),
            "rec_turns_dedup": int(sum(1 for s in seen_lists if not all(s))),
            "gold_items_full": int(sum(len(s) for s in seen_lists)),
            "gold_items_dedup": int(sum(s.count(False) for s in seen_lists)),
        }
    return out
