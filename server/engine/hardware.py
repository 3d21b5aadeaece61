"""Engine settings for the hardware. Which number format it computes fast: bf16 where it is native, float32 where
bf16 is emulated; and whether to skip vLLM's torch.compile warm-up (``PONDER_ENFORCE_EAGER``).

bf16 halves memory traffic, but a CPU without bf16 instructions (AVX2-only x86, such as AMD Zen 3) emulates its
matrix products: measured on a 2-core AMD EPYC (Zen 3), a training step of the 4-layer, 256-wide policy took 9.7 s
under bf16 autocast against 0.7 s in float32, and vLLM sampled 1,400 tokens/s in float32 against 600 in bf16. On a
CPU with AVX512_BF16 or AMX, bf16 is the faster of the two (about 2x in training), and on a GPU it is the norm.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
EAGER_ENV = "PONDER_ENFORCE_EAGER"


def eager_from_env() -> bool:
    """``PONDER_ENFORCE_EAGER=1``: start engines with vLLM's ``enforce_eager`` (no torch.compile warm-up; on the
    2-core AMD EPYC the game24 policy's engine was up in 21 s instead of 29 s). ``ponder serve --enforce-eager`` sets
    it, and the benchmarks pass it on to vLLM's own server."""
    return os.environ.get(EAGER_ENV, "").strip().lower() in ("1", "true", "yes")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is unreadable or has none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512_BF16 or AMX-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def accelerator_available() -> bool:
    """True where torch sees a GPU (or another accelerator); False on a CPU-only machine or without torch."""
    try:
        import torch
    except ImportError:
        return False
    return torch.accelerator.is_available()


def fast_bf16() -> bool:
    """Whether bf16 is the fast format here: any accelerator torch sees, or a CPU with native bf16."""
    return accelerator_available() or cpu_has_native_bf16()


def engine_dtype(requested: str = "auto") -> str:
    """vLLM's ``dtype``: ``auto`` (the checkpoint's, often bf16) becomes float32 where bf16 would be emulated."""
    return "float32" if requested == "auto" and not fast_bf16() else requested
