r"""``ponder train dpo``: Direct Preference Optimization of an SFT policy on verified pairs of its own solutions.

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model") fits
the policy to preferences with a classification loss on the log-ratio to a frozen reference model, here the SFT
policy itself: ``-log sigmoid(beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)])``. No reward model
and no sampling during training.

The preferences come from the task's verifier, as in iterative reasoning preference optimization (Pang et al. 2024):
for every train-split problem the policy samples ``num_samples`` solutions on the vLLM engine (one engine session
samples them and measures the SFT policy's greedy test accuracy, the "before"), the task grades each final answer,
and a right and a wrong solution of the same problem make one pair (up to ``pairs_per_problem`` per problem; a
problem whose samples are all right or all wrong gives none). Each pair is one row of TRL's conversational
preference format, the prompt being the user message the server sends::

    {"prompt": [{"role": "user", "content": task.prompt(problem)}],
     "chosen": [{"role": "assistant", "content": right}], "rejected": [{"role": "assistant", "content": wrong}]}

Other sources: ``--pairs_from PATH`` reads graded solutions written by ``ponder label`` (its ``prompt``,
``completion``, ``outcome`` and ``problem_id`` columns), and ``--source reference`` pairs each reference solution
with a copy given one planted error (:func:`training.label.plant_error`; no engine, for tests and smoke runs).
``--pair_unit step`` makes Step-DPO pairs instead (Lai et al. 2024; :mod:`training.step_pairs`): the first wrong step
against a right one after the same prefix, ``--pair_unit token`` the same cut to the first differing token, and
``--greedy_errors`` adds each problem's greedy solution, so the policy's confident mistakes are paired first.
After training: the same outputs as ``ponder train sft`` (see :mod:`training.tuning`), with the gain over the SFT
policy per level.

    ponder train dpo --policy models/default-policy --output_dir runs/dpo
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig, DPOTrainer

from strategies.base import SamplingSpec
from training.evaluate_policy import chat_prompt, evaluate_levels
from training.label import greedy_solutions, load_rows, plant_error, sample_solutions
from training.runs import BF16_HELP
from training.step_pairs import step_pairs, tokenize_pair
from training.tasks import Problem, TaskSpec, get_task
from training.tuning import (
    PolicyTuningArgs,
    check_tuning_args,
    eval_kwargs,
    evaluate,
    finish,
    load_policy,
    require_policy,
)
from training.tuning import train_problems as load_train_problems

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the dataclass defaults: sized (from step times under load) for ~10-15 min on 2 idle CPU cores
    "tiny": {  # seconds, no vLLM: reference solutions against planted errors; learns nothing useful
        "source": "reference",
        "num_train_problems": 16,
        "levels": [1, 2],
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 1000,
        "eval_after_training": False,
        "eval_problems_per_level": 10,
    },
}


@dataclass
class PolicyDPOConfig(PolicyTuningArgs, DPOConfig):
    """``ponder train dpo``: TRL's ``DPOConfig`` plus the policy, the pair source and the evaluation."""

    # ---- preference pairs
    source: str = field(
        default="policy",
        metadata={
            "help": "Solutions to pair: policy samples (vLLM), or reference solutions against planted errors.",
            "choices": ["policy", "reference"],
        },
    )
    pairs_from: str | None = field(
        default=None, metadata={"help": "Read graded solutions from a `ponder label` output instead of sampling."}
    )
    num_samples: int = field(default=4, metadata={"help": "Solutions sampled per problem (k; source=policy)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the solutions."})
    pairs_per_problem: int = field(
        default=2, metadata={"help": "Most (right, wrong) pairs per problem, spread over distinct solutions."}
    )
    pair_unit: str = field(
        default="solution",
        metadata={
            "help": "solution: whole right vs wrong solutions (DPO); step: the first wrong step vs a right step "
            "after the same prefix (Step-DPO, Lai et al. 2024; needs the task's step checker, not --pairs_from); "
            "token: those steps cut to their first differing token, what the two steps share moved into the prompt.",
            "choices": ["solution", "step", "token"],
        },
    )
    greedy_errors: bool = field(
        default=False,
        metadata={
            "help": "Also decode each problem greedily and pair its wrong greedy solutions first (source=policy)."
        },
    )
    chosen: str = field(
        default="sample",
        metadata={
            "help": "sample: a right solution of the policy's is the chosen one; reference: the problem's reference "
            "solution is, against each of the policy's wrong ones (source=policy, pair_unit=solution); solver "
            "(pair_unit=step or token, a task with a step solver: game24): a right sample's step after the same "
            "prefix, else one the task's solver writes, so that every wrong step gets a pair.",
            "choices": ["sample", "reference", "solver"],
        },
    )
    min_pair_step: int = field(
        default=0,
        metadata={
            "help": "Step pairs only where the first wrong step is this one or later (0-based: 1 leaves out "
            "errors in the first step)."
        },
    )

    # ---- DPOConfig / TrainingArguments defaults for a tiny policy on a CPU
    output_dir: str | None = field(default="runs/dpo", metadata={"help": "Checkpoints, final model and metrics."})
    beta: float = field(default=0.1, metadata={"help": "DPO's beta: the strength of the pull toward the reference."})
    learning_rate: float = field(
        default=5e-5, metadata={"help": "Peak AdamW learning rate (40x below the SFT policy's: tuning, not learning)."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup: steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (none: stay near the SFT policy)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pairs per optimizer step."})
    max_length: int | None = field(
        default=512, metadata={"help": "Longest prompt + solution in tokens (characters: <= 190 + 94 at level 6)."}
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (slower)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every this many steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept during the run."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers (none)."})

    def __post_init__(self) -> None:
        check_tuning_args(self)
        if self.pairs_per_problem < 1 or self.num_samples < 0:
            raise ValueError("pairs_per_problem must be at least 1 and num_samples not negative")
        if self.chosen not in ("sample", "reference", "solver"):
            raise ValueError(f"chosen must be sample, reference or solver, not {self.chosen!r}")
        if self.chosen == "solver" and self.pair_unit == "solution":
            raise ValueError("chosen=solver writes right steps: it needs pair_unit step or token")
        if self.chosen == "solver" and type(get_task(self.task)).next_right_steps is TaskSpec.next_right_steps:
            raise ValueError(f"chosen=solver: task {self.task!r} has no step solver (game24 has)")
        if self.min_pair_step < 0 or (self.min_pair_step and self.pair_unit == "solution"):
            raise ValueError("min_pair_step is a step index (0 or more) for pair_unit step or token")
        if self.chosen == "reference" and (
            self.source != "policy" or self.pairs_from is not None or self.pair_unit != "solution"
        ):
            raise ValueError("chosen=reference pairs whole solutions of source=policy (no --pairs_from)")
        reference_right = self.pair_unit != "solution" or self.chosen == "reference"
        needed = 1 if reference_right else 2  # the right side can come from the reference solution
        if self.source == "policy" and self.pairs_from is None and self.num_samples + self.greedy_errors < needed:
            raise ValueError(
                f"source=policy with pair_unit={self.pair_unit} needs at least {needed} solutions per problem "
                "(num_samples, plus one with greedy_errors)"
            )
        if self.pair_unit != "solution" and self.pairs_from is not None:
            raise ValueError(f"pair_unit={self.pair_unit} checks steps against problems: it cannot read --pairs_from")
        if self.greedy_errors and (self.source != "policy" or self.pairs_from is not None):
            raise ValueError("greedy_errors decodes the policy: it needs source=policy without --pairs_from")
        super().__post_init__()

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> PolicyDPOConfig:
        """The ``preset``'s values, then ``overrides``: ``PolicyDPOConfig.from_preset("tiny", policy=...)``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})


# ---- pairs --------------------------------------------------------------------------------------------------------
def graded_rows(task: TaskSpec, problems: Sequence[Problem], solutions: Sequence[Sequence[str]]) -> list[dict]:
    """One row per distinct non-empty solution, in ``ponder label``'s columns: the verifier's verdict in ``outcome``.

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> problem = task.load("train", limit=1, level=1)[0]
    >>> [row["outcome"] for row in graded_rows(task, [problem], [[problem.solution, "\\\\boxed{-1}", ""]])]
    [True, False]
    """
    return [
        {
            "prompt": task.prompt(problem),
            "completion": text,
            "outcome": task.grade(problem, text),
            "problem_id": problem.id,
            "level": problem.meta.get("level", 0),
        }
        for problem, texts in zip(problems, solutions, strict=True)
        for text in dict.fromkeys(texts)
        if text.strip()
    ]


def preference_pairs(rows: Sequence[dict[str, Any]], pairs_per_problem: int = 1) -> list[dict[str, Any]]:
    """TRL conversational preference rows: a right solution chosen over a wrong one of the same problem.

    Up to ``pairs_per_problem`` pairs per problem, taken along the diagonals of the right x wrong grid so that
    they use distinct solutions before reusing one. Problems without both a right and a wrong solution give none.

    >>> rows = [{"problem_id": "a", "prompt": "1 + 1?", "level": 1, "completion": c, "outcome": ok}
    ...         for c, ok in [("2", True), ("3", False), ("4", False)]]
    >>> [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in preference_pairs(rows, 2)]
    [('2', '3'), ('2', '4')]
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row)
    pairs = []
    for group in groups.values():
        right = list(dict.fromkeys(r["completion"] for r in group if r["outcome"]))
        wrong = list(dict.fromkeys(r["completion"] for r in group if not r["outcome"]))
        grid = [(i, j) for i in range(len(right)) for j in range(len(wrong))]
        grid.sort(key=lambda ij: (ij[1] - ij[0]) % len(wrong))  # diagonals first: distinct solutions
        for i, j in grid[:pairs_per_problem]:
            pairs.append(
                {
                    "prompt": [{"role": "user", "content": group[0]["prompt"]}],
                    "chosen": [{"role": "assistant", "content": right[i]}],
                    "rejected": [{"role": "assistant", "content": wrong[j]}],
                    "problem_id": group[0]["problem_id"],
                    "level": group[0]["level"],
                }
            )
    return pairs


