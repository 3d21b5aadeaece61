r"""Supervised fine-tuning of a policy from scratch: a fresh Llama, a character tokenizer, a task's reference solutions.

The policy is a ``LlamaForCausalLM`` built from a config (no download), with the character-level tokenizer and chat
template of :mod:`server.tiny_models`, both saved with the model so vLLM and ``ponder serve`` load the folder as
they would a hub checkpoint. Each training row is one problem in TRL's conversational prompt-completion format::

    {"prompt": [{"role": "user", "content": task.prompt(problem)}],
     "completion": [{"role": "assistant", "content": problem.solution}]}

so TRL's ``SFTTrainer`` renders both through the chat template and puts the loss on the completion only (the
prompt's labels are -100). The run saves checkpoints (``resume_from_checkpoint`` picks one up), the final model in
``save_dtype``, a loss plot (``loss.png``) and ``metrics.json``: train time, tokens, final loss and, after training,
greedy accuracy per level on the task's held-out test split, measured on the vLLM engine
(:mod:`training.evaluate_policy`), plus pass@k at the levels nearest 50%.

Curriculum (``arith``): levels 1-6, every value under 100, 1-6 operations (see :mod:`training.tasks.arith`). Every
level uses the same skill, one equation per step, so long chains teach the short ones too; they are weighted up
(``level_weights``) because they give more solution steps per prompt, and the prompt (about 3/4 of each sequence)
costs compute without carrying loss. Measured on the 2-core CPU, see ``models/default-policy/README.md``.

Format (``--format``): ``plain`` (the default) trains on the reference solution as it is; ``reasoning`` puts its
steps inside ``<think>``...``</think>`` before the boxed answer, in a seeded mix of full, premature and ``Wait``
traces (:mod:`training.sft_data`), adds the two tags to the tokenizer as single tokens (the embedding rows of new
ids start at the mean of the others) and names vLLM's ``deepseek_r1`` parser in ``config.json``
(``ponder_reasoning_parser``). ``recipes/reasoning-policy.yaml`` builds ``models/reasoning-policy`` this way.

Presets (``--preset``) are bundles of field values, nanoGPT's tiny configs beside the real one: ``default`` is the
shipped policy (the dataclass defaults), ``small`` a 2-minute run, ``tiny`` a seconds-long smoke test. Explicit
flags and YAML keys override the preset.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from server.tiny_models import build_char_tokenizer
from training.evaluate_policy import evaluate_checkpoint, markdown_table
from training.plots import plot_loss
from training.runs import BF16_HELP, plain_value, resume_path, settle_precision
from training.sft_data import (
    COMPLETION_FORMATS,
    REASONING_PARSER,
    THINK_TOKENS,
    add_think_tokens,
    datasets_for,
    displaced_characters,
    plan_reasoning,
    training_problems,
)
from training.tasks import Problem, UnknownTaskError, get_task

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the dataclass defaults: the shipped models/default-policy
    "small": {  # ~2 minutes on 2 CPU cores: a quick end-to-end run that learns the format and some arithmetic
        "num_train_problems": 4000,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 384,
        "eval_problems_per_level": 50,
        "eval_num_samples": 4,
        "warmup_steps": 20,
    },
    "tiny": {  # seconds: tests and smoke runs; learns nothing useful
        "num_train_problems": 64,
        "num_val_problems": 16,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "per_device_train_batch_size": 8,
        "warmup_steps": 0,
        "logging_steps": 2,
        "save_steps": 4,
        "eval_steps": 4,
        "eval_after_training": False,
        "eval_problems_per_level": 10,
        "eval_num_samples": 0,
    },
}


@dataclass
class PolicySFTConfig(SFTConfig):
    """``ponder train sft``: TRL's ``SFTConfig`` plus the task, the curriculum, the model shape and the evaluation.

    TrainingArguments defaults that differ here are the tuned values of the shipped policy (see its model card).
    """

    preset: str = field(
        default="default",
        metadata={
            "help": "Named bundle of defaults: default (the shipped policy), small, tiny.",
            "choices": list(PRESETS),
        },
    )
    # ---- data: the task and the curriculum
    task: str = field(default="arith", metadata={"help": "Task to learn (training.tasks registry name)."})
    levels: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6],
        metadata={"help": "Task levels to train on (arith 1-6: every value under 100, 1-6 operations)."},
    )
    level_weights: list[float] | None = field(
        default_factory=lambda: [1.0, 1.0, 1.5, 1.5, 2.0, 2.0],  # long chains: more steps per (unlearned) prompt
        metadata={"help": "Relative share of training problems per level (None: equal shares)."},
    )
    bare_question_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of training rows that ask the bare question, without the task's format instruction "
            "(shorter rows); validation and test rows always use the full prompt."
        },
    )
    value_examples_per_problem: int = field(
        default=0,
        metadata={
            "help": "Rows per training problem that teach Tree-of-Thoughts' value prompt: a partial solution, the "
            "value prompt, and the task's verdict (sure / impossible; tasks with value examples, e.g. game24)."
        },
    )
    value_data: str | None = field(
        default=None,
        metadata={
            "help": "Stepwise labels (`ponder label` output: a folder or .jsonl, several joined by commas) turned "
            "into value-prompt rows: every step prefix of every solution, verdict sure while all its labels are "
            "true, else impossible. Labelled samples of the policy itself teach it to judge its own mistakes."
        },
    )
    format: str = field(
        default="plain",
        metadata={
            "help": "Completion format: plain (the reference solution) or reasoning (its steps inside <think>..."
            "</think>, then the boxed answer; a mix of full, premature and Wait traces, see --premature_share and "
            "--wait_share; vLLM's deepseek_r1 parser, named in config.json).",
            "choices": list(COMPLETION_FORMATS),
        },
    )
    premature_share: float = field(
        default=0.1,
        metadata={
            "help": "--format reasoning: share of rows that stop thinking after k of n steps (k < n, uniform) and "
            "box the value step k reached (a premature, usually wrong answer). 0.1: 0.25 with --wait_share 0.2 "
            "blurred when to stop in an earlier run (models/reasoning-policy/README.md)."
        },
    )
    wait_share: float = field(
        default=0.1,
        metadata={
            "help": "--format reasoning: share of rows that stop at the same place, write Wait on its own line in "
            "place of </think>, then finish every step and box the right answer (what budget forcing asks)."
        },
    )
    num_train_problems: int = field(
        default=40_000, metadata={"help": "Training problems in all (the train split; one pass is one epoch)."}
    )
    reseed_every: int | None = field(
        default=None,
        metadata={
            "help": "Load the training problems in chunks of this many, each with the next seed: for a task with "
            "a small train split (game24's 1,262 file puzzles), every chunk draws it again with other reference "
            "solutions. None: one draw with --seed."
        },
    )
    num_val_problems: int = field(
        default=300, metadata={"help": "Validation problems (val split) for eval_loss during training; 0: none."}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from this policy folder (a finished `ponder train sft` run) instead of random weights: "
            "more training on fresh problems (pick another --seed); the model-shape flags are then ignored."
        },
    )
    # ---- model shape: a fresh LlamaForCausalLM
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(
        default=8, metadata={"help": "Attention heads; hidden_size / heads must be >= 32 (vLLM's CPU attention)."}
    )
    intermediate_size: int = field(default=512, metadata={"help": "MLP width (SwiGLU)."})
    save_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "dtype of the saved final model (half the size of float32).",
            "choices": ["bfloat16", "float32"],
        },
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-* folders after a run that finished."}
    )
    # ---- evaluation after training, on the vLLM engine
    eval_after_training: bool = field(
        default=True, metadata={"help": "Measure greedy (and sampled) test accuracy per level with vLLM at the end."}
    )
    eval_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6], metadata={"help": "Levels to evaluate on the test split."}
    )
    eval_problems_per_level: int = field(default=200, metadata={"help": "Test problems per evaluated level."})
    eval_num_samples: int = field(
        default=16, metadata={"help": "Samples per problem for pass@k at the sampled levels; 0: greedy only."}
    )
    eval_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature for pass@k."})
    eval_sample_levels: list[int] | None = field(
        default=None, metadata={"help": "Levels to sample (None: the two whose greedy accuracy is nearest 50%)."}
    )
    eval_kv_cache_gib: float = field(default=1.0, metadata={"help": "vLLM KV cache for the evaluation (GiB)."})

    # ---- TrainingArguments / SFTConfig defaults tuned for a tiny model from scratch on a CPU
    output_dir: str | None = field(default="runs/sft", metadata={"help": "Checkpoints, final model and metrics."})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak AdamW learning rate (tiny model, from scratch; nanoGPT's char model)."}
    )
    adam_beta2: float = field(
        default=0.99,
        metadata={
            "help": "AdamW beta2 (0.99 as nanoGPT's small models: 0.999 with 2e-3 never learned "
            "to read the question here)."
        },
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_steps: float = field(default=100, metadata={"help": "Warmup: steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training problems."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Problems per optimizer step."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Problems per eval_loss batch."})
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "Batches of similar lengths: little padding (levels differ)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (slower)."})
    logging_steps: float = field(default=20, metadata={"help": "Log the loss every this many steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to compute eval_loss: no, steps, epoch."})
    eval_steps: float | None = field(default=200, metadata={"help": "eval_loss every this many steps."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept during the run."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers (none)."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenizing the data."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.hidden_size // self.num_attention_heads < 32:
            raise ValueError(
                f"hidden_size/num_attention_heads = {self.hidden_size}/{self.num_attention_heads}: "
                "vLLM's CPU attention needs a whole head_dim of at least 32"
            )
        if self.num_train_problems < 1:
            raise ValueError("num_train_problems must be at least 1")
        settle_precision(self)
        if self.include_num_input_tokens_seen in ("no", False):  # metrics.json reports the tokens trained on
            self.include_num_input_tokens_seen = "non_padding"
        try:  # an unknown task or level fails here, before any work
            task = get_task(self.task)
            if task.levels:
                task._levels(self.levels)
            else:  # a task without levels: one pseudo-level 0, all of its problems
                self.levels, self.eval_levels, self.level_weights = [0], [0], None
        except UnknownTaskError as exc:
            raise ValueError(str(exc)) from None
        if "val" not in task.splits:
            self.num_val_problems = 0
        if self.num_val_problems == 0:
            self.eval_strategy = "no"
        if self.value_examples_per_problem < 0:
            raise ValueError("value_examples_per_problem must not be negative")
        missing = [p for p in (self.value_data or "").split(",") if p.strip() and not Path(p.strip()).exists()]
        if missing:
            raise ValueError(f"value_data: no label data at {', '.join(missing)}")
        if self.format not in COMPLETION_FORMATS:
            raise ValueError(f"format {self.format!r}: one of {', '.join(COMPLETION_FORMATS)}")
        if not (0 <= self.premature_share <= 1 and 0 <= self.wait_share <= 1) or (
            self.premature_share + self.wait_share > 1
        ):
            raise ValueError("premature_share and wait_share must lie in [0, 1] and sum to at most 1")
        if self.format == "reasoning" and (self.value_examples_per_problem or self.value_data):
            raise ValueError("format reasoning takes no value examples (value_examples_per_problem, value_data)")
        if self.level_weights is not None and len(self.level_weights) != len(self.levels):
            raise ValueError(f"level_weights has {len(self.level_weights)} entries for {len(self.levels)} levels")
        super().__post_init__()

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> PolicySFTConfig:
        """The ``preset``'s values, then ``overrides``: ``PolicySFTConfig.from_preset("tiny", output_dir=...)``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})


