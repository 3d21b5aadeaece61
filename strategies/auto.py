"""``auto``: a compute-optimal choice per question, from a cheap probe of its difficulty and a fitted policy file.

Snell, Lee, Xu and Kumar 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling Model
Parameters" (arXiv 2408.03314): estimate a question's difficulty from the model itself ("model-predicted
difficulty": the verifier's mean final score over samples of it, binned into 5 quantiles), and for each difficulty
bin and compute budget pick the test-time strategy and its hyperparameters that did best on held-out questions of
that bin; this beat best-of-N with about 4x less compute. Here:

1. Probe: ``probe_samples`` whole solutions in one engine call, exactly the call ``self_consistency`` with that N
   makes (same temperature, seed and per-sample budget). Their answer agreement (the largest group of equivalent
   answers over the N samples) is the difficulty signal without a reward model; with one, the N samples are scored
   in one reward-model call and the signal is the mean of the agreement and the mean aggregated score (Snell's
   verifier score, taken over 4 samples instead of their 2048, which our 2-core CPU could not afford).
   ``difficulty = 1 - signal``.
2. The policy file (fitted by ``ponder tune auto`` on a development split, :mod:`benchmarks.tune_auto`) holds, for
   each signal, the difficulty bins' edges (quantiles of the dev questions' difficulty; Snell's 5 bins) and, per
   bin and token-budget bucket, a configuration: by default (the tuner's pooled allocation) the choices whose mean
   tokens per question (the probe's included) over all the dev questions fit the bucket with the best dev accuracy
   over them, so hard bins may spend more than the bucket and easy ones less; with the tuner's per-bin allocation,
   Snell's rule, the best whose mean tokens in its own bin fit. The request's budget is ``token_budget``, else the
   policy's ``default_budget``, either at most ``max_total_tokens``; it falls in the largest bucket at most that
   size (the smallest bucket when it is below all).
3. The chosen strategy (:func:`strategies.get`) runs on the same task, engine and reward model. The probe's call is
   replayed to it: a first engine call identical to the probe's but for ``n`` gets the probe's samples and draws
   only the ``n - probe_samples`` others, with ``seed + probe_samples`` (vLLM's parallel sampling gives the k-th of
   n samples ``seed + k``, so the result is what the plain strategy draws); the reward-model items the probe scored
   are not scored again. So ``self_consistency``, ``best_of_n`` and ``weighted_best_of_n`` at N = probe_samples
   cost nothing beyond the probe, and at a larger N only their extra samples; ``best_of_n`` with ``stop_score``
   (``adaptive_best_of_n``) gets the probe as its first round when ``round_size`` is ``probe_samples``.

The policy file: ``policy_file``, else the file the ``PONDER_AUTO_POLICY`` environment variable names, else the
one shipped for the default models (``models/default-policy/auto-policy.json``, fitted for the default policy and
PRM on the arith train split). ``choice`` skips the policy and runs the given configuration after the probe (how
``ponder tune auto`` measures each candidate through this very code path).

Defaults: ``probe_samples`` is the policy's (4 in the shipped file: the smallest N of the grid, whose vote is
free as a choice); the bins, buckets and choices are all the tuner's.

Cost: the probe's engine call (``n = probe_samples``) and, with a reward model and a policy table that reads it,
one reward-model call; then the chosen strategy's own calls, less what the probe already drew and scored. The
response's ``ponder.trace.auto`` (``return_trace``) says what was measured and chosen, and what the probe cost.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, ClassVar

import strategies
from strategies import register
from strategies.aggregation import aggregate_scores, resolve_aggregation
from strategies.answers import cluster
from strategies.base import (
    Candidate,
    Engine,
    InvalidRequestError,
    Sample,
    SamplingSpec,
    Scorer,
    StrategyConfig,
    StrategyResult,
    Task,
)
from strategies.sampling import ScoredConfig, draw, score

FORMAT = "ponder-auto-policy/1"
POLICY_FILENAME = "auto-policy.json"
POLICY_ENV = "PONDER_AUTO_POLICY"
SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "models" / "default-policy" / POLICY_FILENAME
AGREEMENT, WITH_PRM = "agreement", "agreement+prm"  # the difficulty signals a policy table is fitted on
SIGNALS = (AGREEMENT, WITH_PRM)
DEFAULT_PROBE = 4  # with a forced choice and no probe_samples: the tuner's default
MAX_POLICY_BYTES = 1 << 20  # a policy is a few kB; a device or a huge file is not read


# ---- the policy file ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """One configuration: a registered strategy with its params, and its label (``best_of_n:16``, ``greedy``)."""

    label: str
    strategy: str
    params: Mapping[str, Any]
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # dev accuracy, tokens, problems


@dataclass(frozen=True)
class Table:
    """One signal's bins (``edges``: bin i holds difficulties in (edges[i-1], edges[i]]) and choices [bin][bucket]."""

    signal: str
    edges: tuple[float, ...]
    cells: tuple[tuple[Choice, ...], ...]

    def bin_of(self, difficulty: float) -> int:
        """
        >>> Table(AGREEMENT, (0.0, 0.25), ()).bin_of(0.0), Table(AGREEMENT, (0.0, 0.25), ()).bin_of(0.5)
        (0, 2)
        """
        return bisect.bisect_left(self.edges, difficulty)


