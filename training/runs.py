"""What every ``ponder train`` run shares: the precision, ``--resume_from_checkpoint`` and JSON-ready config values."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from reward_models.hardware import accelerator_available, fast_bf16

BF16_HELP = (
    "bf16 autocast. Default: on where bf16 is native (a GPU, or a CPU with AVX512_BF16/AMX: about 2x float32), "
    "off where it would be emulated (AVX2-only CPUs: over 10x slower than float32)."
)


def settle_precision(config: Any) -> None:
    """Before TrainingArguments' own checks: ``use_cpu`` on a CPU-only machine (transformers wants it for autocast
    there) and ``bf16`` left unset (None) resolved to whether this hardware computes bf16 fast."""
    if not accelerator_available():
        config.use_cpu = True
    if config.bf16 is None:
        config.bf16 = fast_bf16()


def resume_path(config: Any) -> str | None:
    """``resume_from_checkpoint``: a folder, or ``last``/``true`` for the newest checkpoint in ``output_dir``."""
    wanted = config.resume_from_checkpoint
    if wanted is None or str(wanted).lower() in ("false", "none", ""):
        return None
    if str(wanted).lower() in ("last", "true"):
        last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint={wanted}: no checkpoint-* folder in {config.output_dir}")
        return last
    return str(wanted)


def plain_value(value: Any) -> Any:
    """A JSON-ready config value (TrainingArguments keeps some as enums)."""
    return value.value if isinstance(value, Enum) else value
