"""The ``reficr`` command line: a thin layer over the library and the DVC stages.

    reficr profile tiny            # make params.yaml the tiny / small / gritlm-7b profile
    reficr data download           # the download stage (REFICR_DATA_MIRROR=<folder> for a mirror)
    reficr data ingest redial      # one ingest stage
    reficr recommend --dataset redial --input conversations.jsonl --output out.jsonl
    reficr chat --dataset redial   # talk to the trained recommender in the terminal
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import typer

app = typer.Typer(help="reficr: one retrievable LLM for conversational recommendation (ReFICR, RecSys 2024).",
                  no_args_is_help=True)
data_app = typer.Typer(help="Raw data: download and ingest.", no_args_is_help=True)
app.add_typer(data_app, name="data")

PROFILES = ("small", "tiny", "gritlm-7b")


@app.command()
def profile(name: str = typer.Argument(..., help="small | tiny | gritlm-7b"),
            root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Write the named profile to params.yaml (small is the default shipped in profiles/small.yaml)."""
    if name not in PROFILES:
        raise typer.BadParameter(f"unknown profile {name!r}; expected one of {PROFILES}")
    source = root / "profiles" / f"{name}.yaml"
    if not source.exists():
        raise typer.BadParameter(f"{source} not found: run from the project root or pass --root")
    shutil.copyfile(source, root / "params.yaml")
    typer.echo(f"params.yaml is now the {name} profile; `dvc repro` (or `dvc status`) shows what it re-runs")


@data_app.command("download")
def download() -> None:
    """Fetch the raw files into data/raw (or copy them from REFICR_DATA_MIRROR)."""
    from stages.download import main

    main()


@data_app.command("ingest")
def ingest(dataset: str = typer.Argument(..., help="redial | inspired | iard")) -> None:
    """Raw files of one dataset -> data/interim/<dataset>/*.parquet + ingest_report.json."""
    from stages.ingest import main

    main(dataset)


def _load_recommender(dataset: str, root: Path):
    """The fine-tuned model with the item and conversation embeddings the evaluate stage saved."""
    import numpy as np
    import pandas as pd
    import yaml

    from pipeline.data.items import item_titles
    from pipeline.model import RetrievableLM
    from pipeline.recommender import ConversationStore, ItemCorpus, ReFICR

    params = yaml.safe_load((root / "params.yaml").read_text())
    needed = [root / "models/reficr", root / f"data/eval/{dataset}/reficr_items.npy", root / f"data/eval/{dataset}/reficr_conversations.npy"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise typer.BadParameter(f"missing {missing}: run `dvc repro` first (finetune and evaluate@{dataset})")
    m = params["model"]
    lm = RetrievableLM.load(root / "models/base", adapter=root / "models/reficr", merge=True, device=m["device"],
                            dtype=m["dtype"], quantization=m["quantization"] or None,
                            inference_dtype=m["inference_dtype"])  # as in evaluation, which embedded the corpus
    items = pd.read_parquet(root / f"data/interim/{dataset}/items.parquet")
    title = item_titles(items)
    corpus = ItemCorpus(items.item_id.tolist(), [title[i] for i in items.item_id],
                        np.load(needed[1], allow_pickle=False))
    turns = pd.read_parquet(root / "data/instructions/turns_train.parquet").query("dataset == @dataset")
    store = ConversationStore(turns["query"].tolist(), [list(g) for g in turns.gold_item_ids], turns.dialogue_id.tolist(),
                              np.load(needed[2], allow_pickle=False))
    ins = params["instructions"]
    return ReFICR(lm, corpus, store, title, params["ranking"]["candidates"], params["ranking"]["knowledge_utterances"],
                  params["lengths"]["query"], params["lengths"]["prompt"], ins["context_max_utterances"], ins["context_max_chars"])


def _context(record: dict, where: str) -> list[dict]:
    context = record.get("context")
    if not isinstance(context, list) or not all(isinstance(u, dict) and u.get("speaker") in ("seeker", "recommender")
                                                and isinstance(u.get("text"), str) for u in context):
        raise typer.BadParameter(f"{where}: expected {{\"context\": [{{\"speaker\": \"seeker\"|\"recommender\", \"text\": str}}, ...]}}")
    return context


@app.command()
def recommend(dataset: str = typer.Option("redial", help="redial | inspired: which corpus to recommend from"),
              input: Path = typer.Option(..., help="JSON lines: {\"context\": [{\"speaker\": ..., \"text\": ...}, ...]}"),
              output: Path = typer.Option(..., help="JSON lines out: actions, candidates, knowledge, ranking, response"),
              force_recommend: bool = typer.Option(False, help="recommend even when dialogue management does not say so"),
              root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Batch: conversations in, ReFICR's turn (action, candidates, ranking, response) out."""
    from pipeline.io import atomic_path

    system = _load_recommender(dataset, root)
    records = []
    for number, line in enumerate(input.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise typer.BadParameter(f"{input}: line {number}: invalid JSON ({err.msg})") from err
    with atomic_path(output) as tmp, open(tmp, "w") as fh:
        for number, record in records:
            turn = system.turn(_context(record, f"{input}: line {number}"), force_recommend=force_recommend)
            out = asdict(turn) | {"recommended_titles": [system.title[i] for i in turn.recommended]}
            fh.write(json.dumps(out, ensure_ascii=False) + "\n")
    typer.echo(f"{len(records)} conversations -> {output}")


@app.command()
def chat(dataset: str = typer.Option("redial", help="redial | inspired"),
         root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Talk to the trained recommender; each turn shows the action, candidates, knowledge and ranking."""
    system = _load_recommender(dataset, root)
    context: list[dict] = []
    typer.echo("You are the seeker. Empty line or Ctrl-D to stop.")
    for line in sys.stdin:
        text = line.strip()
        if not text:
            break
        context.append({"speaker": "seeker", "text": text})
        turn = system.turn(context)
        typer.echo(f"  [action] {', '.join(turn.actions) or '(none parsed)'}")
        if turn.candidates:
            typer.echo(f"  [candidates] {', '.join(system.title[i] for i in turn.candidates)}")
            typer.echo(f"  [knowledge] {turn.knowledge.splitlines()[0]}")
            typer.echo(f"  [ranking] {', '.join(system.title[i] for i in turn.recommended)}")
        typer.echo(f"recommender: {turn.response}")
        context.append({"speaker": "recommender", "text": turn.response})


if __name__ == "__main__":
    app()
