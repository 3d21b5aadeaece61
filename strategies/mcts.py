"""``mcts``: Monte Carlo tree search over reasoning steps, valued by a process reward model or by the policy.

PRM-guided MCTS as in OpenR (Wang et al. 2024, arXiv 2410.09671, ``reason/guided_search/tree.py``) and rStar-Math
(Guan et al. 2025, arXiv 2501.04519). The loop reads as llm-reasoners' four verbs; each iteration:

- select: from the root, go to the child with the best UCT score, ``Q + c * sqrt(ln N_parent / N_child)`` (c = 1:
  rStar-Math's c = 2 for Q in [-1, 1], rescaled to our Q in [0, 1]), or PUCT score,
  ``Q + prior * (log((N_parent + 19652 + 1) / 19652) + c) * sqrt(N_parent) / (N_child + 1)`` (c = 1.25 and 19652
  are OpenR's pb_c_init and pb_c_base; the prior is the softmax over siblings of each step's length-normalised
  log-probability, uniform when the engine returns none), down to a leaf.
  ``leaves_per_iteration`` > 1 selects several distinct leaves, each with a virtual loss (a visit worth 0) on its
  path so the next selection goes elsewhere; all of them are expanded in the same engine call.
- expand: k = ``num_samples`` next steps for every selected leaf; a leaf at ``max_depth`` - 1 runs to EOS. The root
  is expanded once, so its ``root_samples`` first steps are all the first steps the search will ever try: more of
  them (as beam search samples N first steps) is what keeps a puzzle whose k first steps all miss in reach.
- evaluate: the PRM scores the new prefixes; a child's value is the score of its last step (OpenR's "prm-last"), or
  with ``rollouts`` = r > 0 the mean aggregated score of r sampled completions to EOS from it. With
  ``value_source="self"`` the policy values them instead, by Tree of Thoughts' value prompt (sure / likely /
  impossible, ``value_votes`` verdicts each, :meth:`~strategies.search.Searcher.judge`): no reward model needed.
- backup: every new child's value is added along its path (mean backup: Q = value sum / visits). A finished leaf
  that is selected again backs its value up once more.

No root Dirichlet noise (OpenR adds it for data generation, not for answering). Stops after ``num_iterations`` or
when the budget cannot give the next expansion's samples a token each. The answer comes from the finished
trajectories (tree leaves and rollouts): ``final_selection="vote"``, weighted best-of-N over the ``vote_top_k``
best-scored ones (reward summed per answer; OpenR's prm_last_vote, rStar-Math's vote over its top trajectories; an
MCTS finishes many poor trajectories while exploring, and all of them together can outweigh the best), or
``"value"``, the best aggregated score; when none finished, the end of the most visited path.

Cost per iteration: one engine call (prompts = the selected open leaves, ``n`` = k; two concurrent calls when some
leaves run to EOS and others stop at a step), one more with ``n`` = r when ``rollouts`` > 0, one reward-model call
(``value_source="self"``: one more engine call, ``n`` = ``value_votes``, a few tokens each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from strategies import checks, register
from strategies.base import Engine, InvalidRequestError, Scorer, StrategyResult, Task
from strategies.search import VALUE_PROMPT, VALUE_TOKENS, Node, SearchConfig, Searcher

DEFAULT_TEMPERATURE = 0.7  # OpenR's MCTS and beam-search runs
C_BASE = 19652  # OpenR's pb_c_base (from AlphaZero)


@dataclass(frozen=True)
class MCTSConfig(SearchConfig):
    budget_param: ClassVar[str | None] = "num_iterations"  # a budget N is iterations; k stays the tree's width

    num_samples: int = 4  # k: children per expansion, drawn in one engine request (OpenR's tree width 4)
    root_samples: int | None = None  # children of the root (expanded once, in the first iteration); None: k
    max_depth: int = 16  # steps per trajectory at most (rStar-Math's max_depth)
    num_iterations: int = 16  # select-expand-evaluate-backup rounds (OpenR: 20 simulations; rStar-Math: 8-12)
    selection: Literal["uct", "puct"] = "puct"  # OpenR's PUCT with LM priors; "uct": rStar-Math's rule
    exploration: float | None = None  # c; None: 1.0 for UCT (rStar-Math's, rescaled), 1.25 for PUCT (OpenR's pb_c_init)
    rollouts: int = 0  # sampled completions to EOS valuing each new child; 0: its last step's PRM score
    leaves_per_iteration: int = 1  # leaves selected (with virtual loss) and expanded together per iteration
    final_selection: Literal["value", "vote"] = "vote"  # weighted vote over the best trajectories, or the best one
    vote_top_k: int = 4  # final_selection="vote": the trajectories with the k highest scores vote
    value_source: Literal["prm", "self"] = "prm"  # who values new nodes: the reward model, or the policy's verdicts
    value_votes: int = 3  # verdicts per node with value_source="self" (ToT's n_evaluate_sample)
    value_prompt: str = VALUE_PROMPT  # value_source="self": after the partial solution and a blank line
    final_check: str | None = None  # "game24": the answer is one that passes ToT's Game of 24 rule (strategies/checks)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in ("uct", "puct"):
            raise ValueError("selection must be 'uct' or 'puct'")
        if self.final_selection not in ("value", "vote"):
            raise ValueError("final_selection must be 'value' or 'vote'")
        if min(self.num_iterations, self.leaves_per_iteration, self.vote_top_k) < 1 or self.rollouts < 0:
            raise ValueError("num_iterations, leaves_per_iteration and vote_top_k must be at least 1, rollouts >= 0")
        if self.root_samples is not None and self.root_samples < 1:
            raise ValueError("root_samples must be at least 1")
        if self.exploration is not None and self.exploration < 0:
            raise ValueError("exploration must be at least 0")
        if self.value_source not in ("prm", "self"):
            raise ValueError("value_source must be 'prm' or 'self'")
        if self.value_votes < 1:
            raise ValueError("value_votes must be at least 1")
        checks.validate(self.final_check)

    def samples_per_call(self) -> tuple[int, str | None]:
        """The root's ``root_samples`` (expanded alone) or k per selected leaf, times ``rollouts`` per new child."""
        per_child = max(1, self.rollouts)
        root, later = (self.root_samples or self.num_samples) * per_child, self.leaves_per_iteration * self.num_samples
        if root > later * per_child:
            return root, "root_samples" if self.root_samples else "num_samples"
        return later * per_child, "num_samples"

    @property
    def c(self) -> float:
        if self.exploration is not None:
            return self.exploration
        return 1.0 if self.selection == "uct" else 1.25


