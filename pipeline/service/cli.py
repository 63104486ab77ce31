"""The ``reficr`` command line: a thin layer over the library.

    reficr profile tiny            # make params.yaml the tiny / small / small-gpu / gritlm-7b profile
    reficr data download           # raw files into data/raw (REFICR_DATA_MIRROR=<folder> for a mirror)
    reficr data ingest redial      # one dataset's raw files -> data/interim/redial
    reficr recommend --dataset redial --input conversations.jsonl --output out.jsonl
    reficr chat --dataset redial   # talk to the trained recommender in the terminal
    reficr serve --dataset redial  # HTTP service + web chat page on 127.0.0.1:8000 (pipeline/service/serve.py)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import typer

from pipeline.errors import InputError, user_errors


class _App(typer.Typer):
    """The command line: a known failure (``pipeline.errors.ReficrError``: bad data, bad input, a missing
    artifact) prints ``error: <what>`` and exits 2 without a traceback (``REFICR_DEBUG=1`` shows it)."""

    def __call__(self, *args, **kwargs):
        with user_errors():
            return super().__call__(*args, **kwargs)


app = _App(help="reficr: one retrievable LLM for conversational recommendation (ReFICR, RecSys 2024).",
                  no_args_is_help=True)
data_app = typer.Typer(help="Raw data: download and ingest.", no_args_is_help=True)
app.add_typer(data_app, name="data")

PROFILES = ("small", "small-gpu", "tiny", "gritlm-7b")


@app.command()
def profile(name: str = typer.Argument(..., help="small | small-gpu | tiny | gritlm-7b"),
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
    from pipeline.data.ingest import DATASETS, write_ingest
    from pipeline.data.ingest import ingest as run_ingest

    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    result = run_ingest(dataset, root / "data/raw", seed=seed, redial_valid_fraction=valid_fraction, iard_heldout_fraction=heldout_fraction)
    write_ingest(result, root / "data/interim" / dataset)
    typer.echo(f"{root / 'data/interim' / dataset}: {result.report.get('splits')}")


def _quiet_libraries() -> None:
    """Known harmless library output the terminal tools do not show: transformers' per-tensor "Loading weights"
    bar and the deprecation peft triggers inside transformers when it wraps a model (``is_gradient_checkpointing``,
    transformers 5; nothing for us to change)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _load_recommender(dataset: str, root: Path):
    """The trained run `evaluate@<dataset>` saved (one loading path: ``Recommender.load``)."""
    from pipeline.workflow.knowledge import Recommender

    _quiet_libraries()
    return Recommender.load(root, dataset)  # MissingArtifactError names the `dvc repro` target


def _read_requests(path: Path, max_top_k: int) -> list:
    """Every line of a JSONL file as a request (``pipeline.service.answer.request_model``: the body ``POST /v1/recommend``
    takes), checked before any model is loaded; every bad line is reported at once, then the command exits."""
    from pydantic import ValidationError

    from pipeline.service.answer import request_model, validation_problems

    model = request_model(max_top_k)
    expected = (f'each line: {{"context": [{{"speaker": "seeker"|"recommender", "text": str}}, ...], '
                f'"force_recommend": bool (optional), "include_named": bool (optional), "top_k": 1..{max_top_k} (optional)}}')
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"byte {err.start} is not UTF-8"
        raise InputError(f"{path}: cannot be read ({reason}); expected a UTF-8 file of JSON lines") from err
    requests, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(model.model_validate_json(line))
        except ValidationError as err:
            problems += [f"  line {number}: {p}" for p in validation_problems(err)]
    if not requests and not problems:
        problems.append("  no conversations in it")
    if problems:
        typer.echo(f"error: {path}: {len(problems)} problem(s), nothing was run; {expected}", err=True)
        typer.echo("\n".join(problems), err=True)
        raise typer.Exit(2)
    return requests


