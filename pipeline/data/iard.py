"""IARD reader (Cai & Chen, UMAP 2020): ReDial dialogues annotated with user intents and recommender actions.

One JSON object keyed by ReDial ``conversationId``; each utterance carries its role, text (mentions as
``@id <Title (Year)>``), top-level and sub intent/action codes; ``accepted_recommendation`` lists the
positions of accepted recommendations.

The file spells three recommender codes differently from the README taxonomy (SOURCES.md):
README ``CLA`` = file ``CLQ``, ``RES`` = ``RESP``, recommender ``ANS`` = ``R-ANS``. Code descriptions are
parsed from the README's tables and keyed by the file's spelling.

Tables: ``dialogues`` (utterances), ``iard_turns`` (one row per recommender utterance with a non-empty
context: the intents of the most recent run of seeker utterances, the actions of
this one, and ``accepted``: whether the seeker's next run of utterances accepts a recommendation) and ``iard_codes``.
Split: a deterministic ``heldout_fraction`` of dialogues (id hash) is ``test`` (for dialogue-management
evaluation); the rest is ``train``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from pipeline.data import schemas
from pipeline.data.common import (
    Dialogue,
    IngestError,
    IngestLog,
    Utterance,
    check_list_of,
    check_object,
    check_text,
    display_title,
    hash_fraction,
    normalize_space,
    read_text,
    split_title_year,
)
from pipeline.data.items import Movie

MENTION = re.compile(r"@(\d+)\s*(?:<([^<>]*)>)?")
README_TO_FILE = {("recommender", "CLA"): "CLQ", ("recommender", "RES"): "RESP", ("recommender", "ANS"): "R-ANS"}
_ROW = re.compile(r"^\|\s*(?P<name>[^|(]+?)\s*\((?P<code>[A-Z-]+)\)\s*\|\s*(?P<desc>[^|]*?)\s*\|")
_TOP = re.compile(r"^\|\s*\*\*(?P<top>[^*]+)\*\*\s*\|")
UTTERANCE_KEYS = ("utterance_pos", "role", "utterance_text", "top-level intent/action", "sub-intent/action")


def read_codes(readme: Path) -> pd.DataFrame:
    """The two taxonomy tables of the IARD README -> (role, code as in the file, README code, name, top level, description)."""
    text = read_text(readme, "the IARD README with its taxonomy tables")
    rows = []
    role = None
    top = ""
    for line in text.splitlines():
        if "Taxonomy for user intents" in line and "Table" in line:
            role = "seeker"
        elif "Taxonomy for recommender actions" in line and "Table" in line:
            role = "recommender"
        if role is None or not line.startswith("|"):
            continue
        if (match := _TOP.match(line)):
            top = match.group("top").strip()
            if top == "Others":
                description = line.split("|")[2].strip().rstrip(".")
                rows.append({"role": role, "code": "OTH", "readme_code": "OTH", "name": "Others", "top_level": "Others", "description": description})
            continue
        if (match := _ROW.match(line)):
            code = match.group("code")
            rows.append({
                "role": role,
                "code": README_TO_FILE.get((role, code), code),
                "readme_code": code,
                "name": match.group("name").strip(),
                "top_level": top,
                "description": match.group("desc").strip().rstrip("."),
            })
    frame = pd.DataFrame(rows, columns=schemas.IARD_CODES.names)
    if frame.empty:
        raise IngestError(f"{readme}: no taxonomy table rows found; expected the README's Tables 2 and 3")
    return schemas.validate(frame, schemas.IARD_CODES)


def render(text: str, movies: dict[str, Movie], log: IngestLog, file: str, where: str) -> tuple[str, list[str]]:
    items: list[str] = []

    def substitute(match: re.Match) -> str:
        movie_id, name = match.group(1), match.group(2)
        movie = movies.get(movie_id)
        if movie is not None:
            if f"redial:{movie_id}" not in items:
                items.append(f"redial:{movie_id}")
            return display_title(movie.title, movie.year)
        log.record("repaired", "mention_not_in_catalogue", file, where, f"@{movie_id}")
        return display_title(*split_title_year(name)) if name else match.group(0)

    return normalize_space(MENTION.sub(substitute, text)), items


def _accepted_after(infos: list[dict], accepted: set[int]) -> dict[int, bool]:
    """Per utterance position: does the next run of seeker utterances accept a recommendation?

    ``accepted_recommendation`` lists the positions of the *seeker* utterances that accept.
    """
    out = {}
    for i, info in enumerate(infos):
        j = i + 1
        while j < len(infos) and infos[j]["role"] != "seeker":
            j += 1
        hit = False
        while j < len(infos) and infos[j]["role"] == "seeker":
            hit = hit or infos[j]["utterance_pos"] in accepted
            j += 1
        out[info["utterance_pos"]] = hit
    return out


def read_iard(path: Path, movies: dict[str, Movie], log: IngestLog, heldout_fraction: float, seed: int) -> tuple[list[Dialogue], pd.DataFrame]:
    text = read_text(path, "the IARD JSON object keyed by conversationId")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(f"{path}: line {err.lineno}: invalid JSON ({err.msg}); expected one JSON object") from err
    if not isinstance(data, dict):
        raise IngestError(f"{path}: top level is a JSON {type(data).__name__}; expected an object keyed by conversationId")
    dialogues, turns = [], []
    for conv, record in data.items():
        check_object(record, path, f"conversationId {conv}", "the conversation")
        if "dialogue_info" not in record:
            raise IngestError(f"{path}: conversationId {conv}: key 'dialogue_info' missing; expected dialogue_info, accepted_recommendation")
        split = "test" if hash_fraction(conv, seed) < heldout_fraction else "train"
        accepted_list = record.get("accepted_recommendation") or []
        accepted = set(check_list_of(accepted_list, int, path, f"conversationId {conv}", "'accepted_recommendation'"))
        infos = []
        for key, info in check_object(record["dialogue_info"], path, f"conversationId {conv}", "'dialogue_info'").items():
            where = f"conversationId {conv}, utterance {key}"
            check_object(info, path, where, "the utterance")
            for field in UTTERANCE_KEYS:
                if field not in info:
                    raise IngestError(f"{path}: {where}: key {field!r} missing; expected {list(UTTERANCE_KEYS)}")
            check_text(info["utterance_text"], path, where, "'utterance_text'", log.max_utterance_chars)
            for field in ("sub-intent/action", "top-level intent/action"):
                check_list_of(info[field], str, path, where, repr(field))
            if not isinstance(info["utterance_pos"], int) or isinstance(info["utterance_pos"], bool):
                raise IngestError(f"{path}: {where}: 'utterance_pos' is {info['utterance_pos']!r}; expected an integer")
            infos.append(info)
        infos.sort(key=lambda info: info["utterance_pos"])
        accepted_after = _accepted_after(infos, accepted)
        utterances: list[Utterance] = []
        pending_intents: list[str] = []
        pending_top: list[str] = []
        last_role = None
        for info in infos:
            where = f"conversationId {conv}, utterance_pos {info['utterance_pos']}"
            role = info["role"]
            if role not in schemas.SPEAKERS:
                log.record("dropped", "unknown_role", path, where, repr(role))
                continue
            text_, items = render(info["utterance_text"], movies, log, str(path), where)
            if role == "seeker":
                if last_role == "recommender":
                    pending_intents, pending_top = [], []
                pending_intents += [c for c in info["sub-intent/action"] if c not in pending_intents]
                pending_top += [c for c in info["top-level intent/action"] if c not in pending_top]
            elif utterances:
                turns.append({
                    "instance_id": schemas.instance_id(f"iard:{conv}", len(utterances)),
                    "dialogue_id": f"iard:{conv}",
                    "split": split,
                    "context": [{"speaker": u.speaker, "text": u.text} for u in utterances],
                    "response": text_,
                    "user_intents": list(pending_intents),
                    "user_intents_top": list(pending_top),
                    "system_actions": list(info["sub-intent/action"]),
                    "system_actions_top": list(info["top-level intent/action"]),
                    "accepted": accepted_after[info["utterance_pos"]],
                })
            last_role = role
            utterances.append(Utterance(role, text_, items))
        dialogues.append(Dialogue(f"iard:{conv}", split, utterances, path.name))
    frame = pd.DataFrame(turns, columns=schemas.IARD_TURNS.names)
    return dialogues, schemas.validate(frame, schemas.IARD_TURNS)
