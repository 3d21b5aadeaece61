r"""``ponder train grpo``: Group Relative Policy Optimization of an SFT policy, rewarded by the task's verifier.

GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models") is
PPO without a value model: for every prompt the policy samples a group of ``num_generations`` completions, each is
rewarded, and a completion's advantage is its reward minus the group's mean, divided by the group's standard
deviation. A group whose completions all score the same teaches nothing, so the problems worth training on are
those the policy sometimes solves. TRL's ``GRPOTrainer`` runs it; its defaults follow later work: no KL penalty
(``beta=0``: no reference model, a third less compute) and DAPO's token-level loss normalisation
(``loss_type=dapo``; ``--loss_type grpo`` gives the paper's per-sequence mean).

The reward is DeepSeekMath's rule-based outcome reward: 1 when the task's verifier (:meth:`TaskSpec.grade`) accepts
the completion's final answer, else 0, plus optionally ``format_reward_weight`` times a format reward (1 when the
completion ends in a ``\boxed{}`` answer, DeepSeek-R1's format reward in this task's layout). Prompts are the user
message the server sends, ``[{"role": "user", "content": task.prompt(problem)}]``, for train-split problems;
``--hard_fraction F`` draws that share of them from problems the SFT policy answers wrong greedily (decoded on vLLM
before training), where the policy's confident mistakes are.
Generation runs through transformers on the CPU (``use_vllm`` stays off). The run measures greedy test accuracy per
level before (the SFT policy) and after on the vLLM engine and writes the same outputs as ``ponder train dpo``
(:mod:`training.tuning`).

    ponder train grpo --policy models/default-policy --output_dir runs/grpo
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from training.evaluate_policy import chat_prompt
from training.label import greedy_solutions
from training.runs import BF16_HELP
from training.tasks import Problem, TaskSpec, get_task
from training.tuning import (
    PolicyTuningArgs,
    check_tuning_args,
    evaluate,
    finish,
    load_policy,
    require_policy,
)
from training.tuning import train_problems as load_train_problems

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the dataclass defaults: sized (from step times under load) for ~10-15 min on 2 idle CPU cores
    "tiny": {  # seconds: 2 steps of 2 prompts x 4 completions, no vLLM; learns nothing useful
        "num_train_problems": 4,
        "levels": [1],
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 24,
        "logging_steps": 1,
        "save_steps": 1000,
        "eval_after_training": False,
        "eval_problems_per_level": 10,
    },
}

BOXED_AT_END = re.compile(r"\\boxed\{[^{}]+\}\s*$")


@dataclass
class PolicyGRPOConfig(PolicyTuningArgs, GRPOConfig):
    """``ponder train grpo``: TRL's ``GRPOConfig`` plus the policy, the reward and the evaluation."""

    num_train_problems: int = field(
        default=320,  # 80 steps: generation through transformers costs most of a CPU step
        metadata={"help": "Train-split prompts, shared equally between the levels (one epoch)."},
    )
    hard_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of the prompts drawn from train problems the SFT policy answers wrong greedily (decoded "
            "on vLLM before training, from a pool of hard_pool_factor x num_train_problems); 0: as they come."
        },
    )
    hard_pool_factor: int = field(
        default=5, metadata={"help": "Pool of train problems decoded greedily to find hard ones, x num_train_problems."}
    )
    format_reward_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the format reward (the completion ends in a \\boxed{} answer); 0: verifier only "
            "(the SFT policy already writes the format)."
        },
    )

    # ---- GRPOConfig / TrainingArguments defaults for a tiny policy on a CPU
    output_dir: str | None = field(default="runs/grpo", metadata={"help": "Checkpoints, final model and metrics."})
    num_generations: int | None = field(default=8, metadata={"help": "Completions per prompt (the group, G)."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Completions per optimizer step: 4 prompts x 8 completions."}
    )
    max_completion_length: int | None = field(
        default=224,
        metadata={
            "help": "Longest completion in tokens (characters; arith's reference solutions: <= 197 at level 6). "
            "A truncated completion scores 0, so this must fit the longest right answer."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the group's completions."})
    beta: float = field(default=0.0, metadata={"help": "KL penalty to the SFT policy (DeepSeekMath: 0.04); 0: none."})
    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak AdamW learning rate (100x below the SFT policy's: tuning, not learning)."}
    )
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup: steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (none: stay near the SFT policy)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the prompts."})
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (slower)."})
    logging_steps: float = field(default=5, metadata={"help": "Log the loss and rewards every this many steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept during the run."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers (none)."})

    def __post_init__(self) -> None:
        check_tuning_args(self)
        if self.format_reward_weight < 0:
            raise ValueError("format_reward_weight must not be negative")
        if not 0.0 <= self.hard_fraction <= 1.0 or self.hard_pool_factor < 1:
            raise ValueError("hard_fraction must be in [0, 1] and hard_pool_factor at least 1")
        if self.use_vllm:
            raise ValueError("use_vllm: generation runs through transformers here (vLLM on the CPU is not supported)")
        self.reward_weights = [1.0, self.format_reward_weight] if self.format_reward_weight else None
        super().__post_init__()

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> PolicyGRPOConfig:
        """The ``preset``'s values, then ``overrides``: ``PolicyGRPOConfig.from_preset("tiny", policy=...)``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})


# ---- data and rewards ---------------------------------------------------------------------------------------------
def prompt_rows(task: TaskSpec, problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """TRL conversational prompt-only rows; ``problem_id`` reaches the reward functions as a keyword argument."""
    return [{"prompt": [{"role": "user", "content": task.prompt(p)}], "problem_id": p.id} for p in problems]


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """The text of a completion: TRL passes a conversational one as ``[{"role": "assistant", "content": ...}]``."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class VerifierReward:
    """DeepSeekMath's outcome reward: 1.0 when the task's verifier accepts the final answer, else 0.0.

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> problem = task.load("train", limit=1, level=1)[0]
    >>> reward = VerifierReward(task, [problem])
    >>> reward([[{"role": "assistant", "content": problem.solution}], "\\\\boxed{-1}"], [problem.id] * 2)
    [1.0, 0.0]
    """

    def __init__(self, task: TaskSpec, problems: Sequence[Problem]) -> None:
        self.__name__ = "correct"  # TRL logs it as rewards/correct/mean
        self.task = task
        self.problems = {p.id: p for p in problems}

    def __call__(self, completions: Sequence[Any], problem_id: Sequence[str], **_: Any) -> list[float]:
        return [
            float(self.task.grade(self.problems[pid], completion_text(c)))
            for c, pid in zip(completions, problem_id, strict=True)
        ]


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    r"""1.0 when the completion ends in a ``\boxed{}`` answer, else 0.0.

    >>> format_reward(["1 + 2 = 3\n\n\\boxed{3}", "1 + 2 = 3", "\\boxed{3} and more"])
    [1.0, 0.0, 0.0]
    """
    return [float(BOXED_AT_END.search(completion_text(c)) is not None) for c in completions]


def mix_hard(
    problems: Sequence[Problem], wrong: Sequence[bool], count: int, hard_fraction: float, seed: int
) -> list[Problem]:
    """``count`` problems, ``hard_fraction`` of them from those marked ``wrong``, the rest from the others; when
    either kind runs short the other fills in. Shuffled with ``seed``.

    >>> pool = [Problem(id=str(i), question="q", answer="1") for i in range(10)]
    >>> chosen = mix_hard(pool, [i % 5 == 0 for i in range(10)], 4, 0.5, seed=0)
    >>> sorted(p.id for p in chosen if p.id in ("0", "5")), len(chosen)
    (['0', '5'], 4)
    >>> len(mix_hard(pool, [True] * 10, 4, 0.5, seed=0)), len(mix_hard(pool, [False] * 10, 4, 1.0, seed=0))
    (4, 4)
    """
    hard = [p for p, w in zip(problems, wrong, strict=True) if w]
    easy = [p for p, w in zip(problems, wrong, strict=True) if not w]
    take = min(len(hard), max(round(count * hard_fraction), count - len(easy)))
    chosen = hard[:take] + easy[: count - take]
    random.Random(seed).shuffle(chosen)
    return chosen


async def greedy_wrong(config: PolicyGRPOConfig, task: TaskSpec, problems: Sequence[Problem]) -> list[bool]:
    """Whether the SFT policy's greedy answer to each problem is wrong (one vLLM session)."""
    # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(config.policy, kv_cache_gib=config.eval_kv_cache_gib, seed=config.seed)
    try:
        prompts = [chat_prompt(engine.tokenizer, task, p) for p in problems]
        solutions = await greedy_solutions(engine, prompts, task.max_tokens)
    finally:
        await engine.shutdown()
    return [not task.grade(p, text) for p, text in zip(problems, solutions, strict=True)]


def choose_problems(config: PolicyGRPOConfig, task: TaskSpec) -> list[Problem]:
    """The train prompts: as they come, or with ``hard_fraction`` of them from the policy's greedy mistakes."""
    if not config.hard_fraction:
        return load_train_problems(config)
    count = config.num_train_problems
    pool = load_train_problems(config, count * config.hard_pool_factor)
    return mix_hard(pool, asyncio.run(greedy_wrong(config, task, pool)), count, config.hard_fraction, config.seed)


def reward_functions(task: TaskSpec, problems: Sequence[Problem], format_weight: float) -> list[Any]:
    """The verifier's reward, and the format reward when it has a weight (the config sets ``reward_weights``)."""
    return [VerifierReward(task, problems), *([format_reward] if format_weight else [])]


# ---- the run ------------------------------------------------------------------------------------------------------
def train(config: PolicyGRPOConfig, command: str | None = None) -> dict[str, Any]:
    """Measure the SFT policy, train with TRL's ``GRPOTrainer`` on the verifier's reward, save, evaluate, report."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset

    started = time.perf_counter()
    task = get_task(config.task)
    require_policy(config.policy)
    problems = choose_problems(config, task)
    model, tokenizer = load_policy(config.policy)
    before = evaluate(config.policy, config) if config.eval_after_training else {}
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(task, problems, config.format_reward_weight),
        args=config,
        train_dataset=Dataset.from_list(prompt_rows(task, problems)),
        processing_class=tokenizer,
    )
    result = trainer.train()
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    metrics: dict[str, Any] = {
        "method": "GRPO",
        "trainer": "GRPOTrainer",
        "paper": "Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath)",
        "data": f"{len(problems):,} train-split prompts, {config.num_generations} completions each, rewarded by the "
        "task's verifier"
        + (f" (+ {config.format_reward_weight:g} x format)." if config.format_reward_weight else ".")
        + (
            f" {config.hard_fraction:.0%} of the prompts drawn from the SFT policy's greedy mistakes."
            if config.hard_fraction
            else ""
        ),
        "hard_fraction": config.hard_fraction,
        "started": started,
        "task": config.task,
        "preset": config.preset,
        "seed": config.seed,
        "num_train_problems": len(problems),
        "train_time_s": round(result.metrics["train_runtime"], 1),
        "first_logged_reward": rewards[0] if rewards else None,
        "last_logged_reward": rewards[-1] if rewards else None,
        "before": before,
    }
    return finish(trainer, tokenizer, config, metrics, command)
