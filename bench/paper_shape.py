"""One training step of the paper's joint objective at GritLM-7B's exact shape, here (CPU, or a GPU where there is
one), and the memory/time plan for the paper's lengths derived from it.

    python bench/paper_shape.py --out bench/results-paper-shape-cpu.json            # CPU: bf16 weights, ~15 GiB
    python bench/paper_shape.py --device cuda --scales 128 512 --out bench/results-paper-shape-h100.json

The model is ``pipeline.model.architectures.GRITLM_7B`` (32 layers, width 4096, 32/8 heads, MLP 14336, vocabulary
32,000) with random weights, LoRA r=64 / alpha 16 / dropout 0.05 on all seven projections of every layer, gradient
checkpointing, AdamW on the LoRA weights. One step = the paper's loss on one query with 1 + 9 documents (Eq. 4-5,
in-batch on) plus one generation instance (Eq. 6), joint (Eq. 7), at lengths in the paper's proportions (query s,
document 2s, prompt 4s, target s; the paper's s is 512), at two scales s, so that time and memory per token can be read off. Token ids are random below 32,000 (the shape is the point, not the text).

A first, unmeasured step at a small scale lets AdamW allocate its moments. On a CPU every block of 64 KiB or more
is mapped on its own (``exact_rss``: freed activations leave the resident set, as a GPU allocator's count follows
live tensors) and before each step the peak-RSS window is reset, so a step's growth over its starting RSS is its
activations and transients. Resident memory stays a noisy measure on a CPU: at full depth, after 14 GiB of weights
were built, the growth per token came out several times what the layer inputs a checkpointed step keeps can explain.
So the plan takes activation memory from a layer model measured first, in a fresh process: the same shape at 2 and
8 layers, growth per token = fixed + per layer x layers, read at 32 (``layer_model``); the full-depth figure stays
in the JSON as an upper bound. On a GPU the allocator's own peak is used. The weights are bfloat16, not nf4: bitsandbytes quantizes on the CPU (the tests run QLoRA there, and the gritlm-7b
twin runs the profile's nf4 path through the DAG), but a random 7B model would have to be built in bf16 first and
quantized layer by layer, which this script does not do. nf4 enters the plan analytically (4.127 bits a weight with
double quantization); activations, LoRA and optimizer memory do not depend on it.

Before the step it checks, at this shape, that attention is bidirectional when embedding and causal when generating
(a changed last token moves the first token's last hidden state only in the first). Written: the config, the machine,
per scale the tokens, forward / backward / optimizer seconds, peak resident memory, the losses (finite) and whether
every LoRA matrix moved; then the plan for the paper's profile on A100 40/80 GB and H100 (``plan``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.hardware import cpu_flags  # noqa: E402
from pipeline.model.architectures import GRITLM_7B, miniature, random_mistral  # noqa: E402
from pipeline.model.lm import LoraSettings, RetrievableLM  # noqa: E402
from pipeline.training.losses import joint_loss, mined_negatives_loss  # noqa: E402

PAPER = {"query": 512, "document": 1024, "prompt": 2048, "target": 512}  # profiles/gritlm-7b.yaml lengths
GROUP = 10  # 1 positive + 9 negatives
NF4_BITS = 4.127  # nf4 with double quantization: 4 bits + 8-bit absmax per 64 weights, itself quantized per 256
GPUS = {"A100 40GB": (40, 312e12), "A100 80GB": (80, 312e12), "H100 80GB SXM": (80, 989e12)}  # GiB, dense bf16 FLOP/s
MFU = (0.25, 0.45)  # the share of peak a QLoRA step with checkpointing reaches on a GPU: assumed, not measured here


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def exact_rss() -> None:
    """Every allocation of 64 KiB or more gets its own mapping, returned to the OS when freed (glibc's default raises
    this threshold as large blocks are freed, and freed activations would then stay resident): resident memory then
    follows the tensors alive, as a GPU allocator's count does."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def reset_peak() -> None:
    """Give freed memory back to the OS, then start a new peak-RSS window (Linux: writing 5 to clear_refs resets
    VmHWM), so that a step's growth is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def gib(kib: int) -> float:
    return round(kib / 2**20, 3)


def build(shape: dict, device: str, tokenizer_dir: Path, seed: int) -> tuple[RetrievableLM, float]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # only its pad id is used: the ids fed are random
    start = time.perf_counter()
    model = random_mistral(shape | {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}, "bfloat16",
                           "cuda" if device == "cuda" else "cpu", seed)
    lm = RetrievableLM(model, tokenizer)
    return lm, time.perf_counter() - start


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, GRITLM_7B["vocab_size"]) for _ in range(n)]


@torch.no_grad()
def attention_check(lm: RetrievableLM, rng: random.Random) -> dict:
    """The first token's last hidden state when the last token changes: moved when embedding, unmoved when generating."""
    ids = torch.tensor([random_ids(rng, 8)], device=lm.device)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % GRITLM_7B["vocab_size"]
    bi = [lm.decoder()(input_ids=x, is_causal=False).last_hidden_state[0, 0].float() for x in (ids, changed)]
    causal = [lm.model(input_ids=x, output_hidden_states=True).hidden_states[-1][0, 0].float() for x in (ids, changed)]
    return {"bidirectional_first_token_delta": float((bi[0] - bi[1]).abs().max()),
            "causal_first_token_delta": float((causal[0] - causal[1]).abs().max())}