def reference_chosen(rows: Sequence[dict[str, Any]], problems: Sequence[Problem]) -> list[dict[str, Any]]:
    r"""``rows`` with every problem's right solutions replaced by its reference solution (first), so that
    :func:`preference_pairs` puts the reference over each wrong solution in turn (``--chosen reference``).

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> problem = task.load("train", limit=1, level=1)[0]
    >>> rows = reference_chosen(graded_rows(task, [problem], [["\\boxed{-1}", problem.solution]]), [problem])
    >>> [(row["completion"] == problem.solution, row["outcome"]) for row in rows]
    [(True, True), (False, False)]
    """
    wrong = [row for row in rows if not row["outcome"]]
    solutions = {problem.id: problem.solution for problem in problems}
    first: dict[str, dict[str, Any]] = {}  # each problem's first wrong row, for its columns
    for row in wrong:
        first.setdefault(row["problem_id"], row)
    if missing := [pid for pid in first if not solutions[pid]]:
        raise ValueError(f"chosen=reference: problem {missing[0]} has no reference solution")
    return [row | {"completion": solutions[pid], "outcome": True} for pid, row in first.items()] + wrong


def reference_solutions(problems: Sequence[Problem], seed: int) -> list[list[str]]:
    """Per problem: its reference solution and a copy with one planted error (arith only)."""
    rng = random.Random(f"dpo/{seed}")
    return [[p.solution, plant_error(p, rng)] for p in problems]


