"""Reward models: what judges candidate solutions, behind :class:`strategies.base.Scorer`.

``load_scorer(path)`` reads the checkpoint's ``config.json`` and serves a ``*ForProcessRewardModel`` as a PRM
(per-step scores, :mod:`reward_models.vllm_prm`) or a ``*ForSequenceClassification`` as an ORM (one score per
solution, :mod:`reward_models.orm`), each on its own in-process vLLM engine. :mod:`reward_models.aggregation`
reduces step scores to one number.
"""

from __future__ import annotations

import json
from pathlib import Path

from strategies.base import Scorer


async def load_scorer(
    path: str | Path,
    *,
    memory_fraction: float = 0.1,
    kv_cache_gib: float | None = None,
    step_tag: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
) -> Scorer:
    """Start the reward model at ``path`` (a local checkpoint folder); the event loop runs while vLLM loads it."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"reward model {str(path)!r}: no config.json there (expected a local checkpoint)")
    try:
        architectures = json.loads(config_path.read_text()).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise ValueError(f"reward model {str(path)!r}: config.json is not valid JSON ({exc})") from exc
    kwargs = {
        "memory_fraction": memory_fraction,
        "kv_cache_gib": kv_cache_gib,
        "dtype": dtype,
        "max_model_len": max_model_len,
    }
    if any(arch.endswith("ForProcessRewardModel") for arch in architectures):
        from reward_models.vllm_prm import VLLMProcessRewardModel

        return await VLLMProcessRewardModel.create(str(path), step_tag=step_tag, **kwargs)
    if any(arch.endswith("ForSequenceClassification") for arch in architectures):
        from reward_models.orm import VLLMOutcomeRewardModel

        return await VLLMOutcomeRewardModel.create(str(path), **kwargs)
    raise ValueError(
        f"reward model {str(path)!r}: architectures {architectures} are neither a process reward "
        "model (*ForProcessRewardModel) nor a sequence classifier (*ForSequenceClassification)"
    )