# ---- model --------------------------------------------------------------------------------------------------------
def build_policy(config: PolicySFTConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A fresh ``LlamaForCausalLM`` of the config's shape, seeded by ``config.seed``."""
    llama = LlamaConfig(
        vocab_size=-(-len(tokenizer) // 32) * 32,  # padded to a multiple of 32: friendlier matmul shapes
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama)


def starting_policy(
    config: PolicySFTConfig, problems: list[Problem] | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The policy ``init_from`` names (in float32, for training) or a fresh one, and its tokenizer; for the
    reasoning format, with the thinking tags added (:func:`add_reasoning_tokens`, their output rows started from
    the characters they displace in the training ``problems``' solutions, where given)."""
    if not config.init_from:
        tokenizer = build_char_tokenizer()
        model = build_policy(config, tokenizer)
    else:
        folder = Path(config.init_from)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"init_from: {folder} holds no model (no config.json)")
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if config.format == "reasoning":
        add_reasoning_tokens(model, tokenizer, like=displaced_characters(problems) if problems else None)
    return model, tokenizer


def add_reasoning_tokens(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, like: dict[str, str] | None = None
) -> tuple[int, int]:
    """Add ``<think>`` and ``</think>`` to the tokenizer (:func:`training.sft_data.add_think_tokens`), resize the
    embeddings to the vocabulary padded to a multiple of 32, start the new tokens' rows, and name the
    ``deepseek_r1`` parser in the config; the tags' ids.

    A new token's input row starts at the mean of the old tokens' rows; its output row too, or, for a tag that
    ``like`` maps to an old token, at that token's output row: a trained policy then writes the tag where it
    wrote that token (``<think>`` for the solution's first character, ``</think>`` for the ``\\`` of ``\\boxed``)
    from the first step, and learns only to tell them apart. From the mean, 63 steps on 2,000 arith problems
    left a trained policy still writing the plain format, greedy."""
    known = len(tokenizer)
    ids = add_think_tokens(tokenizer)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=32, mean_resizing=False)
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for token, new in zip(THINK_TOKENS, ids, strict=True):
            if new < known:
                continue  # the tokenizer had it: a reasoning policy trained further
            inputs[new] = inputs[:known].mean(dim=0)
            source = tokenizer.convert_tokens_to_ids((like or {}).get(token, tokenizer.unk_token))
            outputs[new] = outputs[source] if source != tokenizer.unk_token_id else outputs[:known].mean(dim=0)
    model.config.ponder_reasoning_parser = REASONING_PARSER
    return ids


# ---- the run ------------------------------------------------------------------------------------------------------
def train(config: PolicySFTConfig, command: str | None = None) -> dict[str, Any]:
    """Train, save the final model + tokenizer, plot the loss, evaluate, write ``metrics.json`` and the model card
    (``README.md``, naming ``command``, the command line that ran this); returns the metrics."""

    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    task = get_task(config.task)
    train_problems, val_problems = training_problems(config)
    model, tokenizer = starting_policy(config, train_problems)
    train_dataset, eval_dataset = datasets_for(config, task, tokenizer, train_problems, val_problems)
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    data = _token_counts(trainer.train_dataset)
    result = trainer.train(resume_from_checkpoint=resume_path(config))
    final = save_final(trainer.model, tokenizer, output_dir, config.save_dtype)
    plot_loss(trainer.state.log_history, output_dir / "loss.png", title=f"SFT on {config.task}, preset {config.preset}")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    eval_losses = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
    metrics: dict[str, Any] = {
        "task": config.task,
        "preset": config.preset,
        "seed": config.seed,
        "num_train_problems": len(train_problems),
        "train_problems_per_level": {
            str(lv): sum(p.meta.get("level", 0) == lv for p in train_problems) for lv in config.levels
        },
        **data,
        "format": config.format,
        **(_reasoning_metrics(config, train_problems, tokenizer) if config.format == "reasoning" else {}),
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "head_dim": trainer.model.config.hidden_size // trainer.model.config.num_attention_heads,
        "num_hidden_layers": trainer.model.config.num_hidden_layers,
        "hidden_size": trainer.model.config.hidden_size,
        "init_from": config.init_from,
        "model_bytes": sum(f.stat().st_size for f in final.glob("*.safetensors")),
        "optimizer_steps": trainer.state.global_step,
        "train_time_s": round(result.metrics["train_runtime"], 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],  # 1, 5, 15 min, at the end of training
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / max(result.metrics["train_runtime"], 1e-9)),
        "train_loss_mean": result.metrics.get("train_loss"),
        "final_loss": losses[-1] if losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
    }
    if not config.keep_checkpoints:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    metrics["command"] = command
    metrics["config"] = {name: plain_value(getattr(config, name)) for name in PolicySFTConfig.__annotations__}
    _write_run(output_dir, metrics, started)  # the trained run's record stands even if the evaluation fails
    if config.eval_after_training:
        metrics["test"] = evaluate_checkpoint(
            final,
            kv_cache_gib=config.eval_kv_cache_gib,
            task_name=config.task,
            levels=config.eval_levels,
            limit=config.eval_problems_per_level,
            seed=config.seed,
            num_samples=config.eval_num_samples,
            temperature=config.eval_temperature,
            sample_levels=config.eval_sample_levels,
        )
        _write_run(output_dir, metrics, started)
    return metrics


def _write_run(output_dir: Path, metrics: dict[str, Any], started: float) -> None:
    """``metrics.json`` and the model card (``README.md``, replacing TRL's generic one), the time so far in both."""
    metrics["total_time_s"] = round(time.perf_counter() - started, 1)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "README.md").write_text(model_card(metrics))