@dataclass(frozen=True)
class Policy:
    probe_samples: int
    budgets: tuple[int, ...]  # bucket sizes, tokens per question, increasing
    default_budget: int
    tables: Mapping[str, Table]
    source: str

    def bucket(self, budget: int) -> int:
        """The largest bucket at most ``budget`` (the smallest when it is below all)."""
        return max(bisect.bisect_right(self.budgets, budget) - 1, 0)

    def table(self, scored: bool) -> Table:
        """The reward model's table where there is one and it has one, else the agreement table."""
        if scored and WITH_PRM in self.tables:
            return self.tables[WITH_PRM]
        if AGREEMENT in self.tables:
            return self.tables[AGREEMENT]
        raise InvalidRequestError(
            f"auto policy {self.source} has only a table for a reward model, and this server has none loaded"
        )


def resolve_choice(label: str, strategy: str | None = None, params: Mapping[str, Any] | None = None) -> Choice:
    """A configuration from a strategy or preset name and params; ValueError for an unknown or nested one."""
    name = strategy or label
    try:
        spec, fixed = strategies.resolve(name)
    except strategies.UnknownStrategyError as exc:
        raise ValueError(str(exc)) from None
    if spec.name == "auto":
        raise ValueError("auto cannot choose auto")
    if not isinstance(params or {}, Mapping):
        raise ValueError(f"{label}: params must be an object")
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ValueError(f"{label}: unknown parameter {unknown[0]!r} for strategy {spec.name!r}")
    return Choice(label, spec.name, {**fixed, **(params or {})})


def parse_policy(data: Any, source: str) -> Policy:
    """A policy from a policy file's JSON; ValueError naming what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an auto policy (its format must be {FORMAT!r})")
    probe, budgets, default = data.get("probe_samples"), data.get("budgets"), data.get("default_budget")
    if not isinstance(probe, int) or probe < 1:
        raise ValueError("probe_samples must be a positive integer")
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, int) and b > 0 for b in budgets):
        raise ValueError("budgets must be a list of positive integers")
    if sorted(set(budgets)) != budgets:
        raise ValueError("budgets must increase")
    if not isinstance(default, int) or default < 1:
        raise ValueError("default_budget must be a positive integer")
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables or set(tables) - set(SIGNALS):
        raise ValueError(f"tables must map some of {', '.join(SIGNALS)} to a table")
    parsed = {signal: _parse_table(signal, table, len(budgets)) for signal, table in tables.items()}
    return Policy(probe, tuple(budgets), default, parsed, source)


def _parse_table(signal: str, table: Any, buckets: int) -> Table:
    edges, cells = (table.get("edges"), table.get("cells")) if isinstance(table, dict) else (None, None)
    if not isinstance(edges, list) or not all(isinstance(e, int | float) for e in edges) or sorted(edges) != edges:
        raise ValueError(f"table {signal}: edges must be an increasing list of numbers")
    if not isinstance(cells, list) or len(cells) != len(edges) + 1:
        raise ValueError(f"table {signal}: cells must hold one row per bin ({len(edges) + 1})")
    rows = []
    for row in cells:
        if not isinstance(row, list) or len(row) != buckets:
            raise ValueError(f"table {signal}: every row of cells must hold one choice per budget ({buckets})")
        rows.append(tuple(_parse_choice(signal, cell) for cell in row))
    return Table(signal, tuple(float(e) for e in edges), tuple(rows))


def _parse_choice(signal: str, cell: Any) -> Choice:
    if not isinstance(cell, dict) or not isinstance(cell.get("strategy"), str):
        raise ValueError(f"table {signal}: every choice must be an object with a strategy")
    label = str(cell.get("label") or cell["strategy"])
    choice = resolve_choice(label, cell["strategy"], cell.get("params") or {})
    stats = {k: cell[k] for k in ("accuracy", "tokens", "problems") if k in cell}
    return dataclasses.replace(choice, stats=stats)


def policy_path(config: AutoConfig) -> Path:
    """Where the policy comes from: ``policy_file``, else ``$PONDER_AUTO_POLICY``, else the shipped default's."""
    return Path(config.policy_file or os.environ.get(POLICY_ENV) or SHIPPED_POLICY)


