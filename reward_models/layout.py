"""How a reward model reads a solution: the system prompt and what closes each step, as its ``config.json`` says.

No vLLM import here: the trainers share these with the serving adapters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
SYSTEM_KEY, SUFFIX_KEY = "ponder_prm_system", "ponder_prm_step_suffix"


Layout = tuple[str | None, str]  # (system prompt, step suffix)


def layout_from(values: Mapping[str, Any]) -> Layout:
    """The layout a checkpoint's config values ask for; Qwen2.5-Math-PRM's (its system prompt, no suffix) if none.

    Ponder's own PRMs read solutions as their policy writes them (``ponder_prm_system: null``, ``ponder_prm_step_suffix:
    "\\n"``: each step, a newline, the tag).
    """
    return values.get(SYSTEM_KEY, QWEN_PRM_SYSTEM), values.get(SUFFIX_KEY, "")


def configured_layout(path: Path) -> Layout:
    """:func:`layout_from` the ``config.json`` in the checkpoint folder ``path`` (Qwen's layout without one)."""
    config = path / "config.json"
    return layout_from(json.loads(config.read_text()) if config.is_file() else {})
