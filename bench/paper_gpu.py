"""The paper's profile on a lent GPU, in one command: the exact-shape step at the paper's lengths, then a short real
run of the gritlm-7b profile's DAG with a random-initialised GritLM-7B-shaped model (or GritLM-7B where its weights
are given), then mining with faiss-gpu against faiss-cpu. Results, one JSON each, go to ``--out``.

    python bench/paper_gpu.py --out results --interim data/interim                        # on the GPU machine
    python bench/paper_gpu.py --out /tmp/paper-gpu --interim data/interim --miniature     # the same on a CPU, tiny

1. ``bench/paper_shape.py --device cuda --scales 128 512``: one training step at GritLM-7B's shape, query 512 /
   documents 1024 / prompt 2048 at the larger scale (``results-paper-shape-<gpu>.json``).
2. A model folder: ``--model`` (GritLM-7B's weights), else ``pipeline.model.architectures.random_model`` of GritLM-7B
   (``--miniature``: of its miniature twin, with the small model's tokenizer).
3. ``bench/gpu_full_scale.py`` with profiles/gritlm-7b.yaml, ``model.path`` set to that folder, and the steps cut to
   ``--steps`` (``--miniature``: the CPU stand-ins ``model.device: cpu``, ``mining.use_gpu: false`` and the tiny
   profile's main sizes, ``TINY_SIZES``).
4. ``mine_negatives`` again in that run folder with ``mining.use_gpu`` true and false, timed
   (``mining-faiss.json``); on a CPU only the false one runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.model.architectures import GRITLM_7B, miniature, random_model  # noqa: E402

TINY_SIZES = ("lengths", "embed", "instructions", "warmup.batch_size", "finetune.retrieval_batch",
              "finetune.generation_batch", "mining.pool", "eval.max_retrieval", "eval.max_generation",
              "eval.max_responses", "eval.max_dm", "eval.max_dm_generation", "eval.dm_validation.max_turns",
              "eval.max_validation", "eval.bootstrap", "knowledge.text_neighbours", "knowledge.encoder_neighbours")


def get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def sets(miniature_run: bool, steps: int) -> list[str]:
    """``--set`` overrides for gpu_full_scale.py: the cut steps, and for a CPU trial the twin's stand-ins and sizes."""
    out = [f"warmup.steps={steps}", f"finetune.steps={steps}", f"warmup.save_every={steps}", f"finetune.save_every={steps}"]
    if miniature_run:
        tiny = yaml.safe_load((ROOT / "profiles/tiny.yaml").read_text())
        out += ["model.device=cpu", "mining.use_gpu=false"]
        out += [f"{key}={json.dumps(get(tiny, key))}" for key in TINY_SIZES]
    return out


def run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return code, round(time.perf_counter() - start, 1)


def mining_times(run_dir: Path, out: Path, use_gpu: list[bool]) -> dict:
    """``mine_negatives`` in the finished run folder with each faiss backend, timed (the params file is restored)."""
    import os

    params_path = run_dir / "params.yaml"
    original = params_path.read_text()
    times = {}
    try:
        for gpu in use_gpu:
            params = yaml.safe_load(original)
            params["mining"]["use_gpu"] = gpu
            params_path.write_text(yaml.safe_dump(params, sort_keys=False))
            env = dict(os.environ, REFICR_ROOT=str(run_dir))
            code, seconds = run([sys.executable, "-m", "stages.mine_negatives"], out / f"mining-gpu-{gpu}.log", env)
            times["faiss-gpu" if gpu else "faiss-cpu"] = {"exit": code, "seconds": seconds}
    finally:
        params_path.write_text(original)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interim", type=Path, help="ingested tables (data/interim): download and ingest are skipped")
    parser.add_argument("--model", type=Path, help="GritLM-7B's weights (a model folder); else a random model")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models/base", help="for the random model")
    parser.add_argument("--steps", type=int, default=20, help="warm-up and fine-tuning steps of the short run")
    parser.add_argument("--deadline-s", type=float, default=1800.0)
    parser.add_argument("--miniature", action="store_true", help="a CPU trial at the miniature twin's size")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"miniature": args.miniature}
    device = "cpu" if args.miniature else "cuda"
    shape = ["--miniature", "--scales", "8", "16"] if args.miniature else ["--scales", "128", "512"]
    code, seconds = run([sys.executable, "bench/paper_shape.py", "--device", device, *shape, "--tokenizer", str(args.tokenizer),
                         "--out", str(args.out / f"results-paper-shape-{device}.json")], args.out / "paper-shape.log")
    report["paper_shape"] = {"exit": code, "seconds": seconds}
    model = args.model
    if model is None:
        model = args.out / "model"
        start = time.perf_counter()
        random_model(miniature(GRITLM_7B) if args.miniature else GRITLM_7B, args.tokenizer, model,
                     dtype="float32" if args.miniature else "bfloat16")
        report["random_model_s"] = round(time.perf_counter() - start, 1)
    run_dir = args.out / "run"
    cmd = [sys.executable, "bench/gpu_full_scale.py", "--profile", "profiles/gritlm-7b.yaml", "--gguf", str(model),
           "--run", str(run_dir), "--out", str(args.out / "dag"), "--deadline-s", str(args.deadline_s)]
    cmd += ["--interim", str(args.interim)] if args.interim else []
    for assignment in sets(args.miniature, args.steps):
        cmd += ["--set", assignment]
    code, seconds = run(cmd, args.out / "dag.log")
    report["dag"] = {"exit": code, "seconds": seconds, "results": str(args.out / "dag/results.json")}
    report["mining"] = mining_times(run_dir, args.out, [False] if args.miniature else [True, False])
    (args.out / "paper-gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
