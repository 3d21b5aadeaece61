r"""What DPO and GRPO share: tuning an SFT policy checkpoint, then measuring what the tuning gained.

Both trainers (:mod:`training.dpo`, :mod:`training.grpo`) start from a policy folder written by ``ponder train sft``
(a ``LlamaForCausalLM`` with its character tokenizer and chat template), train it on the task's train split with a
TRL trainer, and end the same way: the final model saved as a vLLM-servable folder (:func:`training.sft.save_final`),
the loss curve (``loss.png``), greedy accuracy per level on the held-out test split *before* (the SFT policy) and
*after*, measured on the vLLM engine with the same problems and seed, the gain per level in ``metrics.json`` and a
model card (``README.md``).

:class:`PolicyTuningArgs` holds the fields both configs share; each trainer's config subclasses it and its TRL
config (``DPOConfig``, ``GRPOConfig``), so ``HfArgumentParser`` turns every field into a ``--flag``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.evaluate_policy import evaluate_checkpoint
from training.label import DEFAULT_POLICY
from training.plots import plot_loss
from training.runs import settle_precision
from training.tasks import Problem, UnknownTaskError, get_task


@dataclass
class PolicyTuningArgs:
    """Fields of ``ponder train dpo`` and ``ponder train grpo`` beyond TRL's: the policy, the task, the evaluation."""

    preset: str = field(default="default", metadata={"help": "Named bundle of defaults: default, tiny."})
    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "SFT policy checkpoint to start from."})
    task: str = field(default="arith", metadata={"help": "Task (training.tasks registry name)."})
    levels: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6], metadata={"help": "Task levels of the training problems."}
    )
    num_train_problems: int = field(
        default=1500, metadata={"help": "Train-split problems, shared equally between the levels."}
    )
    skip_train_problems: int = field(
        default=0,
        metadata={
            "help": "Leave out the first K train problems of each level that the same seed draws (a previous "
            "round's; held-out ones read by evaluate_policy --skip)."
        },
    )
    save_dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype of the saved final model.", "choices": ["bfloat16", "float32"]},
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-* folders after a run that finished."}
    )
    eval_after_training: bool = field(
        default=True,
        metadata={"help": "Measure greedy test accuracy per level with vLLM, before (the SFT policy) and after."},
    )
    eval_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6], metadata={"help": "Levels to evaluate on the test split."}
    )
    eval_problems_per_level: int = field(default=200, metadata={"help": "Test problems per evaluated level."})
    eval_kv_cache_gib: float = field(default=1.0, metadata={"help": "vLLM KV cache for sampling and evaluation."})


def check_tuning_args(config: Any) -> None:
    """The shared checks, run by each config's ``__post_init__`` before TRL's: fail before any work."""
    if config.num_train_problems < 1:
        raise ValueError("num_train_problems must be at least 1")
    if config.skip_train_problems < 0:
        raise ValueError("skip_train_problems must not be negative")
    try:
        task = get_task(config.task)
        if task.levels:
            task._levels(config.levels)
            task._levels(config.eval_levels)
        else:  # a task without levels (game24): all of its problems, one pseudo-level 0 in the evaluation
            config.levels, config.eval_levels = [0], [0]
    except UnknownTaskError as exc:
        raise ValueError(str(exc)) from None
    settle_precision(config)


def require_policy(path: str | Path) -> None:
    """FileNotFoundError, before any engine or model starts, when ``path`` holds no checkpoint."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"no policy checkpoint at {path} (train one with `ponder train sft`)")


def load_policy(path: str | Path) -> tuple[Any, Any]:
    """The policy at ``path`` in float32 (bf16 autocast trains it) and its tokenizer; FileNotFoundError if none."""

    require_policy(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path))


def train_problems(config: Any, count: int | None = None) -> list[Problem]:
    """``count`` (default ``num_train_problems``) train-split problems of ``levels``, seeded by ``config.seed``,
    shared equally between the levels, after the first ``skip_train_problems`` of each level."""
    task, count = get_task(config.task), count or config.num_train_problems
    skip = config.skip_train_problems
    if not skip:
        return task.load("train", limit=count, seed=config.seed, level=task_levels(config))
    levels: list[int | None] = list(task_levels(config) or [None])
    counts = [count // len(levels) + (i < count % len(levels)) for i in range(len(levels))]
    return [
        problem
        for level, share in zip(levels, counts, strict=True)
        for problem in task.load("train", limit=skip + share, seed=config.seed, level=level)[skip:]
    ]


def task_levels(config: Any) -> list[int] | None:
    """The config's levels as :meth:`TaskSpec.load` takes them: None for a task without levels."""
    return config.levels if get_task(config.task).levels else None


def eval_kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`training.evaluate_policy.evaluate_levels`: greedy, the config's test problems."""
    return {
        "task_name": config.task,
        "levels": config.eval_levels,
        "limit": config.eval_problems_per_level,
        "seed": config.seed,
        "num_samples": 0,
    }


def evaluate(path: str | Path, config: Any) -> dict[str, Any]:
    """Greedy test accuracy per level of the checkpoint at ``path`` on vLLM (callers need the ``__main__`` guard)."""

    return evaluate_checkpoint(path, kv_cache_gib=config.eval_kv_cache_gib, **eval_kwargs(config))


