"""``particle_filtering``: step-level particle filtering guided by a process reward model.

Puri, Sudalairaj, Xu, Xu and Srivastava 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs
using Particle-Based Monte Carlo Methods" (arXiv 2502.01618; NeurIPS 2025 as "Rollout Roulette"). A solution is a
state-space model: the policy proposes the next step, the PRM's score of the prefix is the observation likelihood,
and N = ``num_samples`` particles (partial solutions) approximate the posterior over solutions. Each round:

- propagate: every live particle is extended by one step (up to ``step_delimiter``); the round at ``max_depth`` runs
  to EOS. A particle ends with its step (EOS, ``length``, an empty step) and is then carried over unchanged.
- weigh: the PRM scores every new prefix; a particle's reward r is its ``aggregation`` of step scores (None: the
  reward model's own, else ``last``: the paper's "model-based aggregation", the PRM's score of the last step read
  with the whole prefix). Its weight is ``softmax(logit(r) / weight_temperature)`` over all N particles, finished
  ones included: the paper's code (``particle_gibbs_batch.py``: ``inverse_sigmoid`` of the last reward, softmax
  with ``softmax_temp``, default 1, as in its ``script_to_run.sh``) and its_hub (``particle_gibbs.py``:
  ``_inv_sigmoid`` then ``_softmax``, no temperature), r clipped to [1e-7, 1 - 1e-7] as its_hub does.
- resample: N indices drawn from the weights, ``resampling="multinomial"`` (the paper's ``np.random.choice`` /
  its_hub's ``random.choices``) or ``"systematic"`` (one uniform, N evenly spaced positions: each particle gets
  floor or ceil of N·w copies). Finished particles take part, as the paper's default ``--resample-inactive`` does:
  a good finished solution is copied, a poor one dropped. ``ess_threshold`` t > 0 resamples only when the effective
  sample size 1 / sum(w²) falls below t·N (the standard SMC trigger; t = 0.5 is usual); otherwise the population goes
  on as it is. A weight here is a function of the particle's whole prefix (the PRM reads all of it), not an
  incremental likelihood, so skipped rounds do not multiply weights: each round weighs the prefixes afresh.
  Draws come from ``random.Random(task.seed)``, so a seeded request repeats its resampling; no resampling after the
  last round (the paper's loop ends once every particle stopped).

Stops when every particle has finished, after ``max_depth`` rounds, or when the budget cannot give every live
particle of the next round a token (the finished particles are then the candidates, else the live ones). The answer
(``final_selection``): ``"score"`` (default), the particle with the highest weight, as the paper's evaluation
(``eval_script.ipynb``: ``np.argmax`` of the last rewards) and its_hub's ``SelectionMethod.ARGMAX`` pick it; or
``"vote"``, the final weights summed per equivalent answer over the N particles (copies count), the best-weighted
particle of the heaviest answer.

Defaults: the paper's softmax temperature 1, multinomial resampling every round, argmax selection; its sampling
temperature 0.8 and 40 steps at most (``max_depth``), which are every search's defaults here. Nothing is scaled for
our short answers (5-8 steps on arith, 3-4 on Game of 24): the paper's algorithm has no length-dependent parameter.

Cost per round: one reward-model call over the round's new prefixes, and one engine call over the live particles
(prompts = their distinct prefixes). Resampling copies particles, and copies of a prefix must draw different next
steps: a seeded request gives every prompt of an engine call the same seed, so each prefix is sent once with ``n`` =
its copies (vLLM seeds a request's n samples apart). An engine call has one ``n``, so a round whose prefixes have
different copy counts is split into one call per count, all sent at once (gathered, batched together by the
engine): one call in the first round, in every round without copies, and when copies are even. At most N samples
per round, N·``max_depth`` in all.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from strategies import register
from strategies.answers import cluster
from strategies.base import Candidate, Engine, Scorer, StrategyResult, Task
from strategies.sampling import DEFAULT_TEMPERATURE
from strategies.search import Node, SearchConfig, Searcher

CLIP = 1e-7  # its_hub's _inv_sigmoid clips rewards to [1e-7, 1 - 1e-7]


@dataclass(frozen=True)
class ParticleFilteringConfig(SearchConfig):
    """Parameters of ``particle_filtering``."""

    budget_doc: ClassVar[str | None] = "N particles, each extended one step per round"

    weight_temperature: float = 1.0  # softmax(logit(r) / T) over particles (the paper's softmax_temp, default 1)
    resampling: Literal["multinomial", "systematic"] = "multinomial"  # the paper's multinomial, or systematic
    ess_threshold: float | None = None  # resample only when ESS < t * N; None or 0: every round (the paper's)
    final_selection: Literal["score", "vote"] = "score"  # the highest-weight particle (the paper's), or weighted vote

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weight_temperature > 0:
            raise ValueError("weight_temperature must be above 0")
        if self.resampling not in ("multinomial", "systematic"):
            raise ValueError("resampling must be 'multinomial' or 'systematic'")
        if self.ess_threshold is not None and not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError("ess_threshold must be between 0 and 1 (a share of num_samples), or null")
        if self.final_selection not in ("score", "vote"):
            raise ValueError("final_selection must be 'score' or 'vote'")


def particle_weights(rewards: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Normalised weights: the softmax of each reward's logit divided by ``temperature``.

    >>> [round(w, 3) for w in particle_weights([0.9, 0.5, 0.1])]
    [0.89, 0.099, 0.011]
    >>> [round(w, 3) for w in particle_weights([0.9, 0.5, 0.1], temperature=4.0)]
    [0.523, 0.302, 0.174]
    """
    clipped = [min(max(r, CLIP), 1.0 - CLIP) for r in rewards]
    logits = [(math.log(r) - math.log1p(-r)) / temperature for r in clipped]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def effective_sample_size(weights: Sequence[float]) -> float:
    """1 / sum(w²) of normalised weights: N when even, 1 when one particle holds all the weight.

    >>> effective_sample_size([0.25] * 4), effective_sample_size([1.0, 0.0, 0.0, 0.0])
    (4.0, 1.0)
    """
    return 1.0 / sum(w * w for w in weights)