def _score(parent: Node, child: Node, config: MCTSConfig) -> float:
    """UCT or PUCT score of ``child`` (every child has a visit from its own evaluation)."""
    q = child.value_sum / child.visits if child.visits else 0.0
    if config.selection == "uct":
        return q + config.c * math.sqrt(math.log(max(parent.visits, 1)) / max(child.visits, 1))
    pb_c = math.log((parent.visits + C_BASE + 1) / C_BASE) + config.c
    return q + child.prior * pb_c * math.sqrt(parent.visits) / (child.visits + 1)


def _best_child(node: Node, config: MCTSConfig) -> Node:
    return max(node.children, key=lambda child: _score(node, child, config))  # ties keep the first


def _select(root: Node, config: MCTSConfig) -> list[Node]:
    """Up to ``leaves_per_iteration`` distinct leaves, each found under the virtual losses of the descents before
    (a leaf found again gets another virtual loss; at most twice as many descents as leaves)."""
    leaves: list[Node] = []
    descents: list[Node] = []
    for _ in range(2 * config.leaves_per_iteration):
        node = root
        while node.children and not node.finished:
            node = _best_child(node, config)
        descents.append(node)
        for step in node.path():
            step.visits += 1  # virtual loss: a visit worth 0 until the real backup
        if node not in leaves:
            leaves.append(node)
        if len(leaves) == config.leaves_per_iteration or not root.children:
            break
    for node in descents:
        for step in node.path():
            step.visits -= 1
    return leaves


