"""Diagnostic: does the DM head (``pipeline.dm_policy.DMHead``) carry over from one split of the IARD *training*
dialogues to another, or is ``validate_dm``'s choice one lucky split?

    python bench/dm_head.py --splits 5      # writes bench/results-dm-head.json (seconds; no model is loaded)

For each seed, ``validation_split`` holds out ``eval.dm_validation.fraction`` of the training dialogues (all their
turns), fits the choices, their shares and the head at each L2 (plus ``--l2``) on the other dialogues, and scores
the prior alone (weight 0) on the held-out turns: the training shares (= the majority action set) against the head.
The IARD test dialogues are never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.dm_policy import HEAD, SHARES, DMHead, dm_sweep, fit_choices, validation_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5, help="validation splits (seeds 0..N-1)")
    parser.add_argument("--l2", type=float, nargs="*", default=[0.001], help="L2 strengths besides the params'")
    parser.add_argument("--out", default=str(ROOT / "bench/results-dm-head.json"))
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    v = params["eval"]["dm_validation"]
    l2s = sorted(set(v["head_l2"]) | set(args.l2), reverse=True)
    dm_train = pd.read_parquet(ROOT / "data/instructions/dm_train.parquet")
    rows = []
    for seed in range(args.splits):
        fit, valid = validation_split(dm_train, v["fraction"], 0, seed)
        actions = [list(a) for a in fit["actions"]]
        choices, shares = fit_choices(actions)
        start = time.perf_counter()
        priors = [(SHARES, None, np.asarray(shares))]
        priors += [(HEAD, l2, DMHead.fit(fit["prompt"].tolist(), actions, choices, l2).log_prior(valid["prompt"].tolist()))
                   for l2 in l2s]
        sweep = dm_sweep(np.zeros((len(valid), len(choices))), choices, priors, [list(a) for a in valid["actions"]], [0])
        rows += [{"seed": seed, "dialogues": int(valid["dialogue_id"].nunique()), **r} for r in sweep.to_dict("records")]
        print(f"seed {seed}: {len(valid)} turns, {time.perf_counter() - start:.1f} s;",
              ", ".join(f"{r['prior']}{'' if r['l2'] != r['l2'] or r['l2'] is None else ' ' + str(r['l2'])} "
                        f"{r['accuracy']:.3f}/{r['micro_f1']:.3f}" for r in sweep.to_dict("records")))
    table = pd.DataFrame(rows)
    table["l2"] = table["l2"].astype(float)
    summary = (table.groupby(["prior", "l2"], dropna=False)[["accuracy", "micro_f1"]].agg(["mean", "std", "min"])
               .round(3).reset_index())
    print(summary.to_string(index=False))
    result = {"fraction": v["fraction"], "splits": args.splits,
              "rows": [{k: (None if isinstance(x, float) and x != x else x) for k, x in r.items()} for r in rows]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
