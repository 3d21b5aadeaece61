"""What the tree-search strategies share: a tree of reasoning steps and a per-request searcher that expands and
scores many partial solutions in one batched call each, under the request's token budget.

A step ends at ``step_delimiter`` (kept in the text, as the engine adapters keep stop strings), so a partial
solution is the concatenation of its steps and continuing it is ``engine.generate([task.prompt + prefix, ...])``,
as search-and-learn continues the assistant message (``continue_final_message``). A sampled step ends its solution
when the engine stopped for any other reason: EOS, a client stop string, ``length``, or an empty step.

The server's :class:`~server.accounting.Ledger` refuses an engine call whose worst case (``n * prompts *
max_tokens``) could exceed ``max_total_tokens``, so :class:`Searcher` tracks what is left from the returned samples'
``num_tokens`` and sizes every call to fit; a search stops when the next call cannot give each sample one token.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from strategies import checks
from strategies.aggregation import aggregate_scores, resolve_aggregation
from strategies.answers import cluster, equivalent
from strategies.base import (
    Candidate,
    Engine,
    FinishReason,
    Sample,
    SamplingSpec,
    Scorer,
    StrategyResult,
    Task,
    sampling_temperature,
)
from strategies.sampling import ScoredConfig, split_steps

VALUE_PROMPT = (
    "Before going on, judge the steps so far: can they still reach a correct final answer? "
    "Reply with one word: sure, likely or impossible.\nVerdict:"
)
VALUE_MAP = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}  # ToT's game24 value_outputs_unwrap
VALUE_TOKENS = 12  # one word: " impossible" is 11 tokens to a character-level tokenizer (the first verdict counts)
_VERDICT = re.compile(r"\b(sure|likely|impossible)\b", re.IGNORECASE)


def value_query(prompt: str, partial: str, value_prompt: str = VALUE_PROMPT) -> str:
    """What the policy continues to judge a partial solution: the prompt, the steps, a blank line, the value prompt.

    ``ponder train sft --value_examples_per_problem`` trains on exactly this text.

    >>> value_query("Q: ", "2 + 2 = 4  ", value_prompt="Verdict:").split()
    ['Q:', '2', '+', '2', '=', '4', 'Verdict:']
    """
    return prompt + partial.rstrip() + "\n\n" + value_prompt


def self_value(verdicts: list[str]) -> tuple[float, dict[str, int]]:
    """ToT's value of a state from the policy's verdicts, normalised to [0, 1], and the verdict counts.

    Each verdict weighs ToT's value map (sure 20, likely 1, impossible 0.001, anything else 0); the value is their
    mean divided by 20 (sure = 1, likely = 0.05, impossible = 0.00005), so it ranks states exactly as ToT's sums do.

    >>> self_value([" sure", "Likely.", "no idea"])
    (0.35, {'sure': 1, 'likely': 1})
    """
    counts: dict[str, int] = {}
    for text in verdicts:
        found = _VERDICT.search(text)
        if found:
            counts[found.group(1).lower()] = counts.get(found.group(1).lower(), 0) + 1
    total = sum(VALUE_MAP[name] * count for name, count in counts.items())
    return round(total / (VALUE_MAP["sure"] * len(verdicts)), 6), counts


@dataclass(frozen=True)
class SearchConfig(ScoredConfig):
    """Parameters of the step-level searches."""

    in_steps: ClassVar[bool] = True
    budget_doc: ClassVar[str | None] = "N partial solutions extended per step"

    max_depth: int = 40  # steps per solution at most; the step at max_depth runs to EOS (search-and-learn: 40)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1")


@dataclass(frozen=True)
class BeamConfig(SearchConfig):
    """Parameters of ``beam_search`` and ``dvts``."""

    beam_width: int = 4  # M: expansions per kept beam / per subtree (search-and-learn's beam_width, "m in the paper")
    lookahead: int = 0  # greedy steps rolled out before a step is scored (Snell's lookahead search); 0: none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_width < 1 or self.num_samples % self.beam_width:
            raise ValueError("beam_width must be at least 1 and divide num_samples")
        if self.lookahead < 0:
            raise ValueError("lookahead must be at least 0")


def step_end(sample: Sample, delimiter: str) -> FinishReason | None:
    """Why a sampled step ends its solution, or None for an ordinary step the search goes on from.

    >>> step_end(Sample("x = 1\\n\\n", 4, "stop", "\\n\\n"), "\\n\\n") is None
    True
    >>> step_end(Sample("so 7", 2, "stop"), "\\n\\n"), step_end(Sample(" \\n\\n", 1, "stop", "\\n\\n"), "\\n\\n")
    ('stop', 'stop')
    """
    if sample.finish_reason == "stop" and sample.stop_reason == delimiter and sample.text.strip():
        return None
    return sample.finish_reason or "stop"


@dataclass(eq=False)
class Node:
    """One reasoning step; the root is the empty solution."""

    id: int
    parent: Node | None
    text: str = ""  # this step, delimiter included
    num_tokens: int = 0  # tokens of this step
    prefix: str = ""  # the solution so far: every step from the root to here
    prefix_tokens: int = 0
    depth: int = 0
    finish_reason: FinishReason | None = None  # set when the solution ends with this step
    step_scores: list[float] = field(default_factory=list)  # reward-model scores of the prefix's steps
    score: float | None = None  # the prefix's aggregated reward, or a strategy's value of the state
    visits: int = 0  # MCTS
    value_sum: float = 0.0  # MCTS: sum of backed-up values
    prior: float = 1.0  # PUCT
    children: list[Node] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # strategy-specific trace data (votes, pruned, ...)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def path(self) -> list[Node]:
        """The nodes from the root down to this one."""
        node, path = self, []
        while node is not None:
            path.append(node)
            node = node.parent
        return path[::-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent.id if self.parent else None,
            "depth": self.depth,
            "text": self.text,
            "tokens": self.num_tokens,
            "step_scores": self.step_scores,
            "score": self.score,
            "visits": self.visits,
            "value": self.value_sum / self.visits if self.visits else None,
            "finish_reason": self.finish_reason,
            **self.info,
        }


class Tree:
    """Every node a search created, in creation order (the root is node 0)."""

    def __init__(self, delimiter: str, max_tokens: int) -> None:
        self.delimiter, self.max_tokens = delimiter, max_tokens
        self.root = Node(0, None)
        self.nodes = [self.root]

    def add(self, parent: Node, sample: Sample, *, attach: bool = True) -> Node:
        """A child of ``parent`` for one sampled step (``attach=False``: a rollout, kept out of ``children``)."""
        node = Node(
            len(self.nodes),
            parent,
            sample.text,
            sample.num_tokens,
            parent.prefix + sample.text,
            parent.prefix_tokens + sample.num_tokens,
            parent.depth + 1,
            step_end(sample, self.delimiter),
        )
        if sample.cumulative_logprob is not None:
            node.info["logprob"] = sample.cumulative_logprob
        if node.finish_reason is None and node.prefix_tokens >= self.max_tokens:
            node.finish_reason = "length"  # no room left in the request's max_tokens
        if attach:
            parent.children.append(node)
        self.nodes.append(node)
        return node

    def to_dict(self, chosen: Node) -> dict[str, Any]:
        return {"nodes": [n.to_dict() for n in self.nodes], "chosen": chosen.id, "path": [n.id for n in chosen.path()]}


def unique(nodes: Sequence[Node]) -> list[Node]:
    """The nodes with distinct prefixes, first seen kept; the others are marked ``duplicate`` in the trace."""
    seen: set[str] = set()
    kept = []
    for node in nodes:
        if node.prefix in seen:
            node.info["duplicate"] = True
        else:
            seen.add(node.prefix)
            kept.append(node)
    return kept


class Searcher:
    """One request's search: batched step expansion and prefix scoring within ``max_total_tokens``.

    ``config`` is any strategy config with ``step_delimiter`` and ``aggregation`` (a :class:`SearchConfig` or
    ``tree_of_thought``'s own).
    """

    def __init__(
        self, task: Task, config: Any, engine: Engine, scorer: Scorer | None, default_temperature: float
    ) -> None:
        self.task, self.config, self.engine, self.scorer = task, config, engine, scorer
        self.temperature = sampling_temperature(config, task, default_temperature)
        self.left = config.max_total_tokens  # tokens the budget still allows; None: no budget (the server sets one)
        self.check = checks.bind(getattr(config, "final_check", None), task.question)  # before any search is run
        self.tree = Tree(config.step_delimiter, task.max_tokens)
        self.rounds: list[dict[str, Any]] = []  # per-round summary for the trace
        self._calls = 0

    def cap(self, nodes: Sequence[Node], num_samples: int, reserve: int = 0) -> int:
        """Tokens each of ``num_samples`` new samples continuing ``nodes`` may have: what the longest prefix leaves
        of ``task.max_tokens``, and an equal share of the budget after ``reserve``; 0 when not one token each."""
        room = self.task.max_tokens - max(n.prefix_tokens for n in nodes)
        if self.left is None:
            return max(0, room)
        return max(0, min(room, (self.left - reserve) // max(1, num_samples)))

    def spec(
        self,
        n: int,
        max_tokens: int,
        *,
        to_eos: bool = False,
        temperature: float | None = None,
        stop: tuple[str, ...] | None = None,
        logprobs: int | None = None,
    ) -> SamplingSpec:
        """One step (stop at the delimiter), or the rest of the solution (``to_eos``); a fresh seed per call."""
        if stop is None:
            stop = self.task.stop if to_eos else (self.config.step_delimiter, *self.task.stop)
        self._calls += 1
        seed = None if self.task.seed is None else self.task.seed + self._calls
        return SamplingSpec(
            n=n,
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.task.top_p,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            logprobs=logprobs,
        )

    async def generate(self, prompts: list[str], spec: SamplingSpec) -> list[list[Sample]]:
        """One engine call; what it spent comes off the budget."""
        outputs = await self.engine.generate(prompts, spec, self.task.request_id)
        if self.left is not None:
            self.left -= sum(s.num_tokens for samples in outputs for s in samples)
        return outputs

    async def expand(
        self,
        nodes: Sequence[Node],
        n: int,
        *,
        to_eos: bool | Sequence[bool] = False,
        reserve: int = 0,
        max_tokens: int | None = None,
        logprobs: int | None = None,
        attach: bool = True,
    ) -> list[list[Node]] | None:
        """``n`` next steps for every node in one engine call; the new children per node, or None when the budget
        cannot give every sample a token. Nodes that must run to EOS and nodes that stop at a step go out as two
        concurrent calls when mixed (only MCTS mixes them)."""
        cap = self.cap(nodes, n * len(nodes), reserve)
        max_tokens = cap if max_tokens is None else min(cap, max_tokens)
        if max_tokens < 1:
            return None
        flags = list(to_eos) if isinstance(to_eos, Sequence) else [to_eos] * len(nodes)
        groups = {flag: [i for i, f in enumerate(flags) if f == flag] for flag in dict.fromkeys(flags)}
        outputs = await asyncio.gather(
            *(
                self.generate(
                    [self.task.prompt + nodes[i].prefix for i in members],
                    self.spec(n, max_tokens, to_eos=flag, logprobs=logprobs),
                )
                for flag, members in groups.items()
            )
        )
        samples: list[list[Sample]] = [[] for _ in nodes]
        for members, output in zip(groups.values(), outputs, strict=True):
            for i, drawn in zip(members, output, strict=True):
                samples[i] = drawn
        return [
            [self.tree.add(node, s, attach=attach) for s in drawn] for node, drawn in zip(nodes, samples, strict=True)
        ]

    async def lookahead(self, nodes: Sequence[Node], steps: int) -> list[str]:
        """Greedy continuations of up to ``steps`` more steps for the open nodes, one engine call per step over
        all of them (Snell et al.'s lookahead search); "" for finished nodes or when the budget runs short."""
        suffixes, used = ["" for _ in nodes], [0 for _ in nodes]
        open_ = [i for i, node in enumerate(nodes) if not node.finished]
        for _ in range(steps):
            if not open_:
                break
            room = min(self.task.max_tokens - nodes[i].prefix_tokens - used[i] for i in open_)
            max_tokens = room if self.left is None else min(room, self.left // len(open_))
            if max_tokens < 1:
                break
            outputs = await self.generate(
                [self.task.prompt + nodes[i].prefix + suffixes[i] for i in open_],
                self.spec(1, max_tokens, temperature=0.0),
            )
            for i, (sample,) in zip(open_, outputs, strict=True):
                suffixes[i] += sample.text
                used[i] += sample.num_tokens
            open_ = [
                i for i, (s,) in zip(open_, outputs, strict=True) if step_end(s, self.config.step_delimiter) is None
            ]
        return suffixes

    async def score(self, nodes: Sequence[Node], suffixes: Sequence[str] | None = None) -> None:
        """Score every node's prefix (plus its lookahead suffix) in one reward-model call: ``step_scores`` and the
        aggregated ``score``."""
        if not nodes:
            return
        assert self.scorer is not None
        texts = [node.prefix + (suffixes[i] if suffixes else "") for i, node in enumerate(nodes)]
        items = [(self.task.question, split_steps(text, self.config.step_delimiter)) for text in texts]
        how = resolve_aggregation(self.config.aggregation, self.scorer)
        for node, scores in zip(nodes, await self.scorer.score(items, self.task.request_id), strict=True):
            node.step_scores = list(scores)
            node.score = aggregate_scores(scores, how)

    async def judge(self, nodes: Sequence[Node], votes: int, value_prompt: str = VALUE_PROMPT) -> bool:
        """Value every node by the policy's own verdicts (Tree of Thoughts' value prompt after the partial solution)
        in one engine call, ``votes`` verdicts each: ``score`` and ``info["votes"]``. False when the budget cannot
        give every verdict a token."""
        if not nodes:
            return True
        samples = votes * len(nodes)
        max_tokens = VALUE_TOKENS if self.left is None else min(VALUE_TOKENS, self.left // samples)
        if max_tokens < 1:
            return False
        prompts = [value_query(self.task.prompt, node.prefix, value_prompt) for node in nodes]
        outputs = await self.generate(prompts, self.spec(votes, max_tokens, stop=()))
        for node, verdicts in zip(nodes, outputs, strict=True):
            node.score, node.info["votes"] = self_value([s.text for s in verdicts])
        return True

    def checked(self, finished: Sequence[Node]) -> list[Node]:
        """The finished nodes that pass the config's ``final_check`` when any does, else all of them; each checked
        node's ``info["check"]`` says whether it passed."""
        if self.check is None:
            return list(finished)
        for node in finished:
            if "check" not in node.info:  # a search may have checked it already (mcts's terminal_check)
                node.info["check"] = self.check(node.prefix)
        return [node for node in finished if node.info["check"]] or list(finished)

    def result(self, finals: Sequence[Node], how: Literal["vote", "score"], **extra: Any) -> StrategyResult:
        """The chosen solution among ``finals``: weighted best-of-N (``vote``: reward summed per equivalent answer,
        the best member of the heaviest answer) or the highest score; with ``return_trace``, the tree in ``extra``."""
        finals = list(finals) or [self.tree.root]
        candidates = [
            Candidate(
                n.prefix,
                n.prefix_tokens,
                n.finish_reason or "length",
                list(n.step_scores),
                n.score,
                self.task.reader.answer(n.prefix),
            )
            for n in finals
        ]
        best, answers = choose(candidates, how, self.task.reader.same)
        candidates[best].chosen = True
        finals[best].info["chosen"] = True
        out = {"answers": answers} if answers else {}
        if self.config.return_trace:
            out |= {"tree": self.tree.to_dict(finals[best]), "rounds": self.rounds, **extra}
        return StrategyResult(choices=[candidates[best]], candidates=candidates, extra=out)


def choose(
    candidates: Sequence[Candidate],
    how: Literal["vote", "score"],
    same: Callable[[str, str], bool] = equivalent,
) -> tuple[int, list[dict[str, Any]]]:
    """The index of the chosen candidate and, for ``vote``, the weight of every answer.

    ``vote`` is weighted best-of-N as in ``weighted_best_of_n`` (Li et al. 2023): it falls back to the best score
    when no candidate states an answer. Ties keep the first.
    """
    by_score = max(range(len(candidates)), key=lambda i: candidates[i].score or 0.0)
    if how == "score":
        return by_score, []
    groups = cluster([c.answer for c in candidates], same)
    if not groups:
        return by_score, []
    totals = [sum(candidates[i].score or 0.0 for i in members) for members in groups]
    heaviest = groups[max(range(len(groups)), key=totals.__getitem__)]
    answers = [
        {"answer": candidates[m[0]].answer, "weight": t, "count": len(m)} for m, t in zip(groups, totals, strict=True)
    ]
    return max(heaviest, key=lambda i: candidates[i].score or 0.0), answers
