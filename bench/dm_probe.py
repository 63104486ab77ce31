"""Diagnostic: how many dialogue-management examples does the small model need before its actions beat the
majority action, before paying for a full run?

    python bench/dm_probe.py --steps 60 --batch 4 --eval-every 12      # writes bench/results-dm-probe.json

LoRA as ``params.yaml`` sets it (rank, alpha, top layers) on models/base, trained on dialogue management only
(data/instructions/dm_train.parquet, the targets ``build_instructions`` writes: action tags first, then the
explanation) through the pipeline's TrainLoop. A share of the IARD *training* dialogues (``--heldout``, by
dialogue-id hash) is held out of the probe's training and scored every ``--eval-every`` steps both ways evaluation
scores DM: the unconstrained greedy generation (parse rate, accuracy of the exact action set, micro-F1) and the
scored choice (``dm_evidence``, ``dm_decide``) at each weight of ``eval.dm_validation.weights`` (weight 0 is the
majority action set of the probe's training turns). The IARD test dialogues are never read.

The first table in bench/README.md is the probe's previous version (commit 42a9d7c: generation, with a scored,
uncalibrated choice only where it named no action); bench/results-dm-probe.json is this version's run.

The pipeline's fine-tuning draws its generation batch task-uniformly (ranking, DM, response), so 72 steps of 2
show DM about 48 examples: the probe says what 48, 120 or 240 buy.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data.common import hash_fraction  # noqa: E402
from pipeline.instructions import ACTIONS  # noqa: E402
from pipeline.metrics import dialogue_management_metrics, majority_action_set  # noqa: E402
from pipeline.model import RetrievableLM  # noqa: E402
from pipeline.objectives import FinetuneObjective, GenerationTask  # noqa: E402
from pipeline.dm_policy import SHARES, dm_sweep, fit_choices, free_generation  # noqa: E402
from pipeline.recommender import ReFICR, dm_evidence  # noqa: E402
from pipeline.settings import Lengths, RecommenderSettings  # noqa: E402
from pipeline.training import TrainConfig, TrainLoop  # noqa: E402
from stages._common import load_params  # noqa: E402
from stages._params import lora  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4, help="DM examples per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--heldout", type=float, default=0.15, help="share of IARD training dialogues held out")
    ap.add_argument("--max-heldout", type=int, default=100, help="held-out turns scored (seeded sample)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens_dm")
    ap.add_argument("--out", default=str(ROOT / "bench/results-dm-probe.json"))
    args = ap.parse_args()
    params = load_params()
    ln = params["lengths"]
    dm = pd.read_parquet(ROOT / "data/instructions/dm_train.parquet")
    held = dm.dialogue_id.map(lambda d: hash_fraction(f"probe:{d}", 0) < args.heldout)
    train, heldout = dm[~held], dm[held].sample(n=min(args.max_heldout, int(held.sum())), random_state=0)
    print(f"{len(train)} training turns ({train.dialogue_id.nunique()} dialogues), {len(heldout)} held-out turns "
          f"({heldout.dialogue_id.nunique()} dialogues)", flush=True)
    train_actions = [list(a) for a in train.actions]
    gold = [list(a) for a in heldout.actions]
    majority = majority_action_set(train_actions)
    baseline = dialogue_management_metrics([majority] * len(gold), gold, ACTIONS)
    settings = RecommenderSettings(
        candidates=10, knowledge_utterances=2, top_k=50, items_in_response=3, query_length=ln["query"],
        document_length=ln["document"], prompt_length=ln["prompt"], context_max_utterances=12, context_max_chars=1200,
        embed_batch=16, generation_batch=16, max_new_tokens_dm=args.max_new_tokens or params["eval"]["max_new_tokens_dm"],
        max_new_tokens_ranking=8, max_new_tokens_response=8)
    choices, prior = fit_choices(train_actions)

    random.seed(0)
    torch.manual_seed(0)
    lm = RetrievableLM.load(ROOT / "models/base", device="cpu", trainable=True)
    lm.attach_lora(lora(params), seed=0)
    reficr = ReFICR(lm, None, None, {}, settings)  # dialogue management needs no corpus and no store
    curve = []

    def score(step: int) -> list[dict]:
        start = time.perf_counter()
        free, _ = free_generation(lambda prompts: reficr.generate(prompts, settings.max_new_tokens_dm), heldout)
        evidence = dm_evidence(lm, heldout.prompt.tolist(), choices, ln["prompt"])
        sweep = dm_sweep(evidence, choices, [(SHARES, None, np.asarray(prior))], gold,
                         params["eval"]["dm_validation"]["weights"])
        curve.append({"step": step, "examples": step * args.batch, "free_generation": free,
                      "scored": sweep.to_dict("records"), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(curve[-1]), flush=True)
        return [{"accuracy": float(sweep["accuracy"].max())}]

    objective = FinetuneObjective([], [GenerationTask("dm", train.prompt.tolist(), train.target.tolist())], 0, args.batch,
                                  0.05, Lengths(ln["query"], ln["document"], ln["prompt"], ln["target"]))
    work = Path("/tmp/reficr-dm-probe")
    shutil.rmtree(work, ignore_errors=True)  # never resume an earlier probe
    loop = TrainLoop(lm, TrainConfig(steps=args.steps, lr=args.lr, save_every=10 ** 9), objective, work,
                     validate=lambda _lm: score(loop.step), validate_every=args.eval_every)
    start = time.perf_counter()
    loop.run()
    result = {"args": vars(args), "train_turns": len(train), "heldout_turns": len(heldout),
              "majority": {"actions": "+".join(majority), **baseline}, "curve": curve,
              "minutes": round((time.perf_counter() - start) / 60, 1), "cpu_threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["majority"]), flush=True)


if __name__ == "__main__":
    main()
