"""The ``reficr`` command line: a thin layer over the library.

    reficr profile tiny            # make params.yaml the tiny / small / gritlm-7b profile
    reficr data download           # raw files into data/raw (REFICR_DATA_MIRROR=<folder> for a mirror)
    reficr data ingest redial      # one dataset's raw files -> data/interim/redial
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
def download(datasets: list[str] = typer.Option(["redial", "inspired", "iard"], "--dataset", help="repeat for several"),
             mirror: Path | None = typer.Option(None, envvar="REFICR_DATA_MIRROR", help="a folder laid out like data/raw"),
             timeout: float = typer.Option(60.0, help="seconds per HTTP request"),
             manifest: Path | None = typer.Option(None, help="a JSON manifest of your own pinned files"),
             root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Fetch the raw files into data/raw (or copy them from a mirror); `dvc repro download` is the same with params.yaml."""
    from pipeline.data.download import fetch_raw

    summary = fetch_raw(datasets, root / "data/raw", mirror, timeout, manifest)
    typer.echo(f"{root / 'data/raw'}: {summary['counts']}")


@data_app.command("ingest")
def ingest(dataset: str = typer.Argument(..., help="redial | inspired | iard"),
           seed: int = typer.Option(0), valid_fraction: float = typer.Option(0.1, help="ReDial train dialogues held out as valid"),
           heldout_fraction: float = typer.Option(0.15, help="IARD dialogues held out for evaluation"),
           root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Raw files of one dataset -> data/interim/<dataset>/*.parquet + ingest_report.json."""
    from pipeline.data.ingest import DATASETS, ingest as run_ingest, write_ingest

    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    result = run_ingest(dataset, root / "data/raw", seed=seed, redial_valid_fraction=valid_fraction, iard_heldout_fraction=heldout_fraction)
    write_ingest(result, root / "data/interim" / dataset)
    typer.echo(f"{root / 'data/interim' / dataset}: {result.report.get('splits')}")


def _load_recommender(dataset: str, root: Path):
    """The trained system `evaluate@<dataset>` saved (one loading path: ``ReFICR.from_run``)."""
    from pipeline.recommender import ReFICR

    try:
        return ReFICR.from_run(root, dataset)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from err


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

    records = []  # the whole input is checked before the model is loaded
    for number, line in enumerate(input.read_text().splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise typer.BadParameter(f"{input}: line {number}: invalid JSON ({err.msg})") from err
            records.append(_context(record if isinstance(record, dict) else {}, f"{input}: line {number}"))
    system = _load_recommender(dataset, root)
    with atomic_path(output) as tmp, open(tmp, "w") as fh:
        for context in records:
            turn = system.turn(context, force_recommend=force_recommend)
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
