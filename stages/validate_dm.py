"""DVC stage `validate_dm`: choose dialogue management's weight (``pipeline.dm_policy``) on validation dialogues.

    python -m stages.validate_dm

The fine-tuned model (models/reficr, merged) scores every frequent action sequence as the start of its output
on the validation turns (IARD training dialogues held out by a seeded hash; the test dialogues are not read), and
each weight of ``eval.dm_validation.weights`` is tried. Writes plots/dm_validation.csv (the sweep) and
metrics/dm_validation.json (the chosen weight, its validation accuracy and micro-F1 beside the majority action
set's), which ``evaluate`` reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import pandas as pd

from pipeline.dm_policy import DMValidation, fit_choices, validation_split, weight_sweep
from pipeline.io import atomic_path, write_json
from pipeline.recommender import dm_evidence
from stages._common import ROOT, load_params, setup_logging, user_errors
from stages._params import model_settings

log = logging.getLogger("stages.validate_dm")
SWEEP = "plots/dm_validation.csv"
CHOICE = "metrics/dm_validation.json"


def main() -> None:
    setup_logging()
    params = load_params()
    v = params["eval"]["dm_validation"]
    fit, valid = validation_split(pd.read_parquet(ROOT / "data/instructions/dm_train.parquet"), v["fraction"],
                                  v["max_turns"], params["seed"])
    choices, prior = fit_choices([list(a) for a in fit["actions"]])
    log.info("dialogue-management validation: %d turns of %d dialogues, %d choices fitted on %d turns",
             len(valid), valid["dialogue_id"].nunique(), len(choices), len(fit))
    lm = model_settings(params).load(ROOT / "models/base", adapter=ROOT / "models/reficr", merge=True)
    start = time.perf_counter()
    evidence = dm_evidence(lm, valid["prompt"].tolist(), choices, params["lengths"]["prompt"])
    log.info("scored %d turns x %d choices in %.1f s", len(valid), len(choices), time.perf_counter() - start)
    sweep = weight_sweep(evidence, choices, prior, [list(a) for a in valid["actions"]], v["weights"])
    chosen = DMValidation.from_sweep(sweep, fit, valid)
    log.info("weight %s: validation accuracy %.3f, micro-F1 %.3f (majority %.3f / %.3f, n %d)", chosen.weight,
             chosen.accuracy, chosen.micro_f1, chosen.majority_accuracy, chosen.majority_micro_f1, chosen.n)
    with atomic_path(ROOT / SWEEP) as tmp:
        sweep.to_csv(tmp, index=False)
    write_json(ROOT / CHOICE, asdict(chosen))


if __name__ == "__main__":
    with user_errors():
        main()
