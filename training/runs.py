"""What every ``ponder train`` run shares: resolving ``--resume_from_checkpoint`` and JSON-ready config values."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint


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
