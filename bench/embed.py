"""Benchmark: tokens/s of RetrievableLM.embed on real item descriptions (a benchmark, not a test).

    make bench                                   # or:
    python bench/embed.py --n 2000 --model models/base --items data/interim/redial/items.parquet

Systems, all on the same texts and batch size, in one run:
- ``arrival``: our embedder, batches in arrival order (much padding);
- ``sorted``: our embedder, length-sorted batches (the default);
- ``sorted+tokens``: length-sorted, batches filled to a token budget instead of a fixed count;
- ``sentence-transformers``: the same weights through sentence-transformers' mean pooling (causal);
- ``bf16`` and ``int8`` (dynamic int8 Linear layers) variants of ``sorted``, with their mean and minimum
  cosine to the fp32 embeddings.
Throughput counts text tokens (what both libraries embed); each system's figure is the median of the
tokens/s of ``--chunks`` equal slices. The machine's fp32 matmul rate (median of ``torch.mm`` runs) is the
ceiling: ``fraction = 2 * params * tokens/s / matmul FLOP/s``.
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
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.model.lm import RetrievableLM

INSTRUCTION = ""  # sentence-transformers gets no instruction either


def matmul_gflops(size: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def chunked_rate(run, texts: list[str], tokens: list[int], chunks: int) -> tuple[float, np.ndarray]:
    """Median tokens/s over equal slices of ``texts``; also the embeddings of all texts."""
    size = max(1, len(texts) // chunks)
    rates, parts = [], []
    for start in range(0, len(texts), size):
        part = texts[start: start + size]
        begin = time.perf_counter()
        parts.append(run(part))
        rates.append(sum(tokens[start: start + size]) / (time.perf_counter() - begin))
    return statistics.median(rates), np.concatenate(parts)


def token_budget_embed(lm: RetrievableLM, texts: list[str], budget: int, max_length: int) -> np.ndarray:
    """Length-sorted batches holding up to ``budget`` padded tokens each."""
    tokenized = lm.tokenize_for_embedding(texts, INSTRUCTION, max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(tokenized[i][0]))
    out = np.zeros((len(texts), lm.hidden_size), dtype=np.float32)
    batch: list[int] = []
    with torch.inference_mode():
        for index in order:
            width = len(tokenized[batch[0]][0]) if batch else len(tokenized[index][0])
            if batch and width * (len(batch) + 1) > budget:
                out[batch] = lm.encode([tokenized[i] for i in batch]).numpy()
                batch = []
            batch.append(index)
        if batch:
            out[batch] = lm.encode([tokenized[i] for i in batch]).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--model", default=str(ROOT / "models/base"))
    parser.add_argument("--items", default=str(ROOT / "data/interim/redial/items.parquet"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--skip", nargs="*", default=[], help="systems to leave out")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    items = pd.read_parquet(args.items)
    items = items[items.metadata_source != "title_only"]
    texts = items.sample(n=min(args.n, len(items)), random_state=0).description.tolist()
    lm = RetrievableLM.load(args.model, device="cpu")
    tokens = [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    tokens = [min(t, args.max_length) for t in tokens]
    params = sum(p.numel() for p in lm.decoder().parameters())
    peak = matmul_gflops()
    results: dict[str, dict] = {}

    def record(name: str, run, reference: np.ndarray | None = None) -> np.ndarray:
        rate, vectors = chunked_rate(run, texts, tokens, args.chunks)
        entry = {"tokens_per_s": round(rate, 1), "fraction_of_matmul_peak": round(2 * params * rate / (peak * 1e9), 3)}
        if reference is not None:
            cos = np.sum(vectors * reference, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
            entry.update(mean_cosine_to_fp32=round(float(cos.mean()), 5), min_cosine_to_fp32=round(float(cos.min()), 5))
        results[name] = entry
        print(f"{name:24s} {json.dumps(entry)}", flush=True)
        return vectors

    kw = dict(batch_size=args.batch_size, max_length=args.max_length, progress=False)
    reference = None
    if "arrival" not in args.skip:
        record("arrival", lambda part: lm.embed(part, INSTRUCTION, sort_by_length=False, **kw))
    reference = record("sorted", lambda part: lm.embed(part, INSTRUCTION, **kw))
    if "sorted+tokens" not in args.skip:
        record("sorted+tokens", lambda part: token_budget_embed(lm, part, args.token_budget, args.max_length), reference)
    if "sentence-transformers" not in args.skip:
        try:
            from sentence_transformers import SentenceTransformer, models

            body = models.Transformer(args.model, max_seq_length=args.max_length)
            if body.tokenizer.pad_token is None:
                body.tokenizer.pad_token = body.tokenizer.eos_token
            st = SentenceTransformer(modules=[body, models.Pooling(body.get_word_embedding_dimension(), "mean")], device="cpu")
            record("sentence-transformers", lambda part: st.encode(part, batch_size=args.batch_size, normalize_embeddings=True))
        except ImportError:
            print("sentence-transformers not installed: skipped (pip install sentence-transformers)")
    if "bf16" not in args.skip:
        lm16 = RetrievableLM.load(args.model, device="cpu", dtype="bfloat16")
        record("bf16", lambda part: lm16.embed(part, INSTRUCTION, **kw), reference)
        del lm16
    if "int8" not in args.skip:
        lm8 = RetrievableLM.load(args.model, device="cpu")
        lm8.model = torch.ao.quantization.quantize_dynamic(lm8.model, {torch.nn.Linear}, dtype=torch.qint8)
        record("int8", lambda part: lm8.embed(part, INSTRUCTION, **kw), reference)

    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": " ".join(["python", "bench/embed.py", *sys.argv[1:]]),
        "texts": len(texts),
        "text_tokens": int(sum(tokens)),
        "params": int(params),
        "matmul_fp32_gflops_median": round(peak, 1),
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
