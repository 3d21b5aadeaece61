"""``none``: plain generation, what vLLM's own server does with the same request.

Cost: one engine call drawing ``num_samples`` samples (the OpenAI ``n``); no reward-model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strategies import register
from strategies.base import (
    Candidate,
    Engine,
    SamplingSpec,
    Scorer,
    StrategyConfig,
    StrategyResult,
    Task,
    per_sample_budget,
    sampling_temperature,
)


@dataclass(frozen=True)
class NoneConfig(StrategyConfig):
    budget_param: ClassVar[str | None] = "num_samples"
    budget_doc: ClassVar[str | None] = "N samples, each its own choice (the first one graded)"
    n_param: ClassVar[str | None] = "num_samples"  # the OpenAI `n` is num_samples: every sample is a choice
    streams_tokens: ClassVar[bool] = True

    num_samples: int = 1  # returned as separate choices, like OpenAI's `n`

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError("num_samples must be at least 1")

    def samples_per_call(self) -> tuple[int, str | None]:
        return self.num_samples, "num_samples"


# greedy: greedy decoding, one sample (a benchmark's baseline); sample: plain sampling of N, the first one graded
PRESETS = {"greedy": {"temperature": 0.0, "num_samples": 1}, "sample": {}}


@register("none", config=NoneConfig, presets=PRESETS)
async def none(task: Task, config: NoneConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """Plain sampling: every sample is returned as its own choice."""
    spec = SamplingSpec(
        n=config.num_samples,
        temperature=sampling_temperature(config, task, default=1.0),
        top_p=task.top_p,
        max_tokens=per_sample_budget(config, task, config.num_samples),
        stop=task.stop,
        seed=task.seed,
        logprobs=task.logprobs,
    )
    (samples,) = await engine.generate([task.prompt], spec, task.request_id)
    choices = [Candidate(s.text, s.num_tokens, s.finish_reason, chosen=True, logprobs=s.logprobs) for s in samples]
    return StrategyResult(choices=choices, candidates=choices)
