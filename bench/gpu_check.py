"""CUDA-path check of the small model on a GPU machine: bf16 embedding and generation, QLoRA steps.

    python bench/gpu_check.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --items data/interim/redial/items.parquet \\
        --rec-turns data/interim/redial/rec_turns.parquet --out gpu_check.json

What it measures, on the same texts in one run:
- bidirectional attention on CUDA (a token's state changes when a later token changes);
- embedding throughput (text tokens/s, median over slices) in fp32 and bf16 on the GPU, and the cosine of
  bf16 to fp32 embeddings;
- greedy generation in bf16, batched vs one at a time;
- QLoRA (nf4, double quant, bf16 compute) training steps on real ReDial pairs: contrastive loss with in-batch
  negatives + LM loss, loss per step, seconds per step, peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.model.base_model import convert_base_model
from pipeline.model.lm import LoraSettings, RetrievableLM

QUERY = "Retrieve relevant items based on user conversation history"
ITEM = "Represent the item for retrieval"


def rate(lm, texts, tokens, slices=5, **kw):
    size = max(1, len(texts) // slices)
    rates, parts = [], []
    for start in range(0, len(texts), size):
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        parts.append(lm.embed(texts[start:start + size], ITEM, progress=False, **kw))
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(sum(tokens[start:start + size]) / (time.perf_counter() - begin))
    return statistics.median(rates), np.concatenate(parts)


def context_text(context) -> str:
    return "\n".join(f"{u['speaker']}: {u['text']}" for u in context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--items", required=True)
    parser.add_argument("--rec-turns", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    report: dict = {"torch": torch.__version__}
    import peft
    import transformers  # noqa: E401

    report["transformers"], report["peft"] = transformers.__version__, peft.__version__
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    base = Path(tempfile.mkdtemp()) / "base"
    t0 = time.perf_counter()
    report["base_manifest"] = convert_base_model("small", base, args.gguf)
    report["convert_s"] = round(time.perf_counter() - t0, 1)

    items = pd.read_parquet(args.items)
    items = items[items.metadata_source != "title_only"]
    texts = items.sample(n=min(args.n, len(items)), random_state=0).description.tolist()

    lm32 = RetrievableLM.load(base, device=args.device, dtype="float32")
    tokens = [min(len(t), 256) for t in lm32.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    ids = lm32.tokenizer(["I like horror movies a lot", "I like horror movies a cat"], add_special_tokens=False, return_tensors="pt")["input_ids"].to(lm32.device)
    with torch.no_grad():
        h = lm32.decoder()(input_ids=ids, is_causal=False).last_hidden_state[:, 0]
        c = lm32.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, 0]
    report["bidirectional_first_token_delta"] = float((h[0] - h[1]).abs().max())
    report["causal_first_token_delta"] = float((c[0] - c[1]).abs().max())

    results = {}
    for batch in (16, 64):
        r32, e32 = rate(lm32, texts, tokens, batch_size=batch)
        results[f"fp32_b{batch}"] = round(r32, 1)
    lm16 = RetrievableLM.load(base, device=args.device, dtype="bfloat16")
    for batch in (16, 64):
        r16, e16 = rate(lm16, texts, tokens, batch_size=batch)
        results[f"bf16_b{batch}"] = round(r16, 1)
    cos = np.sum(e16 * e32, axis=1)
    report["embed_tokens_per_s"] = results
    report["bf16_cosine_to_fp32"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}

    turns = pd.read_parquet(args.rec_turns)
    turns = turns[turns.split == "train"].head(64)
    prompts = [f"Conversation:\n{context_text(c)[-600:]}\nRecommend a movie." for c in turns.context[:16]]
    t0 = time.perf_counter()
    batched = lm16.generate(prompts, max_new_tokens=32, batch_size=16)
    report["generate_bf16_batch16_s"] = round(time.perf_counter() - t0, 2)
    single = [lm16.generate([p], max_new_tokens=32)[0] for p in prompts[:4]]
    report["generate_batched_equals_single"] = sum(a == b for a, b in zip(batched[:4], single))
    report["generate_sample"] = batched[0][:200]
    del lm32, lm16
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    lm = RetrievableLM.load(base, device=args.device, dtype="bfloat16", quantization="nf4", trainable=True)
    lm.attach_lora(LoraSettings(r=16, alpha=32, dropout=0.05))
    item_text = dict(zip(pd.read_parquet(args.items).item_id, pd.read_parquet(args.items).description))
    queries = [context_text(c) for c in turns.context]
    docs = [item_text[g[0]] for g in turns.gold_item_ids]
    targets = [r for r in turns.response]
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    lm.model.train()
    for step in range(args.steps):
        sl = slice((step * 8) % 64, (step * 8) % 64 + 8)
        t0 = time.perf_counter()
        q = lm.encode(lm.tokenize_for_embedding(queries[sl], QUERY, 256, truncation_side="left"))
        d = lm.encode(lm.tokenize_for_embedding(docs[sl], ITEM, 128))
        loss_cl = torch.nn.functional.cross_entropy(q @ d.T / 0.05, torch.arange(q.shape[0], device=q.device))
        loss_gen = lm.lm_loss(lm.tokenize_pairs(queries[sl], targets[sl], 256, 64))
        loss = loss_cl + loss_gen
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append([round(float(loss_cl), 4), round(float(loss_gen), 4)])
    report["qlora"] = {
        "linear4bit_layers": sum(type(m).__name__ == "Linear4bit" for m in lm.model.modules()),
        "losses_cl_gen": losses,
        "median_step_s": round(statistics.median(times[2:]), 4),
        "peak_gpu_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