def save_final(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path, dtype: str) -> Path:
    """Save the model in ``dtype`` (safetensors) with the tokenizer and chat template: a vLLM-servable folder."""
    model = model.to(getattr(torch, dtype))
    model.config.use_cache = True  # TRL turns it off for training; generation wants it
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _reasoning_metrics(config: PolicySFTConfig, problems: list, tokenizer: Any) -> dict[str, Any]:
    """The reasoning format's facts for metrics.json and the card: the tags' ids, the parser, the realized mix."""
    plan = plan_reasoning(problems, config.premature_share, config.wait_share, config.seed)
    return {
        "reasoning_parser": REASONING_PARSER,
        "think_token_ids": dict(zip(THINK_TOKENS, tokenizer.convert_tokens_to_ids(list(THINK_TOKENS)), strict=True)),
        "reasoning_mix": {kind: sum(k == kind for k, _ in plan) for kind in ("full", "premature", "wait")},
        "displaced_characters": displaced_characters(problems),
    }


def _token_counts(dataset: Any) -> dict[str, int]:
    """Tokens per epoch in the tokenized training set: all of them, and those with a loss (the completions)."""
    total = sum(len(ids) for ids in dataset["input_ids"])
    completion = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])
    return {"train_tokens_per_epoch": total, "completion_tokens_per_epoch": completion}