def accuracy_gain(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Greedy accuracy after minus before, per level and on average over the levels both measured.

    >>> accuracy_gain({"levels": {"1": {"greedy": 0.5}, "2": {"greedy": 0.25}}},
    ...               {"levels": {"1": {"greedy": 0.75}, "2": {"greedy": 0.25}}})
    {'levels': {'1': 0.25, '2': 0.0}, 'mean': 0.125}
    """
    levels = {lv: after["levels"][lv]["greedy"] - row["greedy"] for lv, row in before["levels"].items()}
    levels = {lv: gain for lv, gain in levels.items() if lv in after["levels"]}
    return {"levels": levels, "mean": sum(levels.values()) / max(len(levels), 1)}


def finish(trainer: Any, tokenizer: Any, config: Any, metrics: dict[str, Any], command: str | None) -> dict[str, Any]:
    """Save the final model, plot the loss, evaluate it (gain over ``metrics["before"]``), write metrics and card."""
    # deferred import: torch and TRL only for the command that trains
    from training.sft import save_final

    output_dir = Path(config.output_dir)
    final = save_final(trainer.model, tokenizer, output_dir, config.save_dtype)
    method = metrics["method"]
    plot_loss(trainer.state.log_history, output_dir / "loss.png", title=f"{method} on {config.task}")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    metrics |= {
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "model_bytes": sum(f.stat().st_size for f in final.glob("*.safetensors")),
        "optimizer_steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "last_log": _last_log(trainer.state.log_history),
    }
    if not config.keep_checkpoints:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    if config.eval_after_training:
        metrics["after"] = evaluate(final, config)
        metrics["gain"] = accuracy_gain(metrics["before"], metrics["after"])
    metrics["total_time_s"] = round(time.perf_counter() - metrics.pop("started"), 1)
    metrics["command"] = command
    names = [f.name for f in fields(PolicyTuningArgs)] + list(type(config).__annotations__)  # ours, as sft does
    metrics["config"] = {name: _plain(getattr(config, name)) for name in dict.fromkeys(names)}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "README.md").write_text(model_card(metrics))  # replaces TRL's generic card
    return metrics


def _last_log(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last training log row (loss, rewards, margins, ...), without the run summary row."""
    rows = [row for row in log_history if "loss" in row]
    return dict(rows[-1]) if rows else {}


def _plain(value: Any) -> Any:
    """A JSON-ready config value (TrainingArguments keeps some as enums)."""
    if isinstance(value, Enum):
        return value.value
    return value if isinstance(value, str | int | float | bool | list | dict | type(None)) else str(value)


def model_card(metrics: dict[str, Any]) -> str:
    """The checkpoint's README: what it is, how it was made, and greedy accuracy before and after, per level."""
    config = metrics["config"]
    lines = [
        f"# Ponder policy: {metrics['method']} on `{metrics['task']}` (preset `{metrics['preset']}`)",
        "",
        f"The SFT policy `{config['policy']}` tuned by {metrics['paper']} with TRL's `{metrics['trainer']}` "
        f"({metrics['num_parameters']:,} parameters, saved in {config['save_dtype']}, "
        f"{metrics['model_bytes'] / 1e6:.1f} MB). {metrics['data']}",
        "",
        "## How it was made",
        "",
        "```",
        metrics.get("command") or "(run from Python, not the command line)",
        "```",
        "",
        f"- seed {metrics['seed']}; {metrics['optimizer_steps']:,} optimizer steps, "
        f"learning rate {config['learning_rate']:g}, beta {config['beta']:g}",
        f"- training {metrics['train_time_s'] / 60:.1f} min; the whole command {metrics['total_time_s'] / 60:.1f} min",
        f"- final training loss {metrics['final_loss']:.4f}" if metrics.get("final_loss") is not None else "",
        _last_log_line(metrics.get("last_log", {})),
        "",
    ]
    if "after" in metrics:
        lines += gain_table(metrics["before"], metrics["after"])
    lines += ["Files: `metrics.json` (every number above and the full config), `loss.png` (the loss curve).", ""]
    return "\n".join(lines)


def _last_log_line(log: dict[str, float]) -> str:
    """The last logged batch's DPO reward accuracy and margin, or GRPO's mean reward (blank when none)."""
    shown = [f"{key} {log[key]:.3g}" for key in ("rewards/accuracies", "rewards/margins", "reward") if key in log]
    return f"- last logged batch: {', '.join(shown)}" if shown else ""


def gain_table(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Markdown: greedy accuracy per level before (SFT) and after, and the gain in points."""
    gain = accuracy_gain(before, after)
    out = [
        f"## Greedy accuracy on held-out `{after['split']}` problems (vLLM engine, seed {after['seed']})",
        "",
        "| level | problems | SFT policy | after | gain |",
        "|---:|---:|---:|---:|---:|",
    ]
    for level, delta in gain["levels"].items():
        row = after["levels"][level]
        name = "all" if level == "0" else level  # 0: a task without levels
        out.append(
            f"| {name} | {row['num_problems']} | {before['levels'][level]['greedy']:.1%} | {row['greedy']:.1%} "
            f"| {100 * delta:+.1f} |"
        )
    return [*out, *([f"| mean | | | | {100 * gain['mean']:+.1f} |"] if len(gain["levels"]) > 1 else []), ""]
