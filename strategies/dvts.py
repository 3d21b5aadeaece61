"""``dvts``: diverse verifier tree search, N/M independent greedy subtrees guided by a process reward model.

Beeching, Tunstall and Rush 2024, "Scaling test-time compute with open models" (HuggingFace blog; search-and-learn's
``_dvts``), an extension of the beam search of Snell et al. 2024 (arXiv 2408.03314) that keeps diversity at large N:
the N = ``num_samples`` samples are split into N/M subtrees (M = ``beam_width``). The first round draws N first
steps and deals M to each subtree; afterwards every live subtree samples M next steps from its current leaf. The
PRM scores the new prefixes (``aggregation``; with ``lookahead`` greedy steps appended, as in search-and-learn) and
each subtree greedily keeps its best expansion. A subtree ends when the step it keeps ends the solution (EOS,
``length``, an empty step); the round at ``max_depth`` runs to EOS. Every expansion that ended is a candidate; the
answer is weighted best-of-N over them (if the budget runs out first, the live leaves are the candidates).

Cost per round: one engine call (prompts = the live leaves, ``n`` = M; the first round one prompt with ``n`` = N),
plus one greedy engine call per ``lookahead`` step; one reward-model call over the round's new prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies import register
from strategies.base import Engine, Scorer, StrategyResult, Task
from strategies.sampling import DEFAULT_TEMPERATURE
from strategies.search import BeamConfig, Node, Searcher


@dataclass(frozen=True)
class DVTSConfig(BeamConfig):
    pass


@register("dvts", config=DVTSConfig, needs_scorer=True)
async def dvts(task: Task, config: DVTSConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """Diverse verifier tree search: N/M subtrees, each keeping its PRM-best of M expansions per round."""
    assert scorer is not None
    search = Searcher(task, config, engine, scorer, DEFAULT_TEMPERATURE)
    width = config.beam_width
    leaves: list[Node] = [search.tree.root] * (config.num_samples // width)  # one per live subtree
    finished: list[Node] = []
    for depth in range(1, config.max_depth + 1):
        last = depth == config.max_depth
        if depth == 1:  # one prompt, N samples, dealt M to a subtree: the subtrees start apart
            drawn = await search.expand(leaves[:1], config.num_samples, to_eos=last)
            groups = None if drawn is None else [drawn[0][i : i + width] for i in range(0, config.num_samples, width)]
        else:
            groups = await search.expand(leaves, width, to_eos=last)
        if groups is None:
            break  # the budget cannot give every sample of this round a token
        new = [child for group in groups for child in group]
        suffixes = await search.lookahead(new, min(config.lookahead, config.max_depth - depth))
        await search.score(new, suffixes)
        finished += [c for c in new if c.finished]
        best = [max(group, key=lambda c: c.score or 0.0) for group in groups]  # ties keep the first
        for node in best:
            node.info["selected"] = True
        search.rounds.append({"depth": depth, "subtrees": len(groups), "n": len(groups[0]), "finished": len(finished)})
        leaves = [node for node in best if not node.finished]
        if not leaves:
            break
    return search.result(finished or [leaf for leaf in leaves if leaf.depth], "vote")
