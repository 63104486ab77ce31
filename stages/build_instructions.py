"""DVC stage `build_instructions`: interim tables -> data/instructions/{task}_{split}.parquet + report.json.

    python -m stages.build_instructions
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from pipeline import schemas
from pipeline.instructions import ContextLimits, build_conv2conv, build_conv2item, build_dm, build_response, build_turns, cap
from pipeline.io import atomic_dir, write_json
from stages._common import ROOT, load_params, setup_logging

log = logging.getLogger("stages.build_instructions")
REC_DATASETS = ("redial", "inspired")


def main() -> None:
    setup_logging()
    os.chdir(ROOT)
    params = load_params()
    p = params["instructions"]
    seed = params["seed"]
    limits = ContextLimits(p["context_max_utterances"], p["context_max_chars"])
    tables: dict[str, list[pd.DataFrame]] = {}
    report: dict = {"caps": p, "counts": {}}

    def add(task: str, split: str, dataset: str, frame: pd.DataFrame, before: int) -> None:
        tables.setdefault(f"{task}_{split}", []).append(frame)
        counts = report["counts"].setdefault(f"{task}_{split}", {})
        counts[dataset] = {"before_cap": int(before), "kept": int(len(frame))}

    for dataset in REC_DATASETS:
        base = f"data/interim/{dataset}"
        items = schemas.read_table(f"{base}/items.parquet", schemas.ITEMS)
        dialogues = schemas.read_table(f"{base}/dialogues.parquet", schemas.DIALOGUES)
        rec_turns = schemas.read_table(f"{base}/rec_turns.parquet", schemas.REC_TURNS)
        turns = build_turns(dataset, rec_turns, limits)
        train_all = turns[turns.split == "train"]
        train = cap(train_all, p["max_train_turns"][dataset], seed)
        responses = build_response(dataset, dialogues, items, limits)
        for split in schemas.SPLITS:
            split_turns = train if split == "train" else turns[turns.split == split].reset_index(drop=True)
            before = len(train_all) if split == "train" else len(split_turns)
            add("turns", split, dataset, split_turns, before)
            pairs = build_conv2item(split_turns, items)
            add("conv2item", split, dataset, pairs, len(pairs))
            conv, lonely = build_conv2conv(split_turns, train_all, seed)
            add("conv2conv", split, dataset, conv, len(split_turns))
            report["counts"][f"conv2conv_{split}"][dataset]["without_partner"] = lonely
            split_resp = responses[responses.split == split]
            limit = p["max_response"] if split == "train" else None
            add("response", split, dataset, cap(split_resp, limit, seed), len(split_resp))
    iard_turns = schemas.read_table("data/interim/iard/iard_turns.parquet", schemas.IARD_TURNS)
    codes = schemas.read_table("data/interim/iard/iard_codes.parquet", schemas.IARD_CODES)
    dm = build_dm(iard_turns, codes, limits)
    for split in ("train", "test"):
        part = dm[dm.split == split]
        add("dm", split, "iard", cap(part, p["max_dm"] if split == "train" else None, seed), len(part))
    with atomic_dir(ROOT / "data/instructions") as tmp:
        for name, frames in sorted(tables.items()):
            frame = pd.concat(frames, ignore_index=True)
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "report.json", report)
    for name, counts in report["counts"].items():
        log.info("%s: %s", name, counts)


if __name__ == "__main__":
    main()
