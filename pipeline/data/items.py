"""Item corpora and their descriptions.

ReDial's catalogue is ``movies_with_mentions.csv`` (keyed by ReDial movie id); descriptions come from
iEvaLM-CRS's ``id2info.json`` (title, year, genres, director, cast, plot), falling back to the title.
INSPIRED has no metadata here, so its titles are joined to the same metadata by (title, year).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.data import schemas
from pipeline.data.common import (
    IngestError,
    IngestLog,
    display_title,
    read_text,
    split_title_year,
)


@dataclass(frozen=True)
class Movie:
    movie_id: str  # ReDial movie id
    title: str
    year: int | None


def item_titles(items: pd.DataFrame) -> dict[str, str]:
    """``item_id -> "Title (year)"`` (the title alone when the year is unknown), as prompts and the CLI show items."""
    return {r.item_id: display_title(r.title, int(r.year) if pd.notna(r.year) else None) for r in items.itertuples()}


def read_redial_movies(path: str | Path, log: IngestLog) -> dict[str, Movie]:
    """Parse ``movies_with_mentions.csv`` (CRLF, header movieId,movieName,nbMentions)."""
    text = read_text(path, "ReDial movies CSV with columns movieId,movieName,nbMentions")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    expected = ["movieId", "movieName"]
    if header[:2] != expected:
        raise IngestError(f"{path}: line 1: header {header}; expected it to start with {expected}")
    movies: dict[str, Movie] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip().isdigit():
            raise IngestError(f"{path}: line {line}: {row!r}; expected movieId (digits),movieName,...")
        title, year = split_title_year(row[1])
        if year is None:
            log.count("redial_movies_without_year")
        movies[row[0].strip()] = Movie(row[0].strip(), title, year)
    return movies


LIST_FIELDS = ("genre", "director", "star")


def read_id2info(path: str | Path, log: IngestLog | None = None) -> dict[str, dict]:
    """ReDial movie id -> its metadata fields (``genre``/``director``/``star``: lists of strings, ``plot``: a
    string), checked per record. Policy: an entry that is not an object is an error naming it; a list field given
    as one string becomes a one-element list, a field of another type is left out (both counted and reported); an
    entry left with no field is left out (counted), so its item is described by its title and says so."""
    log = log if log is not None else IngestLog()
    text = read_text(path, "a JSON object mapping ReDial movie ids to metadata")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(f"{path}: line {err.lineno}: invalid JSON ({err.msg}); expected one JSON object") from err
    if not isinstance(data, dict):
        raise IngestError(f"{path}: top level is {type(data).__name__}; expected a JSON object")
    out = {}
    for key, info in data.items():
        where = f"record {key!r}"
        if not isinstance(info, dict):
            shown = "null" if info is None else f"a JSON {type(info).__name__}"
            raise IngestError(f"{path}: {where}: {shown}; expected an object with genre, director, star, plot")
        fields: dict = {}
        for name in LIST_FIELDS:
            value = info.get(name)
            if value in (None, "", []):
                continue
            if isinstance(value, str):
                log.record("repaired", "metadata_field_not_a_list", path, where, f"{name}: one string read as a one-element list")
                value = [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                fields[name] = value
            else:
                log.record("repaired", "metadata_field_wrong_type", path, where, f"{name}: {type(value).__name__} left out")
        plot = info.get("plot")
        if isinstance(plot, str) and plot:
            fields["plot"] = plot
        elif plot not in (None, ""):
            log.record("repaired", "metadata_field_wrong_type", path, where, f"plot: {type(plot).__name__} left out")
        if any(fields.values()):
            out[key] = fields
        else:
            log.count("id2info_entries_without_fields")
    return out


def describe(title: str, year: int | None, info: dict | None) -> str:
    """The retrieval text of an item: 'Title (Year). Genres: ... Director: ... Cast: ... Plot: ...'."""
    parts = [display_title(title, year) + "."]
    if info:
        if info.get("genre"):
            parts.append("Genres: " + ", ".join(info["genre"]) + ".")
        if info.get("director"):
            parts.append("Director: " + ", ".join(info["director"]) + ".")
        if info.get("star"):
            parts.append("Cast: " + ", ".join(info["star"]) + ".")
        if info.get("plot"):
            parts.append("Plot: " + " ".join(str(info["plot"]).split()))
    return " ".join(parts)


def redial_items(movies: dict[str, Movie], id2info: dict[str, dict], log: IngestLog) -> pd.DataFrame:
    rows = []
    for movie_id, movie in movies.items():
        info = id2info.get(movie_id)
        source = "id2info.json" if info else "title_only"
        log.count(f"items_description_from:{source}")
        rows.append(
            {
                "item_id": f"redial:{movie_id}",
                "title": movie.title,
                "year": movie.year,
                "description": describe(movie.title, movie.year, info),
                "metadata_source": source,
            }
        )
    frame = pd.DataFrame(rows, columns=schemas.ITEMS.names)
    frame["year"] = frame["year"].astype("Int64")
    return schemas.validate(frame, schemas.ITEMS)


def metadata_by_title_year(movies: dict[str, Movie], id2info: dict[str, dict]) -> dict[tuple[str, int], dict]:
    """(lower-cased title, year) -> metadata, for datasets keyed by title and year (INSPIRED).

    Ambiguous keys (two ReDial ids with the same title and year) are left out rather than guessed.
    """
    index: dict[tuple[str, int], dict | None] = {}
    for movie_id, movie in movies.items():
        if movie.year is None or movie_id not in id2info:
            continue
        key = (movie.title.lower(), movie.year)
        index[key] = None if key in index else id2info[movie_id]
    return {k: v for k, v in index.items() if v is not None}
