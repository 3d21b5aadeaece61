"""Reward models: what judges candidate solutions, behind :class:`strategies.base.Scorer`.

``load_scorer(path)`` serves a checkpoint on its own in-process vLLM engine in one of the registered formats
(:mod:`reward_models.registry`): the ``format`` argument, else the checkpoint's ``config.json`` key
``ponder_prm_format``, else the first format that detects its architecture. A ``*ForProcessRewardModel`` is a PRM
(per-step scores, ``qwen``), a ``*ForSequenceClassification`` an ORM (one score per solution, ``orm``); a causal LM
is read as a PRM only in a named format: ``math_shepherd`` or ``rlhflow`` (its '+'/'-' token, Math-Shepherd's and
RLHFlow's layouts) or ``likelihood`` (its own token probabilities; the policy as its own verifier).
:mod:`strategies.aggregation` reduces step scores to one number.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

from reward_models.registry import (
    CAUSAL_LMS,
    FORMATS,
    EngineOptions,
    RewardModelFormat,
    detect_format,
    get_format,
    register_format,
)
from strategies.base import Engine, Scorer

log = logging.getLogger("ponder.reward_models")

register_format(
    RewardModelFormat(
        "qwen",
        "prm",
        "reward_models.vllm_prm",
        "VLLMProcessRewardModel",
        ("*ForProcessRewardModel",),
        detected=True,
        help="a *ForProcessRewardModel (Qwen2.5-Math-PRM's layout): the step-tag tokens' scores",
        torch_scores="reward_models.torch_prm:step_scores_at",
    )
)
register_format(
    RewardModelFormat(
        "orm",
        "orm",
        "reward_models.orm",
        "VLLMOutcomeRewardModel",
        ("*ForSequenceClassification",),
        detected=True,
        help="a *ForSequenceClassification: one score per solution",
        torch_scores="reward_models.torch_prm:outcome_scores_at",
    )
)
for _name, _layout in (("math_shepherd", "Math-Shepherd's step tag"), ("rlhflow", "RLHFlow's chat turns")):
    register_format(
        RewardModelFormat(
            _name,
            "prm",
            "reward_models.causal_prm",
            "CausalLMProcessRewardModel",
            CAUSAL_LMS,
            detected=False,
            help=f"a causal LM judging each step by its '+'/'-' token, in {_layout}",
            fixed=(("format", _name),),
        )
    )
register_format(
    RewardModelFormat(
        "likelihood",
        "prm",
        "reward_models.likelihood",
        "LikelihoodPRM",
        CAUSAL_LMS,
        detected=False,
        help="a causal LM (e.g. the policy) judging each step by its own lowest token probability",
        torch_scores="reward_models.likelihood:torch_scores_at",
    )
)
PRM_FORMATS = tuple(FORMATS)  # every registered name, for the command lines' choices


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


async def load_scorer_beside(engine: Engine, policy: str | Path, path: str | Path, **kwargs: Any) -> Scorer:
    """:func:`load_scorer` for a server whose policy runs on ``engine`` (loaded from ``policy``), except that the
    policy's own likelihood (:func:`reads_policy_itself`) runs on that in-process vLLM engine, reading the steps
    the policy sampled from the samples (:mod:`reward_models.self_likelihood`) instead of starting a second one."""
    llm = getattr(engine, "llm", None)  # only an in-process vLLM engine has one
    if llm is not None and reads_policy_itself(path, policy, kwargs.get("format")):
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from reward_models.self_likelihood import SelfLikelihoodPRM

        log.info("the reward model is the policy's own likelihood: read on the policy's engine")
        return SelfLikelihoodPRM(engine, str(path))
    return await load_scorer(str(path), **kwargs)


def resolve_format(path: str | Path, format: str | None = None) -> RewardModelFormat:
    """The format a checkpoint is served in, checked against its architectures before any engine starts."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"reward model {str(path)!r}: no config.json there (expected a local checkpoint)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"reward model {str(path)!r}: config.json is not valid JSON ({exc})") from exc
    architectures = config.get("architectures") or []
    name = format or config.get("ponder_prm_format")
    if name is not None:
        try:
            fmt = get_format(name)
        except ValueError as exc:
            raise ValueError(f"reward model {str(path)!r}: {exc}") from None
        if not fmt.reads(architectures):
            needs = fmt.needs()
            raise ValueError(f"reward model {str(path)!r}: PRM format {name!r} needs a {needs}, not {architectures}")
        return fmt
    detected = detect_format(architectures)
    if detected is not None:
        return detected
    if any(arch in CAUSAL_LMS for arch in architectures):
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


async def load_scorer(
    path: str | Path,
    *,
    format: str | None = None,
    memory_fraction: float = 0.1,
    kv_cache_gib: float | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    seed: int = 0,
    enforce_eager: bool | None = None,
    scorer_cpus: str | None = None,
    **options: Any,
) -> Scorer:
    """Start the reward model at ``path`` (a local checkpoint folder); the event loop runs while vLLM loads it.

    ``format``: a registered name (None: :func:`resolve_format`). ``options`` go to the format's class
    (``step_tag`` for ``qwen`` and ``math_shepherd``; ``good_token``/``bad_token`` for the causal-LM formats);
    None keeps its default, and an option the format does not take is a ValueError.
    """
    fmt = resolve_format(path, format)
    engine = EngineOptions(memory_fraction, kv_cache_gib, dtype, max_model_len, seed, enforce_eager, scorer_cpus)
    given = {key: value for key, value in options.items() if value is not None} | dict(fmt.fixed)
    cls = fmt.load_class()
    takes = inspect.signature(cls.create).parameters
    unknown = sorted(key for key in given if key not in takes)
    if unknown:
        raise ValueError(f"reward model {str(path)!r}: format {fmt.name!r} takes no option {', '.join(unknown)}")
    return await cls.create(str(path), engine, **given)


__all__ = ["PRM_FORMATS", "EngineOptions", "load_scorer", "load_scorer_beside", "reads_policy_itself", "resolve_format"]
