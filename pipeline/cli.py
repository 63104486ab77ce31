"""The ``reficr`` command line: a thin layer over the library and the DVC stages.

    reficr profile tiny            # make params.yaml the tiny / small / gritlm-7b profile
    reficr data download           # the download stage (REFICR_DATA_MIRROR=<folder> for a mirror)
    reficr data ingest redial      # one ingest stage
"""

from __future__ import annotations

import shutil
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


if __name__ == "__main__":
    app()
