"""Benchmark: what the shared trunk (``pipeline.trunk``) saves when the base model and the fine-tuned one embed the
same conversations, as ``evaluate`` does for ``base_embedder`` and ``retrieval`` (a benchmark, not a test).

    python bench/shared_trunk.py --n 160 --chunks 5 --out bench/results-shared-trunk.json

Systems, on the same validation contexts (ReDial valid: the test split is never read), Conv2Item instruction,
the profile's query length, batch size and inference dtype, in one run, chunk by chunk, alternating:
- ``full``: ``base.embed`` + ``tuned.embed`` (every layer twice: evaluation before the change);
- ``shared``: ``trunk_states(base, layers below the adapter)``, then ``embed_trunk`` in each model.
Each figure is the median over ``--chunks`` equal slices; ``ratio = full / shared`` per slice, medians. The
embeddings are compared too (they should be identical, bit for bit). ``tuned`` is ``models/reficr`` merged.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.embed import matmul_gflops  # noqa: E402
from pipeline import hardware, templates  # noqa: E402
from pipeline.model import RetrievableLM  # noqa: E402
from pipeline.trunk import adapter_bottom_layers, embed_trunk, num_layers, trunk_states  # noqa: E402
from stages._common import load_params  # noqa: E402


def timed(run):
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=160, help="validation contexts (the first n of ReDial valid)")
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--adapter", default=str(ROOT / "models/reficr"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    params = load_params()
    length, batch = params["lengths"]["query"], params["embed"]["batch_size"]
    turns = pd.read_parquet(ROOT / "data/instructions/turns_valid.parquet")
    texts = turns[turns["dataset"] == "redial"]["query"].tolist()[: args.n]
    dtype = hardware.resolve_dtype(params["model"]["inference_dtype"])  # as evaluate infers on this CPU
    base = RetrievableLM.load(ROOT / "models/base", device="cpu", inference_dtype=dtype)
    tuned = RetrievableLM.load(ROOT / "models/base", adapter=args.adapter, merge=True, device="cpu", inference_dtype=dtype)
    shared = adapter_bottom_layers(args.adapter)
    kwargs = dict(batch_size=batch, max_length=length, truncation_side="left")

    def full(part):
        return (base.embed(part, templates.CONV2ITEM_QUERY, **kwargs), tuned.embed(part, templates.CONV2ITEM_QUERY, **kwargs))

    def split(part):
        trunk = trunk_states(base, part, templates.CONV2ITEM_QUERY, layers=shared, **kwargs)
        return embed_trunk(base, trunk), embed_trunk(tuned, trunk)

    full(texts[:batch]), split(texts[:batch])  # warm-up
    size = max(1, len(texts) // args.chunks)
    rows, identical = [], True
    for start in range(0, len(texts), size):
        part = texts[start: start + size]
        t_full, (a_base, a_tuned) = timed(lambda: full(part))
        t_split, (b_base, b_tuned) = timed(lambda: split(part))
        identical &= bool(np.array_equal(a_base, b_base) and np.array_equal(a_tuned, b_tuned))
        rows.append({"texts": len(part), "full_s": round(t_full, 2), "shared_s": round(t_split, 2),
                     "ratio": round(t_full / t_split, 3)})
        print(rows[-1], flush=True)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "flags": sorted(hardware.cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
                    "inference_dtype": dtype,
                    "matmul_fp32_gflops": round(matmul_gflops(), 1)},
        "texts": len(texts), "query_length": length, "batch_size": batch, "layers": num_layers(base), "shared_layers": shared,
        "median_full_s_per_100": round(statistics.median(r["full_s"] / r["texts"] * 100 for r in rows), 2),
        "median_shared_s_per_100": round(statistics.median(r["shared_s"] / r["texts"] * 100 for r in rows), 2),
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "identical_embeddings": identical, "chunks": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "chunks"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