async def sample_policy(config: PolicyDPOConfig, task: TaskSpec, problems: Sequence[Problem]) -> tuple[list, dict]:
    """One vLLM session on the SFT policy: per problem its greedy solution (``greedy_errors``, first) and
    ``num_samples`` sampled ones, then its greedy test accuracy."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(config.policy, kv_cache_gib=config.eval_kv_cache_gib, seed=config.seed)
    try:
        prompts = [chat_prompt(engine.tokenizer, task, p) for p in problems]
        solutions: list[list[str]] = [[] for _ in problems]
        if config.greedy_errors:
            solutions = [[text] for text in await greedy_solutions(engine, prompts, task.max_tokens)]
        if config.num_samples:
            spec = SamplingSpec(temperature=config.temperature, max_tokens=task.max_tokens)  # engine-seeded
            sampled = await sample_solutions(engine, prompts, config.num_samples, spec, round_size=256)
            solutions = [mine + more for mine, more in zip(solutions, sampled, strict=True)]
        before = (
            await evaluate_levels(engine, engine.tokenizer, **eval_kwargs(config)) if config.eval_after_training else {}
        )
    finally:
        await engine.shutdown()
    return solutions, before


def collect_solutions(config: PolicyDPOConfig) -> tuple[list[Problem], list[list[str]], dict[str, Any]]:
    """The train problems, their solutions from the configured source (not ``pairs_from``), the SFT policy's
    accuracy ({} when not evaluated)."""
    task = get_task(config.task)
    require_policy(config.policy)  # before vLLM starts or any problem is graded
    problems = load_train_problems(config)
    if config.source == "policy":
        solutions, before = asyncio.run(sample_policy(config, task, problems))
        return problems, solutions, before
    before = evaluate(config.policy, config) if config.eval_after_training else {}
    return problems, reference_solutions(problems, config.seed), before


def collect_rows(config: PolicyDPOConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Graded solutions from the configured source, and the SFT policy's accuracy ({} when not evaluated)."""
    if config.pairs_from is not None:
        require_policy(config.policy)
        return list(load_rows(config.pairs_from)), evaluate(config.policy, config) if config.eval_after_training else {}
    problems, solutions, before = collect_solutions(config)
    return graded_rows(get_task(config.task), problems, solutions), before


