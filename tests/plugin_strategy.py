"""A third-party strategy, as a plugin package would ship it (loaded through the `ponder.strategies` entry point)."""

from dataclasses import dataclass

from strategies import register
from strategies.base import Candidate, SamplingSpec, StrategyConfig, StrategyResult


@dataclass(frozen=True)
class EchoConfig(StrategyConfig):
    shout: bool = False


@register("echo_plugin", config=EchoConfig)
async def echo_plugin(task, config, engine, scorer) -> StrategyResult:
    """Greedy sample, upper-cased on request."""
    (samples,) = await engine.generate(
        [task.prompt], SamplingSpec(temperature=0.0, max_tokens=task.max_tokens), task.request_id
    )
    text = samples[0].text.upper() if config.shout else samples[0].text
    choice = Candidate(text, samples[0].num_tokens, samples[0].finish_reason or "stop", chosen=True)
    return StrategyResult(choices=[choice], candidates=[choice])
