"""How a reward model reads a solution: the system prompt and what closes each step, as its ``config.json`` says.

No vLLM import here: the trainers share these with the serving adapters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STEP_TAG = "<extra_0>"  # Qwen2.5-Math-PRM's step separator (id 151651 in its vocabulary); the PRM reads each one
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


# ---- how a step's score is read -----------------------------------------------------------------------------------
READ_KEY = "ponder_prm_step_read"
STEP_READS = ("tag", "min")


def step_read_from(values: Mapping[str, Any]) -> str:
    """How a checkpoint's step scores are read: ``tag`` (the score at the step tag, Qwen2.5-Math-PRM's reading and the
    default) or ``min`` (the lowest score over the step's tokens and its tag: a PRM trained with a label at every
    token, whose per-token "still right here" detects a wrong character before its tag learns to say so)."""
    read = values.get(READ_KEY, "tag")
    if read not in STEP_READS:
        raise ValueError(f"{READ_KEY}={read!r}: known readings are {', '.join(STEP_READS)}")
    return read


def configured_step_read(path: Path) -> str:
    """:func:`step_read_from` the ``config.json`` in the checkpoint folder ``path`` (``tag`` without one)."""
    config = path / "config.json"
    return step_read_from(json.loads(config.read_text()) if config.is_file() else {})


def step_spans(ids: Sequence[int], tag_id: int, first_start: int) -> list[tuple[int, int]]:
    """``(start, tag)`` token positions of every step: the first starts at ``first_start``, each later one just after
    the previous tag; each ends at (and includes) its own tag.

    >>> step_spans([7, 1, 2, 9, 3, 9], tag_id=9, first_start=1)
    [(1, 3), (4, 5)]
    """
    tags = [i for i, token in enumerate(ids) if token == tag_id]
    return list(zip([first_start, *(t + 1 for t in tags[:-1])], tags, strict=True)) if tags else []


def read_steps(token_scores: Sequence[float], spans: Sequence[tuple[int, int]], read: str) -> list[float]:
    """One score per step from per-token scores: at the tag (``tag``) or the lowest over the span (``min``).

    >>> read_steps([0.0, 0.9, 0.2, 0.8, 0.7, 0.6], [(1, 3), (4, 5)], "min")
    [0.2, 0.6]
    >>> read_steps([0.0, 0.9, 0.2, 0.8, 0.7, 0.6], [(1, 3), (4, 5)], "tag")
    [0.8, 0.6]
    """
    if read == "tag":
        return [float(token_scores[tag]) for _, tag in spans]
    return [float(min(token_scores[start : tag + 1])) for start, tag in spans]


# ---- where a checkpoint's tokenizer lives -------------------------------------------------------------------------
TOKENIZER_SUBDIR = "tokenizer"


def tokenizer_path(model: str | Path) -> str:
    """The folder to load a checkpoint's tokenizer from: its ``tokenizer/`` subfolder where it has one, else itself.

    transformers 5 loads the tokenizer of any folder whose ``config.json`` says ``model_type: qwen2`` as
    ``Qwen2Tokenizer``, whose byte-level pre-tokenizer replaces the one in ``tokenizer.json``: a character-level
    vocabulary then loses every space and newline. Ponder's Qwen2-architecture reward models therefore keep their
    tokenizer in a subfolder with no ``config.json``, which loads as the tokenizer it is (:func:`save_tokenizer`).
    """
    sub = Path(model) / TOKENIZER_SUBDIR
    return str(sub) if (sub / "tokenizer_config.json").is_file() else str(model)


def save_tokenizer(tokenizer: Any, model: str | Path) -> Path:
    """Save ``tokenizer`` where :func:`tokenizer_path` finds it for the checkpoint folder ``model``."""
    target = Path(model) / TOKENIZER_SUBDIR
    tokenizer.save_pretrained(target)
    return target