def _set_priors(siblings: list[Node], logprobs: list[float | None]) -> None:
    """OpenR's priors: softmax over siblings of the length-normalised log-probability; uniform without one."""
    if any(lp is None for lp in logprobs):
        weights = [1.0] * len(siblings)
    else:
        means = [lp / max(1, node.num_tokens) for lp, node in zip(logprobs, siblings, strict=True)]
        weights = [math.exp(m - max(means)) for m in means]
    for node, weight in zip(siblings, weights, strict=True):
        node.prior = weight / sum(weights)


async def _expand(search: Searcher, config: MCTSConfig, leaves: list[Node]) -> tuple[list[Node], list[Node]] | None:
    """Children of every leaf (one engine call) and their rollouts, all scored in one reward-model call; each
    child's value in ``info["eval"]``. None when the budget cannot give every sample a token."""
    k = config.root_samples or config.num_samples if leaves[0].depth == 0 else config.num_samples  # the root: alone
    samples = k * len(leaves) * (1 + config.rollouts)
    verdicts = samples * config.value_votes * VALUE_TOKENS if config.value_source == "self" else 0
    share = search.cap(leaves, samples, reserve=verdicts)  # rollouts and verdicts get theirs
    to_eos = [leaf.depth + 1 >= config.max_depth for leaf in leaves]
    puct = config.selection == "puct"
    drawn = await search.expand(leaves, k, to_eos=to_eos, max_tokens=share, logprobs=0 if puct else None)
    if drawn is None:
        return None
    children = [child for group in drawn for child in group]
    for group in drawn:
        _set_priors(group, [child.info.pop("logprob", None) for child in group])
    open_ = [child for child in children if not child.finished]
    rollouts = (
        await search.expand(open_, config.rollouts, to_eos=True, attach=False) if config.rollouts and open_ else None
    )
    rollouts = rollouts or [[] for _ in open_]
    valued = children + [r for group in rollouts for r in group]
    if config.value_source == "self":
        if not await search.judge(valued, config.value_votes, config.value_prompt):
            return None
    else:
        await search.score(valued)
    by_child = {child.id: group for child, group in zip(open_, rollouts, strict=True) if group}
    for child in children:
        done = by_child.get(child.id)
        last = child.score if config.value_source == "self" else (child.step_scores or [0.0])[-1]
        child.info["eval"] = sum(r.score or 0.0 for r in done) / len(done) if done else last or 0.0
        if puct:
            child.info["prior"] = round(child.prior, 6)
    return children, [r for group in rollouts for r in group]


def _backup(node: Node, value: float) -> None:
    for step in node.path():
        step.visits += 1
        step.value_sum += value


@register("mcts", config=MCTSConfig)
async def mcts(task: Task, config: MCTSConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """PRM-guided Monte Carlo tree search: UCT or PUCT selection, k children per expansion, mean backup."""
    if config.value_source == "prm" and scorer is None:
        raise InvalidRequestError(
            "mcts with value_source='prm' needs a reward model, and none is loaded; use "
            "value_source='self' or start the server with a PRM"
        )
    search = Searcher(task, config, engine, scorer, DEFAULT_TEMPERATURE)
    root = search.tree.root
    trajectories: list[Node] = []
    for iteration in range(config.num_iterations):
        leaves = _select(root, config)
        for leaf in leaves:
            if leaf.finished:
                _backup(leaf, leaf.info["eval"])
        expandable = [leaf for leaf in leaves if not leaf.finished]
        if not expandable:
            continue
        expanded = await _expand(search, config, expandable)
        if expanded is None:
            break  # the budget cannot afford another expansion
        children, rollouts = expanded
        for child in children:
            _backup(child, child.info["eval"])
        trajectories += [node for node in children + rollouts if node.finished]
        search.rounds.append(
            {
                "iteration": iteration,
                "leaves": [leaf.id for leaf in expandable],
                "children": len(children),
                "rollouts": len(rollouts),
            }
        )
    if not trajectories:  # nothing finished: the end of the most visited path
        node = root
        while node.children:
            node = max(node.children, key=lambda child: child.visits)
        trajectories = [node]
    trajectories = search.checked(trajectories)
    if config.final_selection == "value":
        return search.result(trajectories, "score", selection=config.selection, exploration=config.c)
    best = sorted(trajectories, key=lambda node: node.score or 0.0, reverse=True)[: config.vote_top_k]
    return search.result(best, "vote", selection=config.selection, exploration=config.c)