def load_policy(path: Path) -> Policy:
    """The policy in ``path`` (parsed once per version of the file); InvalidRequestError when missing or invalid."""
    try:
        stat = path.stat()
    except (OSError, ValueError):
        raise InvalidRequestError(
            f"auto has no policy file at {path}: fit one with `ponder tune auto` and pass its path as "
            f"strategy_params.policy_file (or set {POLICY_ENV} where the server starts)"
        ) from None
    if not S_ISREG(stat.st_mode) or stat.st_size > MAX_POLICY_BYTES:
        raise InvalidRequestError(f"auto policy {path} is not a regular file of at most {MAX_POLICY_BYTES} bytes")
    return _load_policy(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_policy(path: str, mtime_ns: int, size: int) -> Policy:
    try:
        return parse_policy(json.loads(Path(path).read_text()), path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"auto policy file {path} cannot be read as JSON: {type(exc).__name__}") from None
    except ValueError as exc:
        raise InvalidRequestError(f"auto policy file {path} is not valid: {exc}") from None


# ---- the config ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoConfig(StrategyConfig):
    budget_param: ClassVar[str | None] = "token_budget"
    budget_doc: ClassVar[str | None] = "tokens per question (mean, probe included) the policy fits its choice to"
    in_steps: ClassVar[bool] = True  # it may choose a step search, to which a whole-sample constraint cannot apply

    token_budget: int | None = None  # tokens per question the choice should fit on average; None: the policy's
    policy_file: str | None = None  # None: $PONDER_AUTO_POLICY, else the shipped default models' policy
    probe_samples: int | None = None  # None: the policy's (with ``choice``: DEFAULT_PROBE)
    choice: dict[str, Any] | None = None  # {"strategy": NAME, "params": {...}}: run this after the probe, no policy

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError("token_budget must be at least 1")
        if self.probe_samples is not None and self.probe_samples < 1:
            raise ValueError("probe_samples must be at least 1")
        if self.policy_file is not None and not self.policy_file.strip():
            raise ValueError("policy_file must not be empty")
        if self.choice is not None:
            self.forced()  # ValueError for a bad one

    def forced(self) -> Choice | None:
        """``choice`` as a configuration; ValueError when it names no strategy or an unknown parameter."""
        if self.choice is None:
            return None
        if set(self.choice) - {"strategy", "params"} or not isinstance(self.choice.get("strategy"), str):
            raise ValueError('choice must be {"strategy": NAME, "params": {...}}')
        return resolve_choice(self.choice["strategy"], params=self.choice.get("params") or {})

    def samples_per_call(self) -> tuple[int, str | None]:
        """The probe's, or a forced choice's where it draws more; a policy's choices are the tuner's grid (16 samples
        at most by default), bounded by the server's node and token caps."""
        probe = self.probe_samples or DEFAULT_PROBE
        forced = self.forced()
        if forced is None:
            return probe, "probe_samples"
        try:
            n, _ = strategies.get(forced.strategy).config_cls(**forced.params).samples_per_call()
        except (TypeError, ValueError):  # refused when it runs, with the strategy's own message
            return probe, "probe_samples"
        return (n, "choice") if n > probe else (probe, "probe_samples")


# ---- the probe, replayed to the chosen strategy -------------------------------------------------------------------
class ProbeReplay:
    """The engine the probe and the chosen strategy share: its first call (the probe's) is recorded, and a later
    call identical to it but for a larger ``n`` gets the recorded samples plus ``n - probe`` fresh ones."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.recorded: tuple[list[str], SamplingSpec, list[Sample]] | None = None
        self.replayed = 0  # probe samples handed to the chosen strategy

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        if self.recorded is None:
            outputs = await self._engine.generate(prompts, spec, request_id)
            self.recorded = (list(prompts), spec, list(outputs[0]))
            return outputs
        old_prompts, old_spec, samples = self.recorded
        same = list(prompts) == old_prompts and dataclasses.replace(spec, n=old_spec.n) == old_spec
        if self.replayed or not same or spec.n < old_spec.n:
            return await self._engine.generate(prompts, spec, request_id)
        self.replayed = old_spec.n
        fresh: list[Sample] = []
        if spec.n > old_spec.n:
            seed = None if spec.seed is None else spec.seed + old_spec.n
            more = dataclasses.replace(spec, n=spec.n - old_spec.n, seed=seed)
            (fresh,) = await self._engine.generate(prompts, more, request_id)
        return [samples + list(fresh)]

    def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> Any:
        return self._engine.stream(prompt, spec, request_id)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)


class ScoreReplay:
    """The reward model the probe and the chosen strategy share: what the probe scores (``recording``) is kept, and
    the chosen strategy's items among it are answered from the probe's scores."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self.kind = scorer.kind
        self.aggregation = getattr(scorer, "aggregation", None)
        self.known: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self.recording = True
        self.replayed = 0  # items answered from the probe's scores

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        keys = [(question, tuple(steps)) for question, steps in items]
        missing = [k for k in keys if self.recording or k not in self.known]
        got = await self._scorer.score([(q, list(s)) for q, s in missing], request_id) if missing else []
        fresh = dict(zip(missing, got, strict=True))
        if self.recording:
            self.known |= fresh
        else:
            self.replayed += len(keys) - len(missing)
        return [list(fresh[k] if k in fresh else self.known[k]) for k in keys]


@dataclass
class Probe:
    candidates: list[Candidate]
    tokens: int
    agreement: float  # the largest group of equivalent answers over all probe samples
    prm_mean: float | None  # the mean aggregated reward-model score; None: not scored

    def signal(self, name: str) -> float:
        if name == WITH_PRM and self.prm_mean is not None:
            return (self.agreement + self.prm_mean) / 2
        return self.agreement


async def run_probe(
    task: Task, config: AutoConfig, samples: int, engine: ProbeReplay, scorer: ScoreReplay | None
) -> Probe:
    """``samples`` solutions drawn as ``self_consistency`` draws them; their agreement and, with ``scorer``, their
    mean score (one reward-model call, remembered for the chosen strategy)."""
    probe_config = ScoredConfig(
        num_samples=samples, temperature=config.temperature, max_total_tokens=config.max_total_tokens
    )
    candidates = await draw(task, probe_config, engine)
    for candidate in candidates:
        candidate.answer = task.reader.answer(candidate.text)
    groups = cluster([c.answer for c in candidates], task.reader.same)
    agreement = len(groups[0]) / len(candidates) if groups else 0.0
    prm_mean = None
    if scorer is not None:
        await score(task, probe_config, candidates, scorer)
        scorer.recording = False
        how = resolve_aggregation(None, scorer)
        prm_mean = sum(aggregate_scores(c.step_scores, how) for c in candidates) / len(candidates)
    return Probe(candidates, sum(c.num_tokens for c in candidates), agreement, prm_mean)


# ---- the strategy -------------------------------------------------------------------------------------------------
def request_budget(config: AutoConfig, policy: Policy) -> tuple[int, str]:
    """The request's token budget and where it came from."""
    budget, source = (config.token_budget, "token_budget") if config.token_budget else (policy.default_budget, "policy")
    if config.max_total_tokens is not None and config.max_total_tokens < budget:
        return config.max_total_tokens, "max_total_tokens"
    return budget, source


def chosen_config(choice: Choice, config: AutoConfig, remaining: int | None) -> StrategyConfig | None:
    """The chosen strategy's config within what the probe left of ``max_total_tokens``; None when that is too little
    for it; InvalidRequestError for a choice its strategy refuses."""
    spec = strategies.get(choice.strategy)
    params = dict(choice.params)
    if config.temperature is not None:
        params.setdefault("temperature", config.temperature)
    params |= {"return_trace": config.return_trace}
    try:
        built = spec.config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"auto's choice {choice.label} is refused by {choice.strategy}: {exc}") from None
    if remaining is None:
        return built
    try:
        return dataclasses.replace(built, max_total_tokens=remaining) if remaining > 0 else None
    except ValueError:
        return None  # the budget left cannot give each of its samples a token