@app.command()
def recommend(dataset: str = typer.Option("redial", help="redial | inspired: which corpus to recommend from"),
              input: Path = typer.Option(..., help="JSON lines, each the body of POST /v1/recommend: {\"context\": [{\"speaker\": ..., \"text\": ...}, ...]}"),
              output: Path = typer.Option(..., help="JSON lines out, each what POST /v1/recommend answers: actions, candidates, knowledge, recommended, response, timings_ms"),
              force_recommend: bool = typer.Option(False, help="recommend even when dialogue management does not say so (for every line)"),
              include_named: bool = typer.Option(False, help="also recommend items the conversation names (for every line)"),
              root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Batch: conversations in, ReFICR's turn (action, candidates, ranking, response) out: the same records as
    `reficr serve`'s POST /v1/recommend."""
    from pipeline.io import atomic_path
    from pipeline.service.answer import answer_turn, run_candidate_count

    # the whole input is checked before the model is loaded (top_k against the run's candidate count when known)
    requests = _read_requests(input, run_candidate_count(root, dataset) or 50)
    recommender = _load_recommender(dataset, root)
    with atomic_path(output) as tmp, open(tmp, "w") as fh:
        for request in requests:
            turn = answer_turn(recommender, [u.model_dump() for u in request.context],
                               force_recommend=force_recommend or request.force_recommend, top_k=request.top_k,
                               include_named=include_named or request.include_named)
            fh.write(turn.model_dump_json() + "\n")
    typer.echo(f"{len(requests)} conversations -> {output}")


@app.command()
def chat(dataset: str = typer.Option("redial", help="redial | inspired"),
         force_recommend: bool = typer.Option(False, help="recommend at every turn"),
         include_named: bool = typer.Option(False, help="also recommend items the conversation names"),
         root: Path = typer.Option(Path("."), help="project root")) -> None:
    """Talk to the trained recommender; each turn shows the action, candidates, knowledge and ranking."""
    from pipeline.service.answer import answer_turn

    recommender = _load_recommender(dataset, root)
    context: list[dict] = []
    typer.echo("You are the seeker. Empty line or Ctrl-D to stop.")
    for line in sys.stdin:
        text = line.strip()
        if not text:
            break
        context.append({"speaker": "seeker", "text": text})
        turn = answer_turn(recommender, context, force_recommend=force_recommend, include_named=include_named)
        typer.echo(f"  [action] {', '.join(turn.actions) or '(none parsed)'}")
        if turn.candidates:
            typer.echo(f"  [candidates] {', '.join(f'{c.title} ({c.score:.3g})' for c in turn.candidates)}")
            typer.echo(f"  [knowledge] {turn.knowledge.splitlines()[0]}")
            typer.echo(f"  [ranking] {', '.join(r.title for r in turn.recommended)}")
        typer.echo(f"  [ms] {', '.join(f'{k} {v:.0f}' for k, v in turn.timings_ms.model_dump().items() if v)}")
        typer.echo(f"recommender: {turn.response}")
        if turn.response.strip():
            context.append({"speaker": "recommender", "text": turn.response})


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          dataset: str = typer.Option("redial", help="redial | inspired: which trained run to serve"),
          root: Path = typer.Option(Path("."), help="project root"),
          max_body_kib: int = typer.Option(1024, help="largest request body accepted (KiB); larger gets a 413"),
          queue_timeout: float = typer.Option(300.0, help="seconds a request may wait for the model before a 503"),
          max_queue: int = typer.Option(16, min=0, help="requests that may wait for the model; more get a 503 at once")) -> None:
    """HTTP service + web chat page over the trained run: GET / (chat), GET /healthz, POST /v1/recommend, GET /openapi.json."""
    import logging

    from pipeline.service.serve import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    run_server(root, dataset, host, port, max_body_bytes=max_body_kib * 1024, queue_timeout_s=queue_timeout,
               max_queue=max_queue)


if __name__ == "__main__":
    app()