def one_step(lm: RetrievableLM, optimizer, scale: int, rng: random.Random, temperature: float) -> dict:
    lengths = {"query": scale, "document": 2 * scale, "prompt": 4 * scale, "target": scale}
    prefix = min(8, scale // 2)  # instruction tokens, left out of the mean pool as the real prefix is
    query = [(random_ids(rng, lengths["query"]), prefix)]
    docs = [(random_ids(rng, lengths["document"]), prefix) for _ in range(GROUP)]
    generation = [(random_ids(rng, lengths["prompt"] + lengths["target"]), lengths["prompt"])]
    generated = lengths["prompt"] + lengths["target"]
    tokens = lengths["query"] + GROUP * lengths["document"] + generated
    lora = {n: p.detach().clone() for n, p in lm.model.named_parameters() if p.requires_grad}
    reset_peak()
    before = status_kib("VmRSS")
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    q, d = lm.encode(query), lm.encode(docs)
    out = joint_loss(mined_negatives_loss(q, d, temperature, GROUP, in_batch=True), lm.lm_loss(generation), 1.0, 1.0)
    sync()
    t1 = time.perf_counter()
    out.loss.backward()
    sync()
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    t3 = time.perf_counter()
    moved = [n for n, p in lm.model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), lora[n])]
    row = {"scale": scale, "lengths": lengths, "tokens": tokens, "generated": generated, "forward_s": round(t1 - t0, 2),
           "backward_s": round(t2 - t1, 2), "optimizer_s": round(t3 - t2, 2), "step_s": round(t3 - t0, 2),
           "rss_before_gib": gib(before), "peak_rss_gib": gib(status_kib("VmHWM")),
           "loss": round(float(out.loss), 4), "loss_cl": round(float(out.loss_cl), 4),
           "loss_gen": round(float(out.loss_gen), 4), "finite": bool(torch.isfinite(out.loss)),
           "lora_tensors_moved": len(moved), "lora_tensors": len(lora)}
    if lm.device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return row


def parameter_counts(lm: RetrievableLM) -> dict:
    base = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model
    linear = sum(m.weight.numel() for n, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in n and "lora" not in n)
    total = sum(p.numel() for n, p in base.named_parameters() if "lora" not in n)
    lora = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    return {"total": total, "decoder_linear": linear, "other": total - linear, "lora": lora}


def step_tokens(profile: dict) -> dict:
    """Tokens of one step of the profile at its length caps (an upper bound: most texts are shorter): those embedded
    (queries and documents) and those generated through the LM head (prompt + target)."""
    ln, f, w = profile["lengths"], profile["finetune"], profile["warmup"]
    tasks = 2  # Conv2Item and Conv2Conv (the paper's objectives: no catalogue task)
    return {"finetune_embedded": tasks * f["retrieval_batch"] * (ln["query"] + (1 + profile["negatives"]) * ln["document"]),
            "finetune_generated": f["generation_batch"] * (ln["prompt"] + ln["target"]),
            "warmup_embedded": tasks * w["batch_size"] * (ln["query"] + ln["document"]),
            "finetune_steps": f["steps"], "warmup_steps": w["steps"]}


