"""The whole pipeline, stage by stage, in a scratch root, without DVC: for a lent GPU machine (no DVC there, a
deadline to keep), e.g. the small model at full scale (profiles/small-gpu.yaml).

    python bench/gpu_full_scale.py --profile profiles/small-gpu.yaml --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --interim data/interim --run /tmp/run --out results --deadline-s 520
    python bench/gpu_full_scale.py --plan        # the stage order it would run, and exit

The stage order is dvc.yaml's DAG (foreach expanded, ordered by deps and outs), so it follows the pipeline as it
changes. With ``--interim`` the ingested tables are copied in and the stages that make them (download, ingest) are
left out; otherwise download reads ``$REFICR_DATA_MIRROR``. Each stage runs as ``python -m stages.X`` with
``REFICR_ROOT`` set to the run folder, under what is left of the deadline; a failed or timed-out stage skips only
the stages downstream of it. Written to ``--out``: results.json (device, versions, per-stage seconds and exit
codes, the validation curve, every metrics file), summary.md, and logs.tar.gz (stage logs, plots, metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.common import outputs, stage_table  # noqa: E402


def stage_graph(dvc_yaml: Path) -> list[dict]:
    """dvc.yaml's stages in file order, ``foreach`` expanded: name, cmd, deps, outs (plots and metrics count as outs)."""
    return [{"name": name, "cmd": stage["cmd"], "deps": list(stage.get("deps", [])), "outs": outputs(stage)}
            for name, stage in stage_table(dvc_yaml).items()]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _overlaps(a: str, b: str) -> bool:
    return _under(a, b) or _under(b, a)


def plan(dvc_yaml: Path, provided: tuple[str, ...] = ()) -> list[dict]:
    """The stages to run, each after every stage whose outs it depends on; stages whose outs all lie under a
    ``provided`` folder are left out. Ties keep dvc.yaml's order."""
    stages = [s for s in stage_graph(dvc_yaml)
              if not (s["outs"] and all(any(_under(o, p) for p in provided) for o in s["outs"]))]
    for s in stages:
        s["after"] = {t["name"] for t in stages if t is not s
                      and any(_overlaps(d, o) for d in s["deps"] for o in t["outs"])}
    ordered, done = [], set()
    while len(ordered) < len(stages):
        ready = [s for s in stages if s["name"] not in done and s["after"] <= done]
        if not ready:
            raise ValueError(f"{dvc_yaml}: the stages' deps and outs form a cycle")
        ordered.append(ready[0])
        done.add(ready[0]["name"])
    return ordered


def downstream(stages: list[dict], failed: str) -> set[str]:
    """Every stage that (transitively) depends on ``failed``."""
    out, grew = {failed}, True
    while grew:
        grew = False
        for s in stages:
            if s["name"] not in out and s["after"] & out:
                out.add(s["name"])
                grew = True
    return out - {failed}


def environment() -> dict:
    info = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "faiss", "pandas", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    import torch

    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    info["cpu_count"] = os.cpu_count()
    return info


def override(params: dict, assignment: str) -> None:
    """``a.b.c=value`` (value parsed as YAML) into ``params``; the key must exist."""
    key, _, value = assignment.partition("=")
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    if last not in node:
        raise KeyError(f"--set {assignment}: {key} is not a key of the profile")
    node[last] = yaml.safe_load(value)


def prepare(run: Path, profile: Path, gguf: str | None, interim: Path | None, overrides: list[str]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(profile.read_text())
    for assignment in overrides:
        override(params, assignment)
    if gguf:
        params["model"]["path"] = str(Path(gguf).resolve())
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if interim is not None:
        shutil.copytree(interim, run / "data/interim", dirs_exist_ok=True)


def run_stages(stages: list[dict], run: Path, deadline: float, reserve_s: float) -> list[dict]:
    logs = run / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "REFICR_ROOT": str(run), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    skipped: dict[str, str] = {}
    table = []
    for i, stage in enumerate(stages):
        row = {"stage": stage["name"]}
        left = deadline - time.monotonic() - reserve_s
        if stage["name"] in skipped:
            row.update(status="skipped", why=skipped[stage["name"]])
        elif left < 5:
            row.update(status="skipped", why="deadline")
        else:
            argv = stage["cmd"].split()
            if argv[0] == "python":
                argv[0] = sys.executable
            print(f"[{time.strftime('%H:%M:%S')}] {stage['name']}: {' '.join(argv[1:])} ({left:.0f} s left)",
                  flush=True)
            begin = time.monotonic()
            with open(logs / f"{i:02d}-{stage['name'].replace('@', '-')}.log", "w") as log:
                try:
                    rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=left).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            row.update(status="ok" if rc == 0 else "failed", rc=rc, seconds=round(time.monotonic() - begin, 1))
            if rc != 0:
                for name in downstream(stages, stage["name"]):
                    skipped.setdefault(name, f"{stage['name']} {row['status']}")
        print(f"    {row}", flush=True)
        table.append(row)
    return table


def collect(run: Path, out: Path, table: list[dict], env: dict, started: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": env, "stages": table, "wall_s": round(time.monotonic() - started, 1), "metrics": {}}
    for path in sorted((run / "metrics").glob("*.json")) if (run / "metrics").exists() else []:
        results["metrics"][path.stem] = json.loads(path.read_text())
    for name in ("finetune_validation", "finetune_loss", "warmup_loss"):
        path = run / "plots" / f"{name}.csv"
        if path.exists():
            results[name] = path.read_text()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if (run / "metrics/summary.md").exists():
        shutil.copy(run / "metrics/summary.md", out / "summary.md")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for folder in ("logs", "plots", "metrics"):
            if (run / folder).exists():
                tar.add(run / folder, arcname=folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles/small-gpu.yaml")
    parser.add_argument("--gguf", help="model.path for the base_model stage (a .gguf file or a HF folder)")
    parser.add_argument("--interim", type=Path, help="ingested tables (data/interim): download and ingest are skipped")
    parser.add_argument("--run", type=Path, default=Path("/tmp/reficr-run"))
    parser.add_argument("--out", type=Path, default=Path("gpu_full_scale"))
    parser.add_argument("--deadline-s", type=float, default=3600.0, help="wall seconds for all stages together")
    parser.add_argument("--reserve-s", type=float, default=15.0, help="kept back for writing the results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile setting (e.g. finetune.steps=100); recorded in results.json")
    parser.add_argument("--plan", action="store_true", help="print the stage order and exit")
    args = parser.parse_args()
    started = time.monotonic()
    stages = plan(ROOT / "dvc.yaml", ("data/raw", "data/interim") if args.interim else ())
    if args.plan:
        for stage in stages:
            print(stage["name"], "after", sorted(stage["after"]))
        return
    env = environment()
    env["overrides"] = args.set
    print(json.dumps(env), flush=True)
    prepare(args.run, args.profile, args.gguf, args.interim, args.set)
    table = run_stages(stages, args.run, started + args.deadline_s, args.reserve_s)
    results = collect(args.run, args.out, table, env, started)
    print(json.dumps({"stages": table, "wall_s": results["wall_s"]}, indent=1))
    if "finetune_validation" in results:
        print(results["finetune_validation"])
    if (args.out / "summary.md").exists():
        print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
