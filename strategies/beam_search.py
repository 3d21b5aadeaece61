"""``beam_search``: step-level beam search guided by a process reward model.

Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling Model Parameters"
(arXiv 2408.03314), as implemented in HuggingFace search-and-learn (``_beam_search``). N = ``num_samples`` beams,
beam width M. Each round every live beam is extended by one step (up to ``step_delimiter``) and the PRM scores every
new prefix (``aggregation`` of its step scores). Beams that ended (EOS, ``length``, an empty step) are set aside;
of the open ones the top N/M are kept and each is re-expanded N // kept times (M while N/M survive; more when fewer
do, as search-and-learn refills to N beams). The round at ``max_depth`` runs to EOS. Options: ``lookahead`` greedy
steps rolled out before scoring (the PRM scores prefix + lookahead, Snell's lookahead search) and
``filter_duplicates`` (identical open beams count once). The answer is weighted best-of-N over the finished beams.

Stops when N beams have finished, none is open, ``max_depth`` rounds ran, or the budget cannot give every sample of
the next round a token (then the best open beams are the candidates).

Cost per round: one engine call (prompts = the kept beams, ``n`` = N // kept, at most N samples), plus one greedy
engine call per ``lookahead`` step over the open new beams; one reward-model call over the round's new prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies import register
from strategies.base import Engine, Scorer, StrategyResult, Task
from strategies.sampling import DEFAULT_TEMPERATURE
from strategies.search import BeamConfig, Node, Searcher, unique


@dataclass(frozen=True)
class BeamSearchConfig(BeamConfig):
    filter_duplicates: bool = True  # identical open beams count once (search-and-learn's recipes turn it on)


@register("beam_search", config=BeamSearchConfig, needs_scorer=True)
async def beam_search(task: Task, config: BeamSearchConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """PRM-guided step-level beam search: N beams, the top N/M re-expanded M times each round."""
    assert scorer is not None
    search = Searcher(task, config, engine, scorer, DEFAULT_TEMPERATURE)
    keep = config.num_samples // config.beam_width
    live: list[Node] = [search.tree.root]
    finished: list[Node] = []
    for depth in range(1, config.max_depth + 1):
        children = await search.expand(live, config.num_samples // len(live), to_eos=depth == config.max_depth)
        if children is None:
            break  # the budget cannot give every sample of this round a token
        new = [child for group in children for child in group]
        suffixes = await search.lookahead(new, min(config.lookahead, config.max_depth - depth))
        await search.score(new, suffixes)
        finished += [c for c in new if c.finished]
        open_ = [c for c in new if not c.finished]
        if config.filter_duplicates:
            open_ = unique(open_)
        ranked = sorted(open_, key=lambda c: c.score or 0.0, reverse=True)  # stable: ties keep sampling order
        for pruned in ranked[keep:]:
            pruned.info["pruned"] = True
        search.rounds.append(
            {
                "depth": depth,
                "beams": len(live),
                "n": config.num_samples // len(live),
                "finished": len(finished),
                "open": len(open_),
            }
        )
        live = ranked[:keep]
        if len(finished) >= config.num_samples or not live:
            break
    return search.result(finished or live, "vote")