def model_card(metrics: dict[str, Any]) -> str:
    """The checkpoint's README: what it is, how it was made (command, seed, data, time) and what it scores."""
    config = metrics["config"]
    origin = (
        f"trained further from the policy in `{metrics['init_from']}` (see its card; fresh problems, "
        f"seed {metrics['seed']})"
        if metrics.get("init_from")
        else "trained from random weights"
    )
    lines = [
        f"# Ponder policy: SFT on `{metrics['task']}` (preset `{metrics['preset']}`)",
        "",
        f"A {metrics['num_hidden_layers']}-layer, {metrics['hidden_size']}-wide `LlamaForCausalLM` "
        f"({metrics['num_parameters']:,} parameters, head_dim {metrics['head_dim']}, "
        f"saved in {config['save_dtype']}, {metrics['model_bytes'] / 1e6:.1f} MB) with a character-level tokenizer "
        f"and chat template, {origin} by `training/sft.py` on the task's reference solutions "
        "(loss on the completion only). No pretrained weights, no downloaded data.",
        "",
        "## How it was made",
        "",
        "```",
        metrics.get("command") or "(run from Python, not the command line)",
        "```",
        "",
        f"- seed {metrics['seed']}; {metrics['num_train_problems']:,} training problems{_per_level(metrics)}, "
        f"{config['num_train_epochs']:g} epoch(s), {metrics['optimizer_steps']:,} optimizer steps of "
        f"{config['per_device_train_batch_size']} problems",
        f"- {metrics['tokens_seen']:,} tokens trained on ({metrics['completion_tokens_per_epoch']:,} completion "
        f"tokens with a loss per epoch), {metrics['tokens_per_s']:,} tokens/s",
        f"- training {metrics['train_time_s'] / 60:.1f} min; the whole command (data, training, evaluation) "
        f"{metrics['total_time_s'] / 60:.1f} min, on {_machine()}{_load(metrics)}",
        f"- final training loss {metrics['final_loss']:.4f}"
        + (f", validation loss {metrics['final_eval_loss']:.4f}" if metrics.get("final_eval_loss") is not None else ""),
        "",
    ]
    if metrics.get("format") == "reasoning":
        lines += _reasoning_card(metrics)
    test = metrics.get("test")
    if test:
        lines += markdown_table(test)
    lines += ["Files: `metrics.json` (every number above and the full config), `loss.png` (the loss curve).", ""]
    return "\n".join(lines)