def multinomial(weights: Sequence[float], rng: random.Random) -> list[int]:
    """N independent draws of an index by weight, sorted."""
    return sorted(rng.choices(range(len(weights)), weights=weights, k=len(weights)))


def systematic(weights: Sequence[float], rng: random.Random) -> list[int]:
    """Systematic resampling: one uniform u, positions (u + k) / N; index i gets floor or ceil of N·w_i copies.

    >>> systematic([0.5, 0.25, 0.25, 0.0], random.Random(0))
    [0, 0, 1, 2]
    """
    n = len(weights)
    start = rng.random()
    bounds = list(itertools.accumulate(weights))
    bounds[-1] = 1.0  # rounding must not leave a position past the last bound
    out, i = [], 0
    for k in range(n):
        while bounds[i] < (start + k) / n:
            i += 1
        out.append(i)
    return out


RESAMPLERS = {"multinomial": multinomial, "systematic": systematic}


def reward(node: Node) -> float:
    return node.score or 0.0


async def propagate(search: Searcher, live: Sequence[Node], to_eos: bool) -> dict[Node, list[Node]] | None:
    """One next step for every live particle; each distinct prefix is sent once with ``n`` = its copies, one engine
    call per copy count, all at once. The new children per prefix, or None when the budget cannot give every sample
    a token."""
    copies = Counter(live)  # Node hashes by identity: copies of a particle share their node
    max_tokens = search.cap(list(copies), len(live))
    if max_tokens < 1:
        return None
    by_count: dict[int, list[Node]] = {}
    for node, count in copies.items():
        by_count.setdefault(count, []).append(node)
    calls = [(nodes, search.spec(count, max_tokens, to_eos=to_eos)) for count, nodes in by_count.items()]
    outputs = await asyncio.gather(
        *(search.generate([search.task.prompt + node.prefix for node in nodes], spec) for nodes, spec in calls)
    )
    children: dict[Node, list[Node]] = {}
    for (nodes, _), output in zip(calls, outputs, strict=True):
        for node, samples in zip(nodes, output, strict=True):
            children[node] = [search.tree.add(node, sample) for sample in samples]
    search.rounds.append({"depth": len(search.rounds) + 1, "live": len(live), "engine_calls": len(calls)})
    return children


def resample(
    particles: list[Node], weights: list[float], config: ParticleFilteringConfig, rng: random.Random
) -> tuple[list[Node], float, bool]:
    """The population after this round's resampling, its effective sample size before, and whether it resampled;
    particles no draw picked are marked ``dropped`` in the trace."""
    ess = effective_sample_size(weights)
    if config.ess_threshold and ess >= config.ess_threshold * len(particles):
        return particles, ess, False
    drawn = [particles[i] for i in RESAMPLERS[config.resampling](weights, rng)]
    kept = set(drawn)
    for node in particles:
        if node not in kept:
            node.info["dropped"] = True
    return drawn, ess, True


