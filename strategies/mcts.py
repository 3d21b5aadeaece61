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
- expand: k = ``num_samples`` next steps for every selected leaf; a leaf at ``max_depth`` - 1 runs to EOS. The
  root's first expansion draws ``root_samples``.
- widen (progressive widening; Coulom 2007, "Efficient Selectivity and Backup Operators in Monte-Carlo Tree
  Search"; Chaslot et al. 2008, "Progressive Strategies for Monte-Carlo Tree Search"; the polynomial schedule of
  Couetoux et al. 2011, "Continuous Upper Confidence Trees"): a node with n visits may have drawn at most
  k(n) = ceil(C * n^alpha) steps. A descent stops at a node, at any depth and the root included, whose draws plus k
  fit within k(n) (and that has ``widening_visits`` = T visits, Chaslot et al.'s threshold before a node's children
  grow), and that iteration's engine call draws k more steps of it: the tree widens where the search keeps coming
  back, instead of every node keeping the children of its first expansion (with ``widening=False``, as before:
  the root's ``root_samples`` first steps are then all the first steps the search ever tries). A widening's step
  that repeats one the node already has is that child drawn again (a visit with its value), not a new child; the
  priors are recomputed over old and new children. Off by default (``widening=True`` turns it on; C defaults to k,
  alpha to 0.5, T to 0): on 100 Game of 24 training puzzles at 64 iterations and 16 first steps, widening at those
  settings solved 35% against 72% without it (``results/game24-mcts-widening``), the iterations spent drawing
  siblings instead of finishing paths.
- evaluate: the PRM scores the new prefixes; a child's value is the score of its last step (OpenR's "prm-last"), or
  with ``rollouts`` = r > 0 the mean aggregated score of r sampled completions to EOS from it. With
  ``value_source="self"`` the policy values them instead, by Tree of Thoughts' value prompt (sure / likely /
  impossible, ``value_votes`` verdicts each, :meth:`~strategies.search.Searcher.judge`): no reward model needed.
- with ``final_check`` and ``terminal_check`` (the default), a finished trajectory is valued by the check instead:
  1 when it passes, 0 when it fails, as MCTS in a game backs up the game's outcome at a terminal state (Kocsis and
  Szepesvari 2006; LATS, Zhou et al. 2023, arXiv 2310.04406, uses the environment's reward at a terminal state the
  same way), and the search stops at the first that passes: a check accepts only right answers
  (:mod:`strategies.checks`), so more search cannot improve on it. Without it a wrong answer the PRM liked kept its
  value, and selections that ended at it spent their iterations backing it up again.
- backup: every new child's value is added along its path (mean backup: Q = value sum / visits). A finished leaf
  that is selected again backs its value up once more.

No root Dirichlet noise (OpenR adds it for data generation, not for answering). Stops after ``num_iterations`` or
when the budget cannot give the next expansion's samples a token each. The answer comes from the finished
trajectories (tree leaves and rollouts): ``final_selection="vote"``, weighted best-of-N over the ``vote_top_k``
best-scored ones (reward summed per answer; OpenR's prm_last_vote, rStar-Math's vote over its top trajectories; an
MCTS finishes many poor trajectories while exploring, and all of them together can outweigh the best), or
``"value"``, the best aggregated score; when none finished, the end of the most visited path.