@register("auto", config=AutoConfig)
async def auto(task: Task, config: AutoConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """A probe's difficulty and the request's budget pick a strategy and N from a fitted policy; that one runs."""
    forced = config.forced()
    policy = None if forced is not None else load_policy(policy_path(config))
    samples = policy.probe_samples if policy is not None else config.probe_samples or DEFAULT_PROBE
    if policy is not None and config.probe_samples not in (None, samples):
        raise InvalidRequestError(f"auto policy {policy.source} was fitted with probe_samples={samples}")
    table = policy.table(scorer is not None) if policy is not None else None
    replay = ProbeReplay(engine)
    reading = ScoreReplay(scorer) if scorer is not None and (table is None or table.signal == WITH_PRM) else None
    probe = await run_probe(task, config, samples, replay, reading)
    why: dict[str, Any] = {"probe_samples": samples, "probe_tokens": probe.tokens, "agreement": probe.agreement}
    why |= {"prm_mean": probe.prm_mean} if probe.prm_mean is not None else {}
    if forced is not None:
        choice = forced
        why |= {"chose": _shown(choice), "why": "the request's choice"}
    else:
        assert policy is not None and table is not None
        choice = _from_policy(policy, table, probe, config, why)
    choice, chosen = _configured(choice, config, probe, why)
    spec = strategies.get(choice.strategy)
    if spec.needs_scorer and scorer is None:
        raise InvalidRequestError(f"auto chose {choice.label}, which needs a reward model; this server has none")
    result = await spec.fn(task, chosen, replay, reading or scorer)
    why |= {"reused_probe_samples": replay.replayed, "reused_scores": reading.replayed if reading else 0}
    why |= {"probe_answers": [c.answer for c in probe.candidates]}
    result.extra = {**result.extra, "auto": why}
    return result


def _configured(choice: Choice, config: AutoConfig, probe: Probe, why: dict[str, Any]) -> tuple[Choice, StrategyConfig]:
    """The choice with its config, within what the probe left of ``max_total_tokens``; when that is too little for
    it, the probe's own vote (``self_consistency`` at the probe's N and budget: its call is the probe's, replayed)."""
    remaining = None if config.max_total_tokens is None else config.max_total_tokens - probe.tokens
    chosen = chosen_config(choice, config, remaining)
    if chosen is not None:
        return choice, chosen
    vote = resolve_choice("self_consistency", params={"num_samples": len(probe.candidates)})
    why |= {"fallback": "the probe left too little of max_total_tokens for the choice; the probe's vote answers"}
    built = chosen_config(vote, config, None)
    assert built is not None
    return vote, dataclasses.replace(built, max_total_tokens=config.max_total_tokens)


def _from_policy(policy: Policy, table: Table, probe: Probe, config: AutoConfig, why: dict[str, Any]) -> Choice:
    """The policy's choice for this probe and budget, with what led to it written into ``why``."""
    difficulty = difficulty_of(probe.signal(table.signal))
    budget, source = request_budget(config, policy)
    bucket = policy.bucket(budget)
    bin_ = table.bin_of(difficulty)
    capped = _within_cap(table.cells[bin_], bucket, config.max_total_tokens)
    if capped != bucket:
        why["capped"] = (
            f"the bucket's choice spent more than max_total_tokens in this bin; bucket {policy.budgets[capped]}'s"
        )
    bucket = capped
    choice = table.cells[bin_][bucket]
    why |= {
        "signal": table.signal,
        "difficulty": difficulty,
        "bin": bin_,
        "bins": len(table.cells),
        "budget": budget,
        "budget_from": source,
        "bucket": policy.budgets[bucket],
        "chose": _shown(choice),
        "policy": policy.source,
    }
    return choice


def difficulty_of(signal: float) -> float:
    """A question's difficulty from its probe signal, rounded to the 6 places the policy's bin edges keep (the tuner
    bins its dev questions with this too, so a question at an edge falls in the same bin there and here)."""
    return round(1.0 - signal, 6)


def _within_cap(row: Sequence[Choice], bucket: int, cap: int | None) -> int:
    """The largest bucket at most ``bucket`` whose choice's development tokens in this bin fit the request's hard
    cap (a pooled policy may give a hard bin more than the bucket); the smallest when none does.

    >>> row = [Choice("a", "none", {}, {"tokens": 100}), Choice("b", "none", {}, {"tokens": 2000})]
    >>> _within_cap(row, 1, None), _within_cap(row, 1, 1500), _within_cap(row, 1, 50)
    (1, 0, 0)
    """
    if cap is None:
        return bucket
    return next((b for b in range(bucket, -1, -1) if row[b].stats.get("tokens", 0) <= cap), 0)


def _shown(choice: Choice) -> dict[str, Any]:
    return {"label": choice.label, "strategy": choice.strategy, "params": dict(choice.params), **choice.stats}
