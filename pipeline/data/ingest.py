"""Ingest: raw files of one dataset -> validated parquet tables + an ingest report.

``ingest(dataset, raw_dir, ...)`` returns an ``IngestResult``; ``write_ingest`` writes every table and the
report atomically into one output folder (all or nothing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.data import iard as iard_reader
from pipeline.data import inspired as inspired_reader
from pipeline.data import redial as redial_reader
from pipeline.data.common import (
    IngestError,
    IngestLog,
    build_rec_turns,
    dialogues_frame,
    split_counts,
)
from pipeline.data.items import (
    metadata_by_title_year,
    read_id2info,
    read_redial_movies,
    redial_items,
)
from pipeline.errors import ParamError
from pipeline.io import atomic_dir, write_json

log = logging.getLogger(__name__)
DATASETS = ("redial", "inspired", "iard")


@dataclass
class IngestResult:
    tables: dict[str, pd.DataFrame]
    report: dict


def _redial_catalogue(raw: Path, ilog: IngestLog):
    movies = read_redial_movies(raw / "redial/movies_with_mentions.csv", ilog)
    id2info = read_id2info(raw / "ievalm_crs/redial/id2info.json", ilog)
    return movies, id2info


def redial_train_files(raw: Path) -> list[Path]:
    """The official train file if present, then every partial train subset, in a fixed order."""
    files = []
    if (raw / "redial/train_data.jsonl").exists():
        files.append(raw / "redial/train_data.jsonl")
    files += sorted((raw / "redial").glob("partial_train_subset_*/*.jsonl"))
    if not files:
        raise IngestError(f"{raw / 'redial'}: no ReDial train file (train_data.jsonl or partial_train_subset_*/)")
    return files


def ingest_redial(raw: Path, valid_fraction: float, seed: int, ilog: IngestLog | None = None) -> IngestResult:
    ilog = ilog if ilog is not None else IngestLog()
    movies, id2info = _redial_catalogue(raw, ilog)
    items = redial_items(movies, id2info, ilog)
    dialogues, provenance = redial_reader.read_redial(
        redial_train_files(raw), raw / "redial/test_data.jsonl", movies, ilog, valid_fraction, seed
    )
    skipped = sorted(str(p) for p in (raw / "redial").glob("derived_*/*.jsonl"))
    rec_turns = build_rec_turns(dialogues, set(items["item_id"]))
    report = {
        "dataset": "redial",
        "items": int(len(items)),
        "splits": split_counts(dialogues, rec_turns),
        "train_sources": provenance,
        "skipped_files": {p: "derived schema (turns merged, ids dropped): not read" for p in skipped},
    }
    return IngestResult({"items": items, "dialogues": dialogues_frame(dialogues), "rec_turns": rec_turns}, _finish(report, ilog))


def ingest_inspired(raw: Path, seed: int, ilog: IngestLog | None = None) -> IngestResult:
    ilog = ilog if ilog is not None else IngestLog()
    catalogue: dict = {}
    dialogues = []
    sources = {}
    base = raw / "inspired"
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        tsv = base / f"dialog_data/{name}.tsv"
        unicrs = base / f"unicrs_format_tamizh2907/{ 'valid' if name == 'dev' else name}_data_dbpedia.jsonl"
        if tsv.exists():
            dialogues += inspired_reader.read_tsv(tsv, split, ilog, catalogue)
            sources[split] = str(tsv)
        elif unicrs.exists():
            dialogues += inspired_reader.read_unicrs(unicrs, split, ilog, catalogue)
            sources[split] = str(unicrs)
        else:
            raise IngestError(f"{tsv}: INSPIRED {split} split missing (nor {unicrs})")
    movie_db_path = base / "movie_database.tsv"
    movie_db = inspired_reader.read_movie_database(movie_db_path) if movie_db_path.exists() else None
    movies, id2info = _redial_catalogue(raw, IngestLog())
    items = inspired_reader.inspired_items(catalogue, movie_db, metadata_by_title_year(movies, id2info), ilog)
    rec_turns = build_rec_turns(dialogues, set(items["item_id"]))
    report = {
        "dataset": "inspired",
        "items": int(len(items)),
        "splits": split_counts(dialogues, rec_turns),
        "split_sources": sources,
        "movie_database": str(movie_db_path) if movie_db is not None else "absent",
    }
    return IngestResult({"items": items, "dialogues": dialogues_frame(dialogues), "rec_turns": rec_turns}, _finish(report, ilog))


def ingest_iard(raw: Path, heldout_fraction: float, seed: int, ilog: IngestLog | None = None) -> IngestResult:
    ilog = ilog if ilog is not None else IngestLog()
    movies = read_redial_movies(raw / "redial/movies_with_mentions.csv", IngestLog())
    dialogues, turns = iard_reader.read_iard(raw / "iard/umap2020_IARD_Cai.json", movies, ilog, heldout_fraction, seed)
    codes = iard_reader.read_codes(raw / "iard/README.md")
    file_codes = {(r, c) for r, c in zip(codes["role"], codes["code"])}
    for _, row in turns.iterrows():
        for code in list(row["system_actions"]):
            if ("recommender", code) not in file_codes:
                ilog.record("repaired", "action_code_without_description", "iard/umap2020_IARD_Cai.json", row["instance_id"], code)
    counts = {}
    for split in ("train", "test"):
        ds = [d for d in dialogues if d.split == split]
        t = turns[turns["split"] == split]
        counts[split] = {"dialogues": len(ds), "utterances": sum(len(d.utterances) for d in ds), "annotated_turns": int(len(t)),
                         "accepted_turns": int(t["accepted"].sum())}
    report = {"dataset": "iard", "splits": counts, "codes": int(len(codes))}
    return IngestResult({"dialogues": dialogues_frame(dialogues), "iard_turns": turns, "iard_codes": codes}, _finish(report, ilog))


def _finish(report: dict, ilog: IngestLog) -> dict:
    report["counts"] = dict(sorted(ilog.counts.items()))
    report["issues"] = ilog.summary()
    return report


def ingest(dataset: str, raw_dir: str | Path, *, seed: int = 0, redial_valid_fraction: float = 0.1,
           iard_heldout_fraction: float = 0.15, max_utterance_chars: int = IngestLog.max_utterance_chars,
           max_record_chars: int = IngestLog.max_record_chars) -> IngestResult:
    raw = Path(raw_dir)
    start = time.perf_counter()
    ilog = IngestLog(max_utterance_chars=max_utterance_chars, max_record_chars=max_record_chars)
    if dataset == "redial":
        result = ingest_redial(raw, redial_valid_fraction, seed, ilog)
    elif dataset == "inspired":
        result = ingest_inspired(raw, seed, ilog)
    elif dataset == "iard":
        result = ingest_iard(raw, iard_heldout_fraction, seed, ilog)
    else:
        raise ParamError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    log.info("ingested %s in %.1f s", dataset, time.perf_counter() - start)
    return result


def write_ingest(result: IngestResult, out_dir: str | Path) -> None:
    """All tables + ``ingest_report.json`` into ``out_dir``, replaced as a whole."""
    with atomic_dir(out_dir) as tmp:
        for name, frame in result.tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "ingest_report.json", result.report)

