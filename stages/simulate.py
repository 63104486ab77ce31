"""DVC stage `simulate@<dataset>`: simulated seekers talk to the trained recommender and to the baselines
(``pipeline.evaluation.simulation``) on seeded test dialogues.

    python -m stages.simulate redial      # or inspired

Reads the run `evaluate@<dataset>` saved (``Recommender.load``). Writes metrics/simulate_<dataset>.json,
plots/simulate_<dataset>.csv (success within 1..T turns per system) and data/simulate/<dataset>/ (every turn of every
simulated dialogue, and transcripts of the first few).
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from pipeline.data import schemas
from pipeline.errors import MissingArtifactError
from pipeline.evaluation.seeker import ModelSeeker, TemplateSeeker
from pipeline.evaluation.simulation import (
    ReFICRPolicy,
    ScoredPolicy,
    SimDialogue,
    sim_dialogues,
    simulate,
    simulation_metrics,
    success_curve,
    transcript,
)
from pipeline.io import atomic_dir, atomic_path, write_json, write_parquet
from pipeline.timing import Timer
from pipeline.workflow.knowledge import KNOWLEDGE_FILE, Recommender
from stages.common import ROOT, load_params, setup_logging, user_errors

log = logging.getLogger("stages.simulate")
DATASETS = ("redial", "inspired")
COLLABORATIVE = {"co_mention": {"co_mention": 1.0}, "conversation_knn": {"text_neighbours": 1.0}}  # as evaluate names them
REFERENCE = "reficr"


def load_dialogues(dataset: str, limit: int, seed: int) -> tuple[list[SimDialogue], dict[str, int]]:
    """``sim_dialogues`` over the run's test split of ``dataset``, with the metadata of every catalogue of the run."""
    interim = ROOT / "data/interim"
    tables = {d: schemas.read_table(interim / d / "items.parquet", schemas.ITEMS) for d in DATASETS}
    return sim_dialogues(schemas.read_table(interim / dataset / "dialogues.parquet", schemas.DIALOGUES),
                         schemas.read_table(interim / dataset / "rec_turns.parquet", schemas.REC_TURNS),
                         tables[dataset], [t for d, t in tables.items() if d != dataset], limit, seed)


def policies(rec: Recommender, always_recommend: bool) -> list:
    """ReFICR (and, with ``always_recommend``, ReFICR recommending at every turn), retrieval+knowledge without the LLM
    ranker, Conv2Item alone, the collaborative baselines, popularity."""
    out = [ReFICRPolicy(REFERENCE, rec)]
    if always_recommend:
        out.append(ReFICRPolicy("ranked+knowledge", rec, decide=False))
    out += [ScoredPolicy("retrieval+knowledge", rec, rec.choice.fusion_weights),
            ScoredPolicy("retrieval", rec, {"retrieval": 1.0})]
    out += [ScoredPolicy(name, rec, weights) for name, weights in COLLABORATIVE.items()]
    out += [ScoredPolicy("collaborative_mix", rec, rec.choice.mix_weights),
            ScoredPolicy("popularity", rec, {"popularity": 1.0})]
    return out


def main(dataset: str) -> None:
    setup_logging()
    if dataset not in DATASETS:
        raise SystemExit(f"simulate: dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    params = load_params(f"simulate@{dataset}")
    p, seed = params["simulate"], params["seed"]
    timer = Timer()
    with timer("load the trained run"):
        rec = Recommender.load(ROOT, dataset)
    if rec.scorer is None:
        raise MissingArtifactError(f"data/eval/{dataset}/{KNOWLEDGE_FILE}: not found; expected retrieval+knowledge's "
                                   f"choice, which `dvc repro evaluate@{dataset}` saves")
    dialogues, counts = load_dialogues(dataset, p["dialogues"][dataset], seed)
    if p["seeker"] == "model":
        s = rec.system.settings
        seeker = ModelSeeker(seed, p["opening"], rec.system.lm, rec.system.render, batch_size=s.generation_batch,
                             prompt_length=s.prompt_length, max_new_tokens=p["max_new_tokens_seeker"])
    else:
        seeker = TemplateSeeker(seed, p["opening"])
    log.info("%s: %d simulated seekers (%s), up to %d turns each", dataset, len(dialogues), counts, p["turns"])
    results = {}
    for policy in policies(rec, p["always_recommend"]):
        with timer(f"simulate: {policy.name}"):
            results[policy.name] = simulate(policy, dialogues, seeker, p["turns"])
    metrics = simulation_metrics(results, p["turns"], REFERENCE, params["eval"]["bootstrap"], seed)
    metrics.update({f"simulate.dialogues.{k}": v for k, v in counts.items()})
    metrics["simulate.turns"] = p["turns"]
    metrics["simulate.seeker"] = p["seeker"]
    metrics["simulate.opening"] = p["opening"]
    log.info("%s: %s", dataset, {k: round(v, 3) for k, v in metrics.items() if k.endswith(f".success@{p['turns']}")})
    write_outputs(dataset, dialogues, results, metrics, rec.system.title, p["transcripts"], timer)


def write_outputs(dataset: str, dialogues: list[SimDialogue], results: dict, metrics: dict, title: dict[str, str],
                  transcripts: int, timer: Timer) -> None:
    """Every turn (turns.parquet), the first ``transcripts`` dialogues as text, timings, the plot, the metrics."""
    turns = int(metrics["simulate.turns"])
    rows = [{"system": name, "dialogue_id": o.dialogue_id, "targets": o.targets, "turn": r.turn, "dm": r.dm,
             "recommended": r.recommended, "recommender": r.recommender, "seeker": r.seeker, "accepted": r.accepted}
            for name, outcomes in results.items() for o in outcomes for r in o.turns]
    with atomic_dir(ROOT / "data/simulate" / dataset) as out:
        write_parquet(out / "turns.parquet", pd.DataFrame(rows))
        shown = dialogues[:transcripts]
        text = [f"# Simulated seekers on {dataset}: the first {len(shown)} of {len(dialogues)} dialogues", ""]
        for i, d in enumerate(shown):
            text += [f"## {d.dialogue_id}: targets {'; '.join(d.target_titles)}", ""]
            text += [transcript(results[name][i], name, title) for name in results]
        (out / "transcripts.md").write_text("\n".join(text))
        write_json(out / "timing.json", timer.times)
    with atomic_path(ROOT / f"plots/simulate_{dataset}.csv") as tmp:
        pd.DataFrame(success_curve(results, turns)).to_csv(tmp, index=False)
    write_json(ROOT / f"metrics/simulate_{dataset}.json", metrics)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