def step_flops(shape: dict, counts: dict, embedded: int, generated: int) -> float:
    """A training step's FLOPs with frozen base weights and gradient checkpointing: per token, forward, the
    checkpointed layer's recomputation and the input gradients through the base weights (2 + 2 + 2 per weight) and
    the LoRA weights' own gradients; the LM head on generated tokens (forward and input gradient). Attention's
    quadratic term is left out (a few percent at 1,024 tokens)."""
    head = 4 * shape["vocab_size"] * shape["hidden_size"]
    return 6 * (counts["decoder_linear"] + counts["lora"]) * (embedded + generated) + head * generated


def growth_per_token(rows: list[dict]) -> float:
    """GiB a step grows by per token: the slope between the two scales of ``rows``."""
    a, b = rows[0], rows[-1]
    growth = [r.get("peak_gpu_gib", r["peak_rss_gib"]) - (0 if "peak_gpu_gib" in r else r["rss_before_gib"]) for r in (a, b)]
    return (growth[1] - growth[0]) / (b["tokens"] - a["tokens"])


def layer_model(by_layers: dict[int, list[dict]], layers: int) -> dict:
    """Growth per token as ``fixed + per_layer * layers``, fitted on two shallow copies of the shape (the same
    width, heads, vocabulary), evaluated at ``layers``."""
    (l1, r1), (l2, r2) = sorted(by_layers.items())
    g1, g2 = growth_per_token(r1), growth_per_token(r2)
    per_layer = (g2 - g1) / (l2 - l1)
    return {"layers": [l1, l2], "gib_per_token": [round(g1, 6), round(g2, 6)],
            "per_layer_gib_per_token": round(per_layer, 7), "fixed_gib_per_token": round(g1 - per_layer * l1, 6),
            "at_full_depth_gib_per_token": round(g1 + per_layer * (layers - l1), 6)}


def plan(shape: dict, rows: list[dict], counts: dict, profile: dict, layer_rows: dict[int, list[dict]] | None = None) -> dict:
    """Peak memory and time of the profile's steps on each GPU, each figure with what it comes from: time from
    ``rows``; activation memory per token from the layer model of ``layer_rows`` where given (the CPU), else from
    the growth of ``rows`` between their two scales (a GPU's allocator count)."""
    measured_full = growth_per_token(rows)
    model = layer_model(layer_rows, shape["num_hidden_layers"]) if layer_rows else None
    per_token_gib = model["at_full_depth_gib_per_token"] if model else measured_full
    measured_flops = [step_flops(shape, counts, r["tokens"] - r["generated"], r["generated"]) for r in rows]
    tokens = step_tokens(profile)
    finetune = step_flops(shape, counts, tokens["finetune_embedded"], tokens["finetune_generated"])
    warmup = step_flops(shape, counts, tokens["warmup_embedded"], 0)
    weights_gib = (counts["decoder_linear"] * NF4_BITS / 8 + counts["other"] * 2) / 2**30
    lora_gib = counts["lora"] * 16 / 2**30  # fp32 weight, gradient and two AdamW moments
    activations_gib = per_token_gib * (tokens["finetune_embedded"] + tokens["finetune_generated"])
    peak_gib = weights_gib + lora_gib + activations_gib + 1.0
    out = {"measured": {"full_depth_growth_gib_per_token": round(measured_full, 6), "layer_model": model,
                        "activation_gib_per_token": round(per_token_gib, 6),
                        "step_seconds_per_token": [round(r["step_s"] / r["tokens"], 5) for r in rows],
                        "effective_tflop_s": [round(f / r["step_s"] / 1e12, 3) for f, r in zip(measured_flops, rows)]},
           "assumed": {"nf4_bits": NF4_BITS, "mfu": MFU, "cuda_context_gib": 1.0},
           "tokens_per_step": tokens,
           "flops_per_step": {"finetune": f"{finetune:.3e}", "warmup": f"{warmup:.3e}"},
           "memory_gib": {"weights_nf4": round(weights_gib, 2), "lora_and_adamw": round(lora_gib, 2),
                          "activations_finetune_step": round(activations_gib, 2), "peak_estimate": round(peak_gib, 1)},
           "gpus": {}}
    for name, (memory, peak) in GPUS.items():
        step = [finetune / (peak * m) for m in reversed(MFU)]
        warm = [warmup / (peak * m) for m in reversed(MFU)]
        hours = [(tokens["finetune_steps"] * s + tokens["warmup_steps"] * w) / 3600 for s, w in zip(step, warm)]
        out["gpus"][name] = {"fits": peak_gib <= memory * 0.95, "finetune_step_s": [round(s, 1) for s in step],
                             "warmup_step_s": [round(s, 2) for s in warm], "training_hours": [round(h, 1) for h in hours]}
    return out


