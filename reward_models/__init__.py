"""Reward models: what judges candidate solutions, behind :class:`strategies.base.Scorer`.

``load_scorer(path)`` reads the checkpoint's ``config.json`` and serves a ``*ForProcessRewardModel`` as a PRM
(per-step scores, :mod:`reward_models.vllm_prm`) or a ``*ForSequenceClassification`` as an ORM (one score per
solution, :mod:`reward_models.orm`), each on its own in-process vLLM engine. A causal LM (``LlamaForCausalLM``,
``MistralForCausalLM``, ``Qwen2ForCausalLM``) is served as a PRM in a named format, ``math_shepherd`` or ``rlhflow``
(:mod:`reward_models.causal_prm`), or by its own token probabilities, ``likelihood``
(:mod:`reward_models.likelihood`; the policy as its own verifier): the ``format`` argument, else the checkpoint's
``config.json`` key ``ponder_prm_format``. :mod:`strategies.aggregation` reduces step scores to one number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from strategies.base import Scorer

log = logging.getLogger("ponder.reward_models")
CAUSAL_LM_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


# qwen: a *ForProcessRewardModel (Qwen2.5-Math-PRM layout); the others read a causal LM
PRM_FORMATS = ("qwen", "math_shepherd", "rlhflow", "likelihood")


def reads_policy_itself(path: str | Path, policy: str | Path, format: str | None = None) -> bool:
    """Whether the reward model at ``path`` is the policy's own likelihood: the same checkpoint, format
    ``likelihood`` (the ``format`` argument, else ``ponder_prm_format`` in its ``config.json``)."""
    if Path(path).resolve() != Path(policy).resolve():
        return False
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError:
        return False  # load_scorer says what is wrong with it
    return (format or config.get("ponder_prm_format")) == "likelihood"


async def load_scorer_beside(engine: Any, policy: str | Path, path: str | Path, **kwargs: Any) -> Scorer:
    """:func:`load_scorer` for a server whose policy runs on ``engine`` (loaded from ``policy``), except that the
    policy's own likelihood (:func:`reads_policy_itself`) runs on that in-process vLLM engine, reading the steps
    the policy sampled from the samples (:mod:`reward_models.self_likelihood`) instead of starting a second one."""
    if hasattr(engine, "llm") and reads_policy_itself(path, policy, kwargs.get("format")):
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from reward_models.self_likelihood import SelfLikelihoodPRM

        log.info("the reward model is the policy's own likelihood: read on the policy's engine")
        return SelfLikelihoodPRM(engine, str(path))
    return await load_scorer(str(path), **kwargs)


async def load_scorer(
    path: str | Path,
    *,
    format: str | None = None,
    memory_fraction: float = 0.1,
    kv_cache_gib: float | None = None,
    step_tag: str | None = None,
    good_token: str | None = None,
    bad_token: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
) -> Scorer:
    """Start the reward model at ``path`` (a local checkpoint folder); the event loop runs while vLLM loads it.

    ``format`` (one of :data:`PRM_FORMATS`; None: ``ponder_prm_format`` from ``config.json``, else by architecture)
    says how to read a PRM. ``good_token``/``bad_token`` apply to the causal-LM formats; ``step_tag`` to ``qwen`` and
    ``math_shepherd``. None keeps each format's default.
    """
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"reward model {str(path)!r}: no config.json there (expected a local checkpoint)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"reward model {str(path)!r}: config.json is not valid JSON ({exc})") from exc
    architectures = config.get("architectures") or []
    format = format or config.get("ponder_prm_format")
    if format is not None and format not in PRM_FORMATS:
        raise ValueError(f"reward model {str(path)!r}: unknown PRM format {format!r}; known: {', '.join(PRM_FORMATS)}")
    kwargs = {
        "memory_fraction": memory_fraction,
        "kv_cache_gib": kv_cache_gib,
        "dtype": dtype,
        "max_model_len": max_model_len,
    }
    is_prm = any(arch.endswith("ForProcessRewardModel") for arch in architectures)
    is_causal_lm = any(arch in CAUSAL_LM_ARCHITECTURES for arch in architectures)
    if format in ("math_shepherd", "rlhflow", "likelihood"):
        if not is_causal_lm:
            raise ValueError(
                f"reward model {str(path)!r}: PRM format {format!r} needs a causal LM "
                f"({', '.join(CAUSAL_LM_ARCHITECTURES)}), not {architectures}"
            )
        if format == "likelihood":
            # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
            from reward_models.likelihood import LikelihoodPRM

            return await LikelihoodPRM.create(str(path), **kwargs)
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from reward_models.causal_prm import CausalLMProcessRewardModel

        return await CausalLMProcessRewardModel.create(
            str(path), format=format, good_token=good_token, bad_token=bad_token, step_tag=step_tag, **kwargs
        )
    if format == "qwen" and not is_prm:
        raise ValueError(
            f"reward model {str(path)!r}: PRM format 'qwen' needs a *ForProcessRewardModel, not {architectures}"
        )
    if is_prm:
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from reward_models.vllm_prm import VLLMProcessRewardModel

        return await VLLMProcessRewardModel.create(str(path), step_tag=step_tag, **kwargs)
    if any(arch.endswith("ForSequenceClassification") for arch in architectures):
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from reward_models.orm import VLLMOutcomeRewardModel

        return await VLLMOutcomeRewardModel.create(str(path), **kwargs)
    if is_causal_lm:
        raise ValueError(
            f"reward model {str(path)!r}: {architectures} is a causal LM, neither a process reward model "
            "(*ForProcessRewardModel) nor a sequence classifier; to serve it as a PRM that judges steps by its "
            "'+'/'-' token probabilities, name its format: format='math_shepherd' or 'rlhflow'; by its own token "
            "probabilities: 'likelihood' (ponder serve --prm-format), or ponder_prm_format in its config.json"
        )
    raise ValueError(
        f"reward model {str(path)!r}: architectures {architectures} are neither a process reward "
        "model (*ForProcessRewardModel) nor a sequence classifier (*ForSequenceClassification)"
    )
