"""DVC stage `evaluate@<dataset>`: the evaluation protocol on the test split
(``pipeline.evaluation.protocol``: the registry of systems, the samples, the metrics).

    python -m stages.evaluate redial      # or inspired

Writes metrics/<dataset>.json, plots/recall_<dataset>.csv and data/eval/<dataset>/ (predictions, ranking
outputs, responses, DM outputs, timings, and the fine-tuned item and conversation embeddings with the
settings they were made with, which `reficr recommend` / `reficr chat` load through ``ReFICR.from_run``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import MissingArtifactError
from pipeline.evaluation.protocol import EvalData, EvalResult, EvalRun, EvalSettings, build_system, evaluate
from pipeline.io import atomic_dir, atomic_path, write_json
from pipeline.model.encoder import SharedTrunk
from pipeline.model.settings import ModelSettings, RecommenderSettings
from pipeline.model.trunk import adapter_bottom_layers
from pipeline.tasks import templates
from pipeline.timing import Timer
from pipeline.training.catalogue import offset_table, prior_choice, trained_item_side
from pipeline.training.item_offsets import OffsetChoice, adopted_offsets
from pipeline.workflow.dialogue import HEAD, SHARES, DMHead, fit_choices
from pipeline.workflow.fusion import KnowledgeGrid
from pipeline.workflow.knowledge import save_choice
from stages.common import ROOT, load_params, setup_logging, user_errors
from stages.settings import model_settings

log = logging.getLogger("stages.evaluate")
BASE = ROOT / "models/base"
VALIDATION_CURVE = "plots/finetune_validation.csv"  # fine-tuning's validation passes (retrieval+prior's beta)
DM_VALIDATION = "metrics/dm_validation.json"  # stage validate_dm: dialogue management's prior and weight
ITEM_OFFSETS = "models/item_offsets"  # stage fit_items@<dataset>: item offsets, used where validation adopted them


def dm_validation(root: Path = ROOT) -> dict:
    """Dialogue management's prior and weight as ``validate_dm`` chose them on validation dialogues, with their
    validation scores."""
    path = root / DM_VALIDATION
    if not path.exists():
        raise MissingArtifactError(f"{path}: not found; expected dialogue management's validated weight: "
                                   "`dvc repro validate_dm` writes it")
    return json.loads(path.read_text())


def recommender_settings(params: dict, dm_train: pd.DataFrame, chosen: dict) -> RecommenderSettings:
    """The workflow's settings; dialogue management chooses among the action sequences of ``dm_train`` (the
    training split's) by the prior ``validate_dm`` chose (their training shares, or the DM head refitted on every
    training turn at the chosen L2), weighing the model's evidence by the chosen weight."""
    actions = [list(a) for a in dm_train["actions"]]
    choices, prior = fit_choices(actions)
    head = {}
    if chosen.get("prior", SHARES) == HEAD:  # a dm_validation.json from before the head: the shares
        head = asdict(DMHead.fit(dm_train["prompt"].tolist(), actions, choices, float(chosen["l2"])))
    ranking, ev, ln, ins = params["ranking"], params["eval"], params["lengths"], params["instructions"]
    return RecommenderSettings(
        candidates=ranking["candidates"], knowledge_utterances=ranking["knowledge_utterances"], top_k=ev["top_k"],
        items_in_response=ranking["items_in_response"], query_length=ln["query"], document_length=ln["document"],
        prompt_length=ln["prompt"], context_max_utterances=ins["context_max_utterances"], context_max_chars=ins["context_max_chars"],
        embed_batch=params["embed"]["batch_size"], generation_batch=ev["generation_batch"], max_new_tokens_dm=ev["max_new_tokens_dm"],
        max_new_tokens_ranking=ev["max_new_tokens_ranking"], max_new_tokens_response=ev["max_new_tokens_response"],
        dm_choices=choices, dm_log_prior=prior, dm_weight=float(chosen["weight"]), dm_head=head)


