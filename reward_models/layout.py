"""How a reward model reads a solution: the system prompt and what closes each step, as its ``config.json`` says.

No vLLM import here: the trainers share these with the serving adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
SYSTEM_KEY, SUFFIX_KEY = "ponder_prm_system", "ponder_prm_step_suffix"


def configured_layout(path: Path) -> tuple[str | None, str]:
    """The system prompt and step suffix a checkpoint's ``config.json`` asks for; Qwen2.5-Math-PRM's if it says none.

    Ponder's own PRMs read solutions as their policy writes them (``ponder_prm_system: null``, ``ponder_prm_step_suffix:
    "\\n"``: each step, a newline, the tag); a checkpoint without the keys gets Qwen's system prompt, no suffix.
    """
    config = path / "config.json"
    values = json.loads(config.read_text()) if config.is_file() else {}
    return values.get(SYSTEM_KEY, QWEN_PRM_SYSTEM), values.get(SUFFIX_KEY, "")