def step_dataset_rows(
    task: TaskSpec,
    tokenizer: Any,
    problems: Sequence[Problem],
    rows: Sequence[dict[str, Any]],
    per_problem: int,
    first_token: bool = False,
    solver: bool = False,
    min_step: int = 0,
) -> list[dict[str, Any]]:
    """Step-DPO rows (:mod:`training.step_pairs`), tokenized, with ``problem_id`` and ``level``, from the graded
    solutions of :func:`graded_rows`: wrong ones in their source order (a greedy one first), right steps from the
    right ones, then from the reference solution, then (``solver``) from the task's solver."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
    out = []
    for problem in problems:
        graded = by_problem.get(problem.id, [])
        right = [r["completion"] for r in graded if r["outcome"]] + ([problem.solution] if problem.solution else [])
        wrong = [r["completion"] for r in graded if not r["outcome"]]
        prompt = chat_prompt(tokenizer, task, problem)
        for pair in step_pairs(task, problem, wrong, right, per_problem, solver, min_step):
            row = tokenize_pair(tokenizer, prompt, pair, task.step_delimiter, first_token)
            out.append(row | {"problem_id": problem.id, "level": problem.meta.get("level", 0)})
    return out


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` taking rows that already carry ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` as they
    are (for text rows TRL appends EOS to every completion, which a step pair must not have)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


# ---- the run ------------------------------------------------------------------------------------------------------
def train(config: PolicyDPOConfig, command: str | None = None) -> dict[str, Any]:
    """Collect pairs, train with TRL's ``DPOTrainer`` against the frozen SFT policy, save, evaluate, report."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset

    started = time.perf_counter()
    task = get_task(config.task)
    model, tokenizer = load_policy(config.policy)
    columns: tuple[str, ...] = ("prompt", "chosen", "rejected")
    if config.pair_unit != "solution" or config.chosen == "reference":  # pairs that need the problems themselves
        problems, solutions, before = collect_solutions(config)
        rows = graded_rows(task, problems, solutions)  # each solution graded once, for the pairs and the report
        if config.pair_unit != "solution":
            pairs = step_dataset_rows(
                task,
                tokenizer,
                problems,
                rows,
                config.pairs_per_problem,
                first_token=config.pair_unit == "token",
                solver=config.chosen == "solver",
                min_step=config.min_pair_step,
            )
            columns = ("prompt_ids", "chosen_ids", "rejected_ids")
        else:
            pairs = preference_pairs(reference_chosen(rows, problems), config.pairs_per_problem)
    else:
        rows, before = collect_rows(config)
        pairs = preference_pairs(rows, config.pairs_per_problem)
    if not pairs:
        raise ValueError(f"no problem among {len(rows)} graded solutions has both a right and a wrong one: no pairs")
    reference, _ = load_policy(config.policy)  # frozen: DPOTrainer never steps it
    dataset = Dataset.from_list([{k: p[k] for k in columns} for p in pairs])
    trainer = PretokenizedDPOTrainer(
        model=model, ref_model=reference, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    levels = sorted({p["level"] for p in pairs})
    metrics: dict[str, Any] = {
        **_method(config),
        "data": f"{len(pairs):,} {_unit(config)} pairs of {_source(config)} solutions to "
        f"{len({p['problem_id'] for p in pairs}):,} train-split problems, graded by the task's verifier.",
        "pair_unit": config.pair_unit,
        "greedy_errors": config.greedy_errors,
        "started": started,
        "task": config.task,
        "preset": config.preset,
        "seed": config.seed,
        "graded_solutions": len(rows),
        "solutions_right": sum(r["outcome"] for r in rows) / len(rows),
        "problems": len({r["problem_id"] for r in rows}),
        "pairs": len(pairs),
        "pairs_per_level": {str(lv): sum(p["level"] == lv for p in pairs) for lv in levels},
        "train_time_s": round(result.metrics["train_runtime"], 1),
        "before": before,
    }
    return finish(trainer, tokenizer, config, metrics, command)


def _method(config: PolicyDPOConfig) -> dict[str, str]:
    if config.pair_unit != "solution":
        paper = "Step-DPO (Lai et al. 2024) on Direct Preference Optimization (Rafailov et al. 2023)"
        return {"method": "Step-DPO", "trainer": "DPOTrainer", "paper": paper}
    return {"method": "DPO", "trainer": "DPOTrainer", "paper": "Direct Preference Optimization (Rafailov et al. 2023)"}


def _unit(config: PolicyDPOConfig) -> str:
    return {"step": "(right step, first wrong step)", "token": "(right token, first wrong token)"}.get(
        config.pair_unit, "(right, wrong)"
    )


def _source(config: PolicyDPOConfig) -> str:
    if config.pairs_from is not None:
        return f"`{config.pairs_from}`'s"
    if config.chosen == "reference":
        return "reference (chosen) and " + _source_policy(config)
    if config.source == "reference":
        return "reference and planted-error"
    return _source_policy(config)


def _source_policy(config: PolicyDPOConfig) -> str:
    kinds = ["greedy"] if config.greedy_errors else []
    kinds += [f"sampled (k={config.num_samples}, T={config.temperature})"] if config.num_samples else []
    return f"the policy's {' and '.join(kinds)}"