def for_training(lm: RetrievableLM) -> torch.optim.Optimizer:
    """LoRA as the gritlm-7b profile sets it, gradient checkpointing, training mode; AdamW on the LoRA weights."""
    lm.attach_lora(LoraSettings(r=64, alpha=16, dropout=0.05, layers=None), seed=0)
    lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.model.train()
    return torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=2e-5)


def trained(shape: dict, device: str, tokenizer: Path) -> tuple[RetrievableLM, torch.optim.Optimizer, float]:
    """The shape with random weights, ready for ``one_step``."""
    lm, build_s = build(shape, device, tokenizer, seed=0)
    return lm, for_training(lm), build_s


def memory_rows(shape: dict, args, rng: random.Random) -> list[dict]:
    lm, optimizer, _ = trained(shape, args.device, args.tokenizer)
    one_step(lm, optimizer, args.warmup_scale, rng, temperature=0.02)
    rows = [one_step(lm, optimizer, scale, rng, temperature=0.02) for scale in args.scales]
    print(shape["num_hidden_layers"], "layers:", [(r["tokens"], r["peak_rss_gib"] - r["rss_before_gib"]) for r in rows], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--scales", type=int, nargs=2, default=[16, 48], help="two query lengths s (paper: 512)")
    parser.add_argument("--warmup-scale", type=int, default=8,
                        help="an unmeasured first step (AdamW allocates its moments there)")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models/base", help="a model folder with a tokenizer")
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles/gritlm-7b.yaml")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--miniature", action="store_true", help="the miniature twin's shape (a quick trial run)")
    parser.add_argument("--memory-layers", type=int, nargs="*", default=[2, 8],
                        help="CPU: the layer counts of the memory model (none: the full depth's growth is used)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import yaml

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    shape = miniature(GRITLM_7B) if args.miniature else GRITLM_7B
    layer_steps = {}
    if args.device == "cpu":
        exact_rss()
        for layers in args.memory_layers:  # first, in a fresh process: how growth per token scales with depth
            layer_steps[layers] = memory_rows(shape | {"num_hidden_layers": layers}, args, rng)
    lm, build_s = build(shape, args.device, args.tokenizer, seed=0)
    result = {"config": shape, "weights": "bfloat16 (random)", "device": args.device,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "fast_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx")),
                          "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
              "build_s": round(build_s, 1), "rss_after_build_gib": gib(status_kib("VmRSS")), "layer_steps": layer_steps}
    print(f"built in {build_s:.0f} s, RSS {result['rss_after_build_gib']} GiB", flush=True)
    result["attention"] = attention_check(lm, rng)
    print(result["attention"], flush=True)
    optimizer = for_training(lm)
    result["parameters"] = parameter_counts(lm)
    result["warmup_step"] = one_step(lm, optimizer, args.warmup_scale, rng, temperature=0.02)
    print(result["warmup_step"], flush=True)
    result["steps"] = []
    for scale in args.scales:
        row = one_step(lm, optimizer, scale, rng, temperature=0.02)
        print(row, flush=True)
        result["steps"].append(row)
    result["plan"] = plan(shape, result["steps"], result["parameters"], yaml.safe_load(args.profile.read_text()),
                          result["layer_steps"] or None)
    result["checks"] = {"finite": all(r["finite"] for r in result["steps"]),
                        "lora_moved": all(r["lora_tensors_moved"] == r["lora_tensors"] for r in result["steps"]),
                        "bidirectional": result["attention"]["bidirectional_first_token_delta"] > 1e-4,
                        "causal": result["attention"]["causal_first_token_delta"] == 0.0,
                        "time_linear_in_tokens": math.isclose(*result["plan"]["measured"]["step_seconds_per_token"],
                                                              rel_tol=0.35)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["plan"], indent=1))


if __name__ == "__main__":
    main()