Cost per iteration: one engine call (prompts = the selected open leaves and widened nodes, ``n`` = k; two concurrent
calls when some run to EOS and others stop at a step; none when the selection ends at a finished leaf), one more
with ``n`` = r when ``rollouts`` > 0, one reward-model call over the new children (``value_source="self"``: one
more engine call, ``n`` = ``value_votes``, a few tokens each; neither when a widening drew only repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from strategies import checks, register
from strategies.base import Engine, InvalidRequestError, Scorer, StrategyResult, Task
from strategies.search import VALUE_PROMPT, VALUE_TOKENS, Node, SearchConfig, Searcher

DEFAULT_TEMPERATURE = 0.7  # OpenR's MCTS and beam-search runs
WIDENING_ALPHA = 0.5  # alpha of k(n) = ceil(C * n^alpha): the square-root widening of Couetoux et al. 2011
C_BASE = 19652  # OpenR's pb_c_base (from AlphaZero)


@dataclass(frozen=True)
class MCTSConfig(SearchConfig):
    budget_param: ClassVar[str | None] = "num_iterations"  # a budget N is iterations; k stays the tree's width
    budget_doc: ClassVar[str | None] = "N select-expand-evaluate-backup iterations, one engine call each"

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
    widening: bool = False  # True: progressive widening at every depth; False: a node's children are its first draw's
    widening_c: float | None = None  # C in k(n) = ceil(C * n^alpha); None: k, so a leaf (n = 1) is allowed k children
    widening_alpha: float = WIDENING_ALPHA  # alpha in k(n)
    widening_visits: int = 0  # T: a node widens only from T visits on (Chaslot et al.'s unpruning threshold)
    terminal_check: bool = True  # with final_check: a finished node is worth the check's 1 or 0; stop at a pass

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
        if self.widening_c is not None and not (math.isfinite(self.widening_c) and self.widening_c > 0):
            raise ValueError("widening_c must be a finite number above 0 (or null: num_samples)")
        if not (math.isfinite(self.widening_alpha) and 0 <= self.widening_alpha <= 1):
            raise ValueError("widening_alpha must be between 0 and 1")
        if self.widening_visits < 0:
            raise ValueError("widening_visits must be at least 0")

    def samples_per_call(self) -> tuple[int, str | None]:
        """The root's ``root_samples`` (expanded alone) or k per selected leaf, times ``rollouts`` per new child."""
        per_child = max(1, self.rollouts)
        root, later = (self.root_samples or self.num_samples) * per_child, self.leaves_per_iteration * self.num_samples
        if root > later * per_child:
            return root, "root_samples" if self.root_samples else "num_samples"
        return later * per_child, "num_samples"

    @property
    def widening_base(self) -> float:
        """C in k(n) = ceil(C * n^alpha): ``widening_c``, else k."""
        return self.widening_c or self.num_samples

    def limit(self, visits: int) -> int:
        """k(n) = ceil(C * n^alpha): the most children progressive widening allows a node with ``visits`` visits."""
        return math.ceil(self.widening_base * visits**self.widening_alpha - 1e-9)

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


@dataclass
class _Drawn:
    """What the search remembers of its draws: each step's log-probability (PUCT's priors, recomputed over old and
    new siblings after a widening) and how many steps each node has drawn (repeats included; widening counts these)."""

    logprobs: dict[int, float | None] = field(default_factory=dict)
    draws: dict[int, int] = field(default_factory=dict)


def _widens(node: Node, config: MCTSConfig, drawn: _Drawn, pending: int = 0) -> bool:
    """Whether progressive widening expands ``node`` again: it has children, and k more draws (beyond ``pending``,
    those promised to it in this iteration) stay within k(n) of its visits."""
    if not config.widening or not node.children or node.finished or node.visits < config.widening_visits:
        return False
    return drawn.draws.get(node.id, 0) + pending + config.num_samples <= config.limit(node.visits)


def _select(root: Node, config: MCTSConfig, drawn: _Drawn) -> list[Node]:
    """Up to ``leaves_per_iteration`` distinct nodes to expand, each found under the virtual losses of the descents
    before (a node found again gets another virtual loss; at most twice as many descents as nodes). A descent stops
    at a leaf, or at a node that progressive widening lets grow (its k new draws count against it after)."""
    leaves: list[Node] = []
    descents: list[Node] = []
    pending: dict[int, int] = {}  # node id -> draws promised to it by this iteration's earlier descents
    for _ in range(2 * config.leaves_per_iteration):
        node = root
        while node.children and not _widens(node, config, drawn, pending.get(node.id, 0)):
            node = _best_child(node, config)
        descents.append(node)
        for step in node.path():
            step.visits += 1  # virtual loss: a visit worth 0 until the real backup
        if node.children:
            pending[node.id] = pending.get(node.id, 0) + config.num_samples
        if node not in leaves:
            leaves.append(node)
        if len(leaves) == config.leaves_per_iteration or not root.children:
            break
    for node in descents:
        for step in node.path():
            step.visits -= 1
    return leaves


def _set_priors(siblings: list[Node], logprobs: dict[int, float | None]) -> None:
    """OpenR's priors: softmax over siblings of the length-normalised log-probability; uniform without one."""
    if any(logprobs.get(node.id) is None for node in siblings):
        weights = [1.0] * len(siblings)
    else:
        means = [(logprobs[node.id] or 0.0) / max(1, node.num_tokens) for node in siblings]
        weights = [math.exp(m - max(means)) for m in means]
    for node, weight in zip(siblings, weights, strict=True):
        node.prior = weight / sum(weights)


def _merge_repeats(parent: Node, new: list[Node]) -> list[Node]:
    """A widening's drawn step with the same text as a step ``parent`` had before is that child drawn again: it leaves
    the children (``repeat_of`` in the trace), and its twin is returned, once per repeat, for a backup. Repeats within
    one draw stay siblings, as in a first expansion."""
    before = {(child.text, child.finish_reason): child for child in parent.children if child not in new}
    repeats = []
    for child in new:
        twin = before.get((child.text, child.finish_reason))
        if twin is not None:
            parent.children.remove(child)
            child.info["repeat_of"] = twin.id
            repeats.append(twin)
    return repeats


def _checks(search: Searcher, config: MCTSConfig) -> bool:
    return config.terminal_check and search.check is not None


def _outcome(search: Searcher, config: MCTSConfig, node: Node) -> float:
    """A finished node's value: with ``terminal_check``, the final check's verdict (1 or 0, kept in
    ``info["check"]``); otherwise its reward-model or verdict score."""
    if not _checks(search, config):
        return node.score or 0.0
    node.info["check"] = bool(search.check(node.prefix))  # type: ignore[misc]
    return float(node.info["check"])


async def _value(search: Searcher, config: MCTSConfig, children: list[Node]) -> list[Node] | None:
    """Value the new children (their rollouts, then one reward-model call or one verdict call over them all): each
    child's value in ``info["eval"]``; the rollouts, or None when the budget cannot give every verdict a token."""
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
        if child.finished and _checks(search, config):
            child.info["eval"] = _outcome(search, config, child)
        else:
            child.info["eval"] = sum(_outcome(search, config, r) for r in done) / len(done) if done else last or 0.0
    return [r for group in rollouts for r in group]


async def _expand(
    search: Searcher, config: MCTSConfig, leaves: list[Node], drawn: _Drawn
) -> tuple[list[Node], list[Node], list[Node]] | None:
    """New children of every selected node in one engine call (k each, or ``root_samples`` for the root's first
    expansion, which is alone), valued (:func:`_value`), the siblings' priors recomputed. The new children, their
    rollouts and the children drawn again (widening merges repeats); None when the budget cannot give every sample a
    token."""
    k = (
        config.root_samples or config.num_samples
        if leaves[0].depth == 0 and not leaves[0].children
        else config.num_samples
    )
    samples = k * len(leaves) * (1 + config.rollouts)
    verdicts = samples * config.value_votes * VALUE_TOKENS if config.value_source == "self" else 0
    share = search.cap(leaves, samples, reserve=verdicts)  # rollouts and verdicts get theirs
    to_eos = [leaf.depth + 1 >= config.max_depth for leaf in leaves]
    puct = config.selection == "puct"
    groups = await search.expand(leaves, k, to_eos=to_eos, max_tokens=share, logprobs=0 if puct else None)
    if groups is None:
        return None
    repeats = []
    for leaf, group in zip(leaves, groups, strict=True):
        drawn.draws[leaf.id] = drawn.draws.get(leaf.id, 0) + len(group)
        for child in group:
            drawn.logprobs[child.id] = child.info.pop("logprob", None)
        repeats += _merge_repeats(leaf, group) if config.widening else []
        _set_priors(leaf.children, drawn.logprobs)
    children = [child for group in groups for child in group if "repeat_of" not in child.info]
    rollouts = await _value(search, config, children)
    if rollouts is None:
        return None
    if puct:
        for child in (child for leaf in leaves for child in leaf.children):
            child.info["prior"] = round(child.prior, 6)
    return children, rollouts, repeats


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
    drawn = _Drawn()
    for iteration in range(config.num_iterations):
        leaves = _select(root, config, drawn)
        for leaf in leaves:
            if leaf.finished:
                _backup(leaf, leaf.info["eval"])
        expandable = [leaf for leaf in leaves if not leaf.finished]
        if not expandable:
            continue
        widened = [(node, node.visits) for node in expandable if node.children]  # n when k(n) let it widen
        expanded = await _expand(search, config, expandable, drawn)
        if expanded is None:
            break  # the budget cannot afford another expansion
        children, rollouts, repeats = expanded
        for child in children + repeats:
            _backup(child, child.info["eval"])
        trajectories += [node for node in children + rollouts if node.finished]
        round_ = {
            "iteration": iteration,
            "leaves": [leaf.id for leaf in expandable],
            "children": len(children),
            "rollouts": len(rollouts),
        }
        if widened:
            round_["widened"] = [
                {"node": n.id, "visits": v, "draws": drawn.draws[n.id], "children": len(n.children)} for n, v in widened
            ]
        if repeats:
            round_["repeats"] = len(repeats)
        solved = [node.id for node in children + rollouts if node.info.get("check")]  # set by terminal_check only
        if solved:
            round_["passed_check"] = solved
        search.rounds.append(round_)
        if solved:
            break  # a finished trajectory passed the final check: the search is done
    if not trajectories:  # nothing finished: the end of the most visited path
        node = root
        while node.children:
            node = max(node.children, key=lambda child: child.visits)
        trajectories = [node]
    trajectories = search.checked(trajectories)
    extra = {"selection": config.selection, "exploration": config.c}
    if config.widening:
        extra["widening"] = {"c": config.widening_base, "alpha": config.widening_alpha}
    if config.final_selection == "value":
        return search.result(trajectories, "score", **extra)
    best = sorted(trajectories, key=lambda node: node.score or 0.0, reverse=True)[: config.vote_top_k]
    return search.result(best, "vote", **extra)