def eval_settings(params: dict, dataset: str, offsets: OffsetChoice | None = None) -> EvalSettings:
    """The protocol's settings; retrieval+prior's beta as ``fit_items`` chose it with the item offsets it adopted,
    else as fine-tuning's last validation pass chose it, where it did."""
    ev = params["eval"]
    curve = ROOT / VALIDATION_CURVE
    prior = offsets.prior(params["finetune"]["steps"]) if offsets is not None else None
    where = "fit_items validation, with the item offsets it adopted" if prior is not None else ""
    if prior is None:
        prior = prior_choice(pd.read_csv(curve), dataset) if curve.exists() and curve.stat().st_size else None
    return EvalSettings(max_retrieval=ev["max_retrieval"][dataset], max_generation=ev["max_generation"][dataset],
                        max_responses=ev["max_responses"], max_dm=ev["max_dm"], target_length=params["lengths"]["target"],
                        bootstrap=ev["bootstrap"], seed=params["seed"], temperature=params["finetune"]["temperature"],
                        prior_betas=ev["prior_betas"], max_validation=ev["max_validation"], prior=prior,
                        max_dm_generation=ev["max_dm_generation"], prior_chosen_at=where,
                        knowledge=KnowledgeGrid(**params["knowledge"]))


def write_outputs(dataset: str, result: EvalResult, model: ModelSettings, temperature: float) -> None:
    with atomic_dir(ROOT / "data/eval" / dataset) as out:
        result.predictions.to_parquet(out / "predictions.parquet", index=False)
        result.ranking_outputs.to_parquet(out / "ranking_outputs.parquet", index=False)
        result.responses.to_parquet(out / "responses.parquet", index=False)
        if result.dm is not None:
            result.dm.to_parquet(out / "dm.parquet", index=False)
        write_json(out / "timing.json", result.timings)  # wall times vary run to run: kept out of the metrics
        result.system.save_run(out, model)
        save_choice(out, result.knowledge, temperature)
    with atomic_path(ROOT / f"plots/recall_{dataset}.csv") as tmp:
        result.recall_curve.to_csv(tmp, index=False)
    write_json(ROOT / f"metrics/{dataset}.json", result.metrics)


def main(dataset: str) -> None:
    setup_logging()
    params = load_params(f"evaluate@{dataset}")
    data = EvalData.read(ROOT, dataset, with_dm=dataset == "redial")
    chosen = dm_validation()
    model, settings = model_settings(params), recommender_settings(params, data.dm_train, chosen)
    base_items = np.load(ROOT / f"data/embeddings/base/{dataset}_items.npy", allow_pickle=False)
    items, bias = trained_item_side(ROOT / "models/reficr", dataset, base_items)
    offsets, offset_choice = adopted_offsets(ROOT / ITEM_OFFSETS / dataset, dataset, len(base_items))
    if offsets is not None:
        log.info("%s: scoring with the item offsets fit_items adopted (%s)", dataset, offset_choice.reason)
        items = offset_table(items, offsets)
    # the base and the fine-tuned model share the layers below the adapter: texts both embed go through them once
    shared = adapter_bottom_layers(ROOT / "models/reficr")
    store = SharedTrunk(data.turns_train["query"].tolist(), templates.CONV2CONV_SAMPLE, shared)

    def fine_tuned():  # the model that embeds, and the one that generates where fine-tuning kept it apart
        embedding, generating = model.load_tuned(BASE, ROOT / "models/reficr")
        return build_system(embedding, data, settings, items, bias, store, generator=generating)

    run = EvalRun(data, lambda: build_system(model.load(BASE), data, settings, base_items, store=store), fine_tuned,
                  eval_settings(params, dataset, offset_choice), settings, Timer(), shared_layers=shared)
    result = evaluate(run)
    if offset_choice is not None and offset_choice.fitted:  # fitted after fine-tuning, kept or not by validation
        result.metrics["item_offsets.adopted"] = offset_choice.adopted
    if data.dm_test is not None:  # how the weight was chosen, beside the test numbers
        result.metrics.update({f"dm.validation.{k}": round(v, 6) if isinstance(v, float) else v
                               for k, v in chosen.items() if k not in ("weight", "prior", "l2")})
    write_outputs(dataset, result, model, params["finetune"]["temperature"])
    log.info("%s: %s", dataset, {k: v for k, v in result.metrics.items() if k.endswith(".full.recall@10.per_item")})


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1] if len(sys.argv) > 1 else "")
