"""DVC stage `build_instructions`: interim tables -> data/instructions/{task}_{split}.parquet + report.json.

    python -m stages.build_instructions
"""

from __future__ import annotations

import logging

from pipeline.data import schemas
from pipeline.io import atomic_dir, write_json
from pipeline.tasks.instructions import ContextLimits, InstructionCaps, build_instruction_tables
from stages.common import ROOT, load_params, setup_logging, user_errors

log = logging.getLogger("stages.build_instructions")
REC_DATASETS = ("redial", "inspired")


def main() -> None:
    setup_logging()
    params = load_params("build_instructions")
    p = params["instructions"]
    interim = ROOT / "data/interim"
    rec_data = {d: tuple(schemas.read_table(interim / d / f"{name}.parquet", table)
                         for name, table in (("items", schemas.ITEMS), ("dialogues", schemas.DIALOGUES), ("rec_turns", schemas.REC_TURNS)))
                for d in REC_DATASETS}
    tables, counts = build_instruction_tables(
        rec_data, schemas.read_table(interim / "iard/iard_turns.parquet", schemas.IARD_TURNS),
        schemas.read_table(interim / "iard/iard_codes.parquet", schemas.IARD_CODES),
        ContextLimits(max_utterances=p["context_max_utterances"], max_chars=p["context_max_chars"]),
        InstructionCaps(max_train_turns=p["max_train_turns"], max_response=p["max_response"], max_dm=p["max_dm"],
                        seed=params["seed"]))
    with atomic_dir(ROOT / "data/instructions") as tmp:
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "report.json", {"caps": p, "counts": counts})
    for name, task_counts in counts.items():
        log.info("%s: %s", name, task_counts)


if __name__ == "__main__":
    with user_errors():
        main()
