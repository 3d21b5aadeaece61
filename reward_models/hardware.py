"""Engine settings for the hardware. Which number format it computes fast: bf16 where it is native, float32 where
bf16 is emulated; whether to skip vLLM's torch.compile warm-up (by default; ``PONDER_ENFORCE_EAGER``); and which CPU
cores a reward model's engine computes on (``PONDER_SCORER_CPUS``).

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
# Engines skip vLLM's torch.compile warm-up unless asked for it (enforce_eager=False, or PONDER_ENFORCE_EAGER=0).
# On the 2-core AMD EPYC compiling added ~15-30 s to every start of each default model (vLLM 0.32 compiles again at
# every start: its compile cache fails to load), which ponder serve's 30 s start cannot afford; it buys 14% more
# sampling throughput (a best_of_n N=16 request 8% sooner) and 27% more single-stream speed (results/startup).
DEFAULT_ENFORCE_EAGER = True
EAGER_ENV = "PONDER_ENFORCE_EAGER"
SCORER_CPUS_ENV = "PONDER_SCORER_CPUS"
VLLM_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"  # vLLM's CPU backend: the cores its model worker binds its threads to


def eager_from_env() -> bool:
    """Whether an engine whose caller leaves ``enforce_eager`` out skips vLLM's torch.compile warm-up:
    :data:`DEFAULT_ENFORCE_EAGER`, unless ``PONDER_ENFORCE_EAGER`` says otherwise (``1``/``true``/``yes``, or
    ``0``/``false``/``no`` to compile). The benchmarks pass it on to vLLM's own server."""
    value = os.environ.get(EAGER_ENV, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return DEFAULT_ENFORCE_EAGER


def allowed_cpus() -> set[int]:
    """The CPU cores this process may run on (its affinity on Linux, else all of them)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def parse_cores(text: str) -> set[int]:
    """Core ids from a list such as ``"1"``, ``"0,2"`` or ``"12-15"`` (vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` syntax).

    >>> sorted(parse_cores("0,12-14"))
    [0, 12, 13, 14]
    """
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def scorer_cpu_bind(allowed: set[int] | None = None, *, requested: str | None = None) -> str | None:
    """The cores a reward model's own engine binds to on vLLM's CPU backend (a ``VLLM_CPU_OMP_THREADS_BIND`` list),
    or None to leave vLLM's binding alone.

    vLLM binds every engine's model worker to the same cores (all but the last, which it leaves to the engine's
    scheduler and the server), so a policy and a reward model in one process share those cores while the last one
    idles; on a 2-core machine both workers ran on core 0. By default the reward model's worker takes that last
    core instead (core 1 of 2), apart from the policy's. ``PONDER_SCORER_CPUS`` names other cores (``"1"``,
    ``"12-15"``; on a large machine a big reward model may want several, at the cost of sharing them with the
    policy), or ``shared`` keeps vLLM's own binding. A ``VLLM_CPU_OMP_THREADS_BIND`` set by the user applies to every
    engine, unless ``PONDER_SCORER_CPUS`` names the reward model's. None where torch sees a GPU: vLLM reads the
    binding on its CPU backend only. Raises ValueError for a list that is not core ids this process may use.
    """
    explicit = (requested if requested is not None else os.environ.get(SCORER_CPUS_ENV, "")).strip()
    allowed = allowed_cpus() if allowed is None else allowed
    if explicit == "shared":
        return None
    if explicit:
        try:
            cores = parse_cores(explicit)
        except ValueError:
            cores = set()
        if not cores or not cores <= allowed:
            name = SCORER_CPUS_ENV if requested is None else "scorer_cpus"
            raise ValueError(
                f"{name}={explicit!r}: expected core ids such as 1 or 0,2-3 among this process's cores "
                f"{sorted(allowed)}, or 'shared'"
            )
        return explicit
    if VLLM_BIND_ENV in os.environ or accelerator_available() or len(allowed) < 2:
        return None
    return str(max(allowed))


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
        # deferred import: torch/transformers only on this path
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
