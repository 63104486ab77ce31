"""DVC stage `validate_dm`: choose dialogue management's prior and weight (``pipeline.workflow.dialogue``) on validation
dialogues.

    python -m stages.validate_dm

The fine-tuned model that generates (models/reficr, or the generation adapter fine-tuning kept in it; merged) scores
every frequent action sequence as the start of its output on the validation turns (IARD training dialogues held out
by a seeded hash; the test dialogues are not read); the
choices' training shares and the DM head at each L2 of ``eval.dm_validation.head_l2`` (fitted on the other training
dialogues) are tried as the prior, each at every weight of ``eval.dm_validation.weights``. Writes
plots/dm_validation.csv (the sweep) and metrics/dm_validation.json (the chosen prior and weight, their validation
accuracy and micro-F1 beside the majority action set's), which ``evaluate`` reads.

It also runs the paper's unconstrained DM generation on ``eval.max_dm_generation`` of the validation turns (as
``evaluate`` does on the test turns, ``dm.free_generation.*``): how often the model names an action by itself, and
how well. A check on the fine-tuned model, not a choice (a setting that changes fine-tuning is then judged on
validation for this too): metrics/dm_validation_generation.json, which ``evaluate`` does not read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from pipeline.data.splits import seeded_sample, validation_split
from pipeline.evaluation.dm_validation import DMValidation, dm_sweep, free_generation
from pipeline.io import atomic_path, write_json
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import generation_adapter
from pipeline.workflow.dialogue import HEAD, SHARES, DMHead, dm_evidence, fit_choices
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import model_settings

log = logging.getLogger("stages.validate_dm")
SWEEP = "plots/dm_validation.csv"
CHOICE = "metrics/dm_validation.json"
GENERATION = "metrics/dm_validation_generation.json"


def main() -> None:
    setup_logging()
    params = load_params("validate_dm")
    v = params["eval"]["dm_validation"]
    fit, valid = validation_split(pd.read_parquet(ROOT / "data/instructions/dm_train.parquet"), v["fraction"],
                                  v["max_turns"], params["seed"])
    choices, shares = fit_choices([list(a) for a in fit["actions"]])
    log.info("dialogue-management validation: %d turns of %d dialogues, %d choices fitted on %d turns",
             len(valid), valid["dialogue_id"].nunique(), len(choices), len(fit))
    priors = [(SHARES, None, np.asarray(shares))]
    for l2 in v["head_l2"]:
        head = DMHead.fit(fit["prompt"].tolist(), [list(a) for a in fit["actions"]], choices, float(l2))
        priors.append((HEAD, float(l2), head.log_prior(valid["prompt"].tolist())))
        log.info("DM head fitted at L2 %g (%d features)", l2, len(head.vocabulary))
    evidence = np.zeros((len(valid), len(choices)))
    lm = model_settings(params).load(ROOT / "models/base", adapter=generation_adapter(ROOT / "models/reficr"), merge=True)
    if any(float(w) for w in v["weights"]):  # weight 0 alone needs no evidence
        start = time.perf_counter()
        evidence = dm_evidence(lm, valid["prompt"].tolist(), choices, params["lengths"]["prompt"])
        log.info("scored %d turns x %d choices in %.1f s", len(valid), len(choices), time.perf_counter() - start)
    sweep = dm_sweep(evidence, choices, priors, [list(a) for a in valid["actions"]], v["weights"])
    chosen = DMValidation.from_sweep(sweep, fit, valid)
    log.info("prior %s (L2 %s), weight %s: validation accuracy %.3f, micro-F1 %.3f (majority %.3f / %.3f, n %d)",
             chosen.prior, chosen.l2, chosen.weight, chosen.accuracy, chosen.micro_f1, chosen.majority_accuracy,
             chosen.majority_micro_f1, chosen.n)
    free = free_dm_check(lm, valid, params)
    with atomic_path(ROOT / SWEEP) as tmp:
        sweep.to_csv(tmp, index=False)
    write_json(ROOT / CHOICE, asdict(chosen))
    write_json(ROOT / GENERATION, free)


def free_dm_check(lm: RetrievableLM, valid: pd.DataFrame, params: dict) -> dict:
    """The paper's unconstrained DM generation on ``eval.max_dm_generation`` of the validation turns (0 = all; a
    seeded sample, drawn as ``evaluate`` draws its own from the test turns): parse rate, accuracy and micro-F1 of the
    actions it names."""
    e = params["eval"]
    turns = seeded_sample(valid, e["max_dm_generation"] or None, params["seed"])
    start = time.perf_counter()
    m, _ = free_generation(lambda prompts: lm.generate(prompts, max_new_tokens=e["max_new_tokens_dm"],
                                                       batch_size=e["generation_batch"],
                                                       max_prompt_length=params["lengths"]["prompt"]), turns)
    log.info("free DM generation on %d validation turns in %.1f s: names an action in %.3f (accuracy %.3f, "
             "micro-F1 %.3f)", m["n"], time.perf_counter() - start, m["parse_rate"], m["accuracy"], m["micro_f1"])
    return {"parse_rate": m["parse_rate"], "accuracy": m["accuracy"], "micro_f1": m["micro_f1"], "n": m["n"]}


if __name__ == "__main__":
    with user_errors():
        main()
