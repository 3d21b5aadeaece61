"""``tree_of_thought``: breadth- or depth-first search over reasoning steps, valued by the PRM or by the policy.

Yao et al. 2023, "Tree of Thoughts: Deliberate Problem Solving with Large Language Models" (NeurIPS 2023;
``princeton-nlp/tree-of-thought-llm``, ``src/tot/methods/bfs.py``), with ToT's "sample" generator: every state
(a partial solution) gets ``samples_per_state`` = k i.i.d. next steps. States are valued by

- ``value_source="prm"``: the reward model's score of the prefix (``aggregation``), or
- ``value_source="self"``: the policy judging itself. The partial solution is continued with ``value_prompt``
  (classify it as sure / likely / impossible) ``value_votes`` times; each verdict weighs ToT's value map
  (sure 20, likely 1, impossible 0.001, anything else 0) and the value is their mean divided by 20, so it lies in
  [0, 1] (sure = 1, likely = 0.05, impossible = 0.00005) and ranks states exactly as ToT's sums do.

``search="bfs"``: each level expands the ``num_samples`` = b best open states (ToT's greedy selection; b is the
width every strategy calls ``num_samples``: how many candidates are kept), duplicates count once (ToT values a
duplicate 0); the level at ``max_depth`` runs to EOS; stops once b solutions finished. ``breadth`` is accepted as an
alias of ``num_samples`` (its name before; giving both with different values is refused). The root is one state, so
it draws ``root_samples`` first steps (default b * k, what every later level draws over its b states): with k alone,
the first level would hold k candidates where ToT's Game of 24 "propose" prompt lists a dozen, and a puzzle whose k
first steps all miss is lost before any value is read.
``search="dfs"``: expand the best open state first, drop children valued below ``prune_threshold`` and backtrack;
stops at the first finished solution that clears the threshold, after ``max_expansions`` states, or when the
stack is empty. Every strategy stops when the budget cannot give the next call's samples a token each. The answer
is the finished solution of highest value (else the best open state).

Cost per BFS level / DFS expansion: one engine call (prompts = states, ``n`` = k) and either one reward-model call
or, for ``self``, one more engine call (prompts = the new states, ``n`` = ``value_votes``, a few tokens each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from strategies import checks, register
from strategies.aggregation import AGGREGATIONS, Aggregation
from strategies.base import Engine, InvalidRequestError, Scorer, StrategyConfig, StrategyResult, Task
from strategies.sampling import STEP_DELIMITER
from strategies.search import VALUE_MAP, VALUE_PROMPT, VALUE_TOKENS, Node, Searcher, unique

DEFAULT_TEMPERATURE = 0.7  # ToT's Game of 24 runs (gpt-4, temperature 0.7)
DEFAULT_WIDTH = 5  # b: ToT's n_select_sample for Game of 24


@dataclass(frozen=True)
class TreeOfThoughtConfig(StrategyConfig):
    budget_param: ClassVar[str | None] = "num_samples"
    budget_doc: ClassVar[str | None] = "its breadth b, the states kept per level"
    in_steps: ClassVar[bool] = True

    search: Literal["bfs", "dfs"] = "bfs"
    num_samples: int | None = None  # b: states kept per BFS level; None: `breadth`, else DEFAULT_WIDTH
    breadth: int | None = None  # an alias of num_samples (b), its name before; both given must agree
    samples_per_state: int = 5  # k: next steps sampled per state (ToT's n_generate_sample with "sample")
    root_samples: int | None = None  # first steps drawn from the root; None: b * k (BFS), k (DFS)
    max_depth: int = 16  # steps at most, the last runs to EOS; ToT's tasks take a few (Game of 24: 4, crosswords: 10)
    step_delimiter: str = STEP_DELIMITER  # a step ends here (kept in the text)
    value_source: Literal["prm", "self"] = "self"  # ToT's own choice, needs no reward model; "prm" needs one
    aggregation: Aggregation | None = None  # value_source="prm": step scores -> the state's value (None: the PRM's)
    value_votes: int = 3  # verdicts per state with value_source="self" (ToT's n_evaluate_sample)
    value_prompt: str = VALUE_PROMPT  # after the partial solution and a blank line: asks the policy for its verdict
    prune_threshold: float | None = None  # DFS drops states valued below it; None: 0.5 (prm), 0.05 (self: "likely")
    max_expansions: int = 100  # DFS: states expanded at most (ToT's crossword DFS stops after 100 steps)
    final_check: str | None = None  # "game24": the answer is one that passes ToT's Game of 24 rule (strategies/checks)

    def __post_init__(self) -> None:
        super().__post_init__()
        if None not in (self.num_samples, self.breadth) and self.num_samples != self.breadth:
            raise ValueError(
                f"num_samples={self.num_samples} and breadth={self.breadth} differ; breadth is an alias of "
                "num_samples (the width b): give one of them"
            )
        width = next((w for w in (self.num_samples, self.breadth) if w is not None), DEFAULT_WIDTH)
        object.__setattr__(self, "num_samples", width)  # both hold b from here on (dataclasses.replace keeps it)
        object.__setattr__(self, "breadth", width)
        if self.search not in ("bfs", "dfs"):
            raise ValueError("search must be 'bfs' or 'dfs'")
        if self.value_source not in ("prm", "self"):
            raise ValueError("value_source must be 'prm' or 'self'")
        checks.validate(self.final_check)
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if min(width, self.samples_per_state, self.max_depth, self.value_votes, self.max_expansions) < 1:
            raise ValueError("num_samples, samples_per_state, max_depth, value_votes and max_expansions must be >= 1")
        if self.root_samples is not None and not 1 <= self.root_samples <= self.level_samples:
            raise ValueError("root_samples must be between 1 and breadth * samples_per_state (b * k, b = num_samples)")
        if not self.step_delimiter:
            raise ValueError("step_delimiter must not be empty")
        if self.prune_threshold is not None and not 0.0 <= self.prune_threshold <= 1.0:
            raise ValueError("prune_threshold must be between 0 and 1")
        if self.max_total_tokens is not None and self.max_total_tokens < self.samples_per_state:
            raise ValueError("max_total_tokens must allow at least one token per sample")

    @property
    def width(self) -> int:
        """b, ``num_samples`` once resolved."""
        assert self.num_samples is not None
        return self.num_samples

    @property
    def level_samples(self) -> int:
        """Samples per BFS level, b * k."""
        return self.width * self.samples_per_state

    def samples_at(self, state: Node) -> int:
        """Next steps drawn from ``state``: ``root_samples`` at the root, else k."""
        if state.depth or (self.search == "dfs" and self.root_samples is None):
            return self.samples_per_state
        return self.root_samples or self.level_samples

    def samples_per_call(self) -> tuple[int, str | None]:
        """BFS: b * k (a level; the root's ``root_samples`` are at most that). DFS: k, or the root's."""
        if self.search == "bfs":
            return self.level_samples, "num_samples"
        if (self.root_samples or 0) > self.samples_per_state:
            return self.root_samples or 0, "root_samples"
        return self.samples_per_state, "samples_per_state"

    @property
    def threshold(self) -> float:
        if self.prune_threshold is not None:
            return self.prune_threshold
        return 0.5 if self.value_source == "prm" else VALUE_MAP["likely"] / VALUE_MAP["sure"]


async def evaluate(search: Searcher, config: TreeOfThoughtConfig, nodes: list[Node]) -> bool:
    """Value every node in one call (reward model, or policy verdicts); False when the budget cannot afford it."""
    if config.value_source == "prm":
        await search.score(nodes)
        return True
    return await search.judge(nodes, config.value_votes, config.value_prompt)


async def expand_and_value(search: Searcher, config: TreeOfThoughtConfig, states: list[Node]) -> list[Node] | None:
    """k valued children of every state (``root_samples`` of the root; duplicates dropped), or None when the budget
    cannot afford the round."""
    votes = 0 if config.value_source == "prm" else config.value_votes
    k = config.samples_at(states[0])  # a round expands the root alone, or states below it
    reserve = votes * len(states) * k * VALUE_TOKENS  # the verdicts come out of the same budget
    to_eos = [state.depth + 1 >= config.max_depth for state in states]
    children = await search.expand(states, k, to_eos=to_eos, reserve=reserve)
    if children is None:
        return None
    new = unique([child for group in children for child in group])
    return new if await evaluate(search, config, new) else None


@register("tree_of_thought", config=TreeOfThoughtConfig)
async def tree_of_thought(
    task: Task, config: TreeOfThoughtConfig, engine: Engine, scorer: Scorer | None
) -> StrategyResult:
    """Tree of Thoughts: BFS over the b best states or DFS with pruning, valued by the PRM or by self-evaluation."""
    if config.value_source == "prm" and scorer is None:
        raise InvalidRequestError(
            "tree_of_thought with value_source='prm' needs a reward model, and none is "
            "loaded; use value_source='self' or start the server with a PRM"
        )
    search = Searcher(task, config, engine, scorer, DEFAULT_TEMPERATURE)
    run = bfs if config.search == "bfs" else dfs
    finished, open_ = await run(search, config)
    finished = search.checked(finished)
    by_value = sorted(finished or open_, key=lambda node: node.score or 0.0, reverse=True)  # ties keep the first
    finals = by_value if finished else by_value[:1]
    return search.result(finals, "score")


async def bfs(search: Searcher, config: TreeOfThoughtConfig) -> tuple[list[Node], list[Node]]:
    frontier: list[Node] = [search.tree.root]
    finished: list[Node] = []
    for depth in range(1, config.max_depth + 1):
        new = await expand_and_value(search, config, frontier)
        if new is None:
            break
        finished += [c for c in new if c.finished]
        ranked = sorted([c for c in new if not c.finished], key=lambda c: c.score or 0.0, reverse=True)
        for pruned in ranked[config.width :]:
            pruned.info["pruned"] = True
        search.rounds.append({"depth": depth, "states": len(frontier), "new": len(new), "finished": len(finished)})
        frontier = ranked[: config.width]
        if not frontier or len(finished) >= config.width:
            break
    return finished, [n for n in frontier if n.depth]


async def dfs(search: Searcher, config: TreeOfThoughtConfig) -> tuple[list[Node], list[Node]]:
    stack: list[Node] = [search.tree.root]
    finished: list[Node] = []
    valued: list[Node] = []
    for expansion in range(config.max_expansions):
        if not stack:
            break
        state = stack.pop()
        new = await expand_and_value(search, config, [state])
        if new is None:
            break
        valued += new
        kept = [c for c in new if (c.score or 0.0) >= config.threshold]
        for pruned in (c for c in new if c not in kept):
            pruned.info["pruned"] = True
        finished += [c for c in new if c.finished]
        search.rounds.append({"expansion": expansion, "state": state.id, "new": len(new), "kept": len(kept)})
        if any(c.finished for c in kept):
            break  # a solution that clears the threshold: DFS is done
        stack += sorted([c for c in kept if not c.finished], key=lambda c: c.score or 0.0)  # best on top
    return finished, [n for n in valued if not n.finished]