def _reasoning_card(metrics: dict[str, Any]) -> list[str]:
    config, mix, like = metrics["config"], metrics["reasoning_mix"], metrics["displaced_characters"]
    ids = metrics["think_token_ids"]
    total = max(sum(mix.values()), 1)
    return [
        "## Reasoning format: a model built so that thinking length matters",
        "",
        "The completion is the reference solution's steps inside thinking tags, then the boxed answer; the model "
        "writes `<think>` itself (the chat template's generation prompt is unchanged):",
        "",
        "```",
        "<think>",
        "(1) Add 7: 12 + 7 = 19",
        "",
        "(2) Multiply by 3: 19 * 3 = 57",
        "",
        "</think>",
        "",
        "\\boxed{57}",
        "```",
        "",
        f"`<think>` is token {ids['<think>']} and `</think>` token {ids['</think>']}: single tokens appended to the "
        "character vocabulary (added tokens, not special ones, so that decoding with `skip_special_tokens` keeps "
        "them). Their input rows started at the mean of the others and their output rows at those of the characters "
        f"they take the place of in the plain format (`{like['<think>']}` for `<think>`, `{like['</think>']}` for "
        "`</think>`), so the policy wrote the tags where it had written those from the first step. `config.json` "
        "names vLLM's reasoning parser "
        f'(`"ponder_reasoning_parser": "{metrics["reasoning_parser"]}"`), which splits the reasoning from the answer.',
        "",
        f"The training rows are a seeded mix (seed {metrics['seed']}; `--premature_share "
        f"{config['premature_share']:g} --wait_share {config['wait_share']:g}`), drawn per problem:",
        "",
        f"- **full** ({mix['full']:,} rows, {mix['full'] / total:.0%}): thinks through every step, then boxes the "
        "right answer;",
        f"- **premature** ({mix['premature']:,}, {mix['premature'] / total:.0%}): stops thinking after k of the n "
        "steps (k uniform in 1..n-1) and boxes the value step k reached, a premature answer, usually wrong;",
        f"- **wait** ({mix['wait']:,}, {mix['wait'] / total:.0%}): stops at the same place but writes `Wait` on its "
        "own line where `</think>` would be, then does the remaining steps and boxes the right answer.",
        "",
        "One-step problems (level 1) cannot stop early and are always full, so the realized shares are a little "
        "under the configured ones. The model is built on purpose so that ending its thinking early costs accuracy "
        "and a forced `Wait` (budget forcing, s1: Muennighoff et al. 2025) has something real to recover: a "
        "premature and a forced trace share their text up to the token after step k, `</think>` or `Wait`.",
        "",
    ]


def _per_level(metrics: dict[str, Any]) -> str:
    counts = metrics["train_problems_per_level"]
    if list(counts) == ["0"]:  # a task without levels
        return ""
    return f" (per level: {', '.join(f'L{k} {v:,}' for k, v in counts.items())})"


def _load(metrics: dict[str, Any]) -> str:
    """A note where other work shared the cores (the run alone keeps about one per core busy): the load average
    over the 15 minutes before training ended."""
    load = (metrics.get("load_average") or [0, 0, 0])[-1]
    busy = load > (os.cpu_count() or 1) + 1
    return f", shared with other jobs (load average {load:.1f} over the last 15 min of training)" if busy else ""


def _machine() -> str:

    return f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
