"""What this machine can do fast: detected, never assumed (the CPUs here differ: AVX2-only EPYC, EPYC with
AVX512-BF16, Sapphire Rapids with AMX).

bfloat16 matmuls are fast on CPUs with AVX512-BF16 or AMX and on CUDA GPUs; on an AVX2-only CPU torch emulates
them and they are *slower* than float32. A dtype of ``auto`` resolves to bfloat16 where it is fast, float32
elsewhere, so one profile serves every machine (its numbers then move with the CPU, as they do anyway).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bfloat16(device: str = "cpu") -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in FAST_BF16_FLAGS)


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """``auto`` -> ``bfloat16`` where bf16 matmuls are fast on ``device``, else ``float32``; other names unchanged."""
    if name != "auto":
        return name
    return "bfloat16" if fast_bfloat16(device) else "float32"