def reweigh(search: Searcher, particles: list[Node], config: ParticleFilteringConfig, rng: random.Random) -> list[Node]:
    """Weigh the scored particles and resample them, unless every one has finished (nothing is left to extend);
    the round's weights, ESS and draws go to the trace."""
    weights = particle_weights([reward(node) for node in particles], config.weight_temperature)
    after, ess, resampled = particles, effective_sample_size(weights), False
    if not all(node.finished for node in particles):
        after, ess, resampled = resample(particles, weights, config, rng)
    search.rounds[-1] |= {
        "particles": [node.id for node in particles],
        "weights": [round(w, 6) for w in weights],
        "ess": round(ess, 4),
        "resampled": resampled,
        "after": [node.id for node in after],
        "finished": sum(node.finished for node in after),
    }
    return after


def pick(
    nodes: Sequence[Node], mass: Sequence[float], how: str, task: Task
) -> tuple[int, list[dict[str, Any]], list[str | None]]:
    """The chosen one of the distinct final ``nodes`` (``mass``: the summed weight of each one's copies), each
    answer's weight for ``vote``, and every node's answer. ``vote`` falls back to the best weight when no particle
    states an answer; ties keep the first."""
    answers = [task.reader.answer(node.prefix) for node in nodes]
    best = max(range(len(nodes)), key=lambda i: reward(nodes[i]))
    groups = cluster(answers, task.reader.same) if how == "vote" else []
    if not groups:
        return best, [], answers
    totals = [sum(mass[i] for i in members) for members in groups]
    heaviest = groups[max(range(len(groups)), key=totals.__getitem__)]
    table = [
        {"answer": answers[m[0]], "weight": round(t, 6), "count": len(m)} for m, t in zip(groups, totals, strict=True)
    ]
    return max(heaviest, key=lambda i: reward(nodes[i])), table, answers


def finish(search: Searcher, particles: list[Node], config: ParticleFilteringConfig, stopped: str) -> StrategyResult:
    """The answer from the final population: its finished particles (else every particle), weighed afresh."""
    slots = [node for node in particles if node.finished] or particles
    weights = particle_weights([reward(node) for node in slots], config.weight_temperature)
    mass: dict[Node, float] = {}
    for node, weight in zip(slots, weights, strict=True):
        mass[node] = mass.get(node, 0.0) + weight
    nodes = list(mass)
    best, table, answers = pick(nodes, [mass[n] for n in nodes], config.final_selection, search.task)
    candidates = [
        Candidate(n.prefix, n.prefix_tokens, n.finish_reason or "length", list(n.step_scores), n.score, answer)
        for n, answer in zip(nodes, answers, strict=True)
    ]
    candidates[best].chosen = True
    nodes[best].info["chosen"] = True
    extra: dict[str, Any] = {"answers": table} if table else {}
    if config.return_trace:
        copies = Counter(slots)
        extra |= {
            "tree": search.tree.to_dict(nodes[best]),
            "rounds": search.rounds,
            "stopped": stopped,
            "final": [{"node": n.id, "copies": copies[n], "weight": round(mass[n], 6)} for n in nodes],
        }
    return StrategyResult(choices=[candidates[best]], candidates=candidates, extra=extra)


@register("particle_filtering", config=ParticleFilteringConfig, needs_scorer=True)
async def particle_filtering(
    task: Task, config: ParticleFilteringConfig, engine: Engine, scorer: Scorer | None
) -> StrategyResult:
    """PRM-guided particle filtering: N particles extended a step per round, weighed by the PRM and resampled."""
    assert scorer is not None
    search = Searcher(task, config, engine, scorer, DEFAULT_TEMPERATURE)
    rng = random.Random(task.seed)  # None: seeded from the system
    particles: list[Node] = [search.tree.root] * config.num_samples
    stopped = "max_depth"
    for depth in range(1, config.max_depth + 1):
        live = [node for node in particles if not node.finished]
        children = await propagate(search, live, to_eos=depth == config.max_depth)
        if children is None:
            stopped = "budget"  # the budget cannot give every live particle of this round a token
            break
        await search.score([child for group in children.values() for child in group])
        particles = [node if node.finished else children[node].pop(0) for node in particles]  # finished: kept
        particles = reweigh(search, particles, config, rng)
        if all(node.finished for node in particles):
            stopped = "finished"
            break
    return finish(search, particles, config, stopped)
