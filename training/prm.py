r"""``ponder train prm|orm``: process and outcome reward models from scratch, on ``transformers.Trainer``.

The PRM is the architecture of Qwen2.5-Math-PRM (Zhang et al. 2025, "The Lessons of Developing Process Reward
Models in Mathematical Reasoning"): a Qwen2 body and a ``score`` head (Linear -> ReLU -> Linear, 2 labels) read at
every step-tag token, :class:`Qwen2ForProcessRewardModel`. It is trained as token classification, TRL's old
``PRMTrainer`` recipe (Lightman et al. 2023; Wang et al. 2024): each stepwise row ``{"prompt", "completions",
"labels"}`` is rendered by the serving adapter's own :meth:`VLLMProcessRewardModel.render` (chat template, system
prompt, the steps each ended by the step tag), so training and serving read identical token ids; the label of step
i sits on the i-th tag token and every other position is -100 (:func:`step_token_labels`). The loss is the cross
entropy of the 2-way softmax against the label, which may be soft (a Monte Carlo success rate). The checkpoint is
the layout vLLM's ``Qwen2ForProcessRewardModel`` loads (``model.*`` and ``score.{0,2}.*`` weights; ``config.json``
records ``step_tag``/``step_tag_id``), so ``reward_models.load_scorer`` serves it as it is.

The ORM is ``Qwen2ForSequenceClassification`` with one label, trained with binary cross entropy on the outcome
(final answer right) of the whole solution, rendered as :meth:`VLLMOutcomeRewardModel.render` renders it;
``problem_type = multi_label_classification`` makes vLLM apply the matching sigmoid.

Runs save checkpoints (``--resume_from_checkpoint last`` continues one), the final model, ``loss.png``,
``metrics.json`` and a model card; with ``eval_data`` the PRM's first-error-step F1 (ProcessBench) is measured
after training (:mod:`training.evaluate`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from reward_models.layout import (
    QWEN_PRM_SYSTEM,
    READ_KEY,
    STEP_READS,
    STEP_TAG,
    SUFFIX_KEY,
    SYSTEM_KEY,
    Layout,
    save_tokenizer,
)
from reward_models.torch_prm import (
    PRM_ARCH,
    PadCollator,
    Qwen2ForProcessRewardModel,
    encode,
    orm_renderer,
    prm_renderer,
)
from server.tiny_models import build_char_tokenizer
from training.evaluate import evaluate_reward_model, markdown_table
from training.label import load_rows
from training.plots import plot_loss
from training.runs import BF16_HELP, plain_value, resume_path, settle_precision
from training.tasks import get_task

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the shipped models/default-prm
    "tiny": {  # seconds: tests and smoke runs
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "per_device_train_batch_size": 8,
        "logging_steps": 2,
        "save_steps": 20,
        "save_dtype": "float32",
    },
}


@dataclass
class RewardModelConfig(TrainingArguments):
    """``ponder train prm``: TrainingArguments plus the label data, the model shape and the evaluation."""

    preset: str = field(
        default="default", metadata={"help": "Named bundle of defaults: default, tiny.", "choices": list(PRESETS)}
    )
    kind: str = field(
        default="prm",
        metadata={"help": "prm: per-step scores; orm: one score per solution.", "choices": ["prm", "orm"]},
    )
    train_data: str = field(
        default="data/prm/train",
        metadata={"help": "Stepwise label data (`ponder label` output: folder or JSONL; several joined by commas)."},
    )
    eval_data: str | None = field(
        default=None, metadata={"help": "Held-out label data: eval_loss during training, F1 / accuracy after."}
    )
    label_column: str = field(
        default="labels", metadata={"help": "Column with the targets: labels, exact_labels, mc_hard_labels, ..."}
    )
    dense_labels: str | None = field(
        default=None,
        metadata={
            "help": "A task name (arith): besides the step tags, every completion token gets a label, whether the "
            "solution is still right there (the task locates the first wrong character). Exact labels only."
        },
    )
    dense_weights: list[float] = field(
        default_factory=lambda: [0.25, 25.0],
        metadata={
            "help": "With dense_labels: loss weights of a right character and of the first wrong one (the rest of "
            "its step and the step tags weigh 1). A wrong character is one in a few hundred: without the weight the "
            "model learns to say 1."
        },
    )
    step_read: str = field(
        default="tag",
        metadata={
            "help": "How the saved PRM's step scores are read (config.json records it): tag, the score at the step "
            "tag (Qwen2.5-Math-PRM's reading), or min, the lowest over the step's tokens and its tag (for a PRM "
            "trained with dense_labels, whose every token says whether the solution is still right; vLLM then "
            "returns every token's score).",
            "choices": list(STEP_READS),
        },
    )
    max_length: int = field(default=1024, metadata={"help": "Longer rendered rows are dropped (counted)."})
    step_tag: str = field(default=STEP_TAG, metadata={"help": "Step tag token (Qwen2.5-Math-PRM's <extra_0>)."})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Policy checkpoint (Llama or Qwen2, same shape and tokenizer) whose body initialises the reward "
            "model, as Qwen2.5-Math-PRM starts from its policy; None: random weights."
        },
    )
    freeze_init_layers: bool = field(
        default=True,
        metadata={
            "help": "With init_from: keep the policy's embeddings and layers fixed and train only the layers above "
            "them, the final norm and the head. The fresh layers then read what the policy would write next beside "
            "what the step says, instead of wearing the policy's arithmetic away; and the backward pass is short."
        },
    )
    policy_layout: bool = field(
        default=True,
        metadata={
            "help": "Read solutions as the policy writes them: no system prompt, each step closed by a newline and "
            "the tag (which, starting as a newline, completes the blank line between steps), so a body copied from "
            "the policy sees its own text. False: Qwen2.5-Math-PRM's layout (its system prompt, steps joined by the "
            "tag). Saved in config.json, which the server reads."
        },
    )
    tag_init: str | None = field(
        default="\n",
        metadata={
            "help": "With init_from: the step tag's embedding starts as this token's (the policy never saw the tag; "
            "as a newline it reads like the step delimiter it replaces). Empty: left as the policy has it."
        },
    )
    # ---- model shape: a fresh Qwen2 body
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(
        default=8, metadata={"help": "Attention heads; hidden_size / heads must be >= 32 (vLLM's CPU attention)."}
    )
    intermediate_size: int = field(default=512, metadata={"help": "MLP width (SwiGLU)."})
    save_dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype of the saved model (bfloat16: half the size).", "choices": ["bfloat16", "float32"]},
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep checkpoint-* folders after the run."})
    threshold: float = field(default=0.5, metadata={"help": "A step scored below this is the predicted error."})

    # ---- TrainingArguments defaults for a tiny model from scratch on a CPU
    output_dir: str | None = field(default="runs/prm", metadata={"help": "Checkpoints, final model and metrics."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (tiny, from scratch)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup: steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the training rows."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Solutions per optimizer step."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Solutions per eval batch."})
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every this many steps."})
    eval_steps: float | None = field(default=100, metadata={"help": "eval_loss every this many steps (eval_data)."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept during the run."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers (none)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Rows are pre-tokenized; keep them."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.hidden_size // self.num_attention_heads < 32:
            raise ValueError(
                f"hidden_size/num_attention_heads = {self.hidden_size}/{self.num_attention_heads}: "
                "vLLM's CPU attention needs a whole head_dim of at least 32"
            )
        settle_precision(self)
        self.eval_strategy = "steps" if self.eval_data else "no"
        super().__post_init__()

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> RewardModelConfig:
        """The ``preset``'s values, then ``overrides``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})


@dataclass
class OutcomeRewardModelConfig(RewardModelConfig):
    """``ponder train orm``: the same script, one score per solution, the outcome as target."""

    kind: str = field(default="orm", metadata={"help": "prm or orm.", "choices": ["prm", "orm"]})
    label_column: str = field(default="outcome", metadata={"help": "Column with the target: outcome."})
    output_dir: str | None = field(default="runs/orm", metadata={"help": "Checkpoints, final model and metrics."})


def model_config(config: RewardModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    extra: dict[str, Any] = {}
    if config.kind == "prm":
        step_tag_id = tokenizer.convert_tokens_to_ids(config.step_tag)
        extra = {"step_tag": config.step_tag, "step_tag_id": step_tag_id, "architectures": [PRM_ARCH]}
        extra[READ_KEY] = config.step_read
    else:
        extra = {"problem_type": "multi_label_classification"}  # BCE in training, sigmoid in vLLM
    system, suffix = layout_of(config)
    extra |= {SYSTEM_KEY: system, SUFFIX_KEY: suffix}
    return Qwen2Config(
        vocab_size=-(-len(tokenizer) // 32) * 32,  # padded to a multiple of 32: friendlier matmul shapes
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        num_labels=2 if config.kind == "prm" else 1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_model(config: RewardModelConfig, tokenizer: PreTrainedTokenizerFast) -> nn.Module:
    """A fresh PRM or ORM of the config's shape, seeded by ``config.seed``; its body from ``init_from`` if set."""
    torch.manual_seed(config.seed)
    qwen = model_config(config, tokenizer)
    model = Qwen2ForProcessRewardModel(qwen) if config.kind == "prm" else Qwen2ForSequenceClassification(qwen)
    if config.init_from:
        depth = load_body(model, config.init_from)
        if config.tag_init and config.kind == "prm":
            copy_embedding(model, tokenizer, config.step_tag, config.tag_init)
        if config.freeze_init_layers:
            freeze_policy_layers(model, depth)
    return model


def copy_embedding(model: nn.Module, tokenizer: PreTrainedTokenizerFast, token: str, source: str) -> None:
    """Start ``token``'s input embedding as a copy of ``source``'s (both single tokens of the tokenizer)."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (token, source)]
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"tag_init: {token!r} and {source!r} must each be one token of the tokenizer")
    with torch.no_grad():
        table = model.model.embed_tokens.weight
        table[ids[0]] = table[ids[1]]


def freeze_policy_layers(model: nn.Module, depth: int) -> None:
    """No gradient for the embeddings and the ``depth`` layers copied from the policy; the rest trains."""
    for name, param in model.named_parameters():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if name.startswith("model.embed_tokens.") or (layer is not None and int(layer) < depth):
            param.requires_grad_(False)


def load_body(model: nn.Module, policy: str | Path) -> int:
    """Copy a policy's ``model.*`` weights (Llama and Qwen2 name them alike) into ``model``; the head stays random.

    Returns the number of layers copied.

    Only the q/k/v biases Qwen2 has and Llama lacks may be missing (they stay zero: the same function), and whole
    layers above the policy's last: a deeper reward model gets the policy's layers at the bottom and fresh ones on
    top, which can compare what the policy would have written with what the step says. Any other missing or
    misshapen weight is an error.
    """

    files = sorted(Path(policy).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"init_from: no safetensors in {policy}")
    body = {k: v for f in files for k, v in load_file(str(f)).items() if k.startswith("model.")}
    own = model.state_dict()
    wrong = [k for k, v in body.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"init_from {policy}: weights that do not fit this model's shape, e.g. {wrong[:3]}")
    depth = len({k.split(".")[2] for k in body if k.startswith("model.layers.")})
    fresh = tuple(f"model.layers.{i}." for i in range(depth, getattr(model.config, "num_hidden_layers", depth)))
    missing = [
        k
        for k in own
        if k.startswith("model.") and k not in body and not k.endswith("_proj.bias") and not k.startswith(fresh)
    ]
    if missing:
        raise ValueError(f"init_from {policy}: the policy lacks {missing[:3]}")
    with torch.no_grad():
        for key, value in body.items():
            own[key].copy_(value.to(own[key].dtype))
        for key in own:
            policy_bias = key.startswith("model.") and key.endswith("_proj.bias") and not key.startswith(fresh)
            if policy_bias and key not in body:
                own[key].zero_()
    return depth


# ---- rendering and labels -----------------------------------------------------------------------------------------
def layout_of(config: RewardModelConfig) -> Layout:
    """The layout a run trains in: the policy's own text, or Qwen2.5-Math-PRM's."""
    return (None, "\n" if config.kind == "prm" else "") if config.policy_layout else (QWEN_PRM_SYSTEM, "")


def step_token_labels(input_ids: Sequence[int], step_labels: Sequence[float], step_tag_id: int) -> list[float]:
    """-100 at every position but the step-tag tokens, which carry the step labels in order.

    >>> step_token_labels([1, 5, 9, 6, 6, 9], [True, 0.25], step_tag_id=9)
    [-100.0, -100.0, 1.0, -100.0, -100.0, 0.25]
    """
    positions = [i for i, token in enumerate(input_ids) if token == step_tag_id]
    if len(positions) != len(step_labels):
        raise ValueError(f"{len(positions)} step tags in the input for {len(step_labels)} step labels")
    labels = [-100.0] * len(input_ids)
    for position, label in zip(positions, step_labels, strict=True):
        labels[position] = float(label)
    return labels


def tokenize_rows(rows: Any, config: RewardModelConfig, tokenizer: Any) -> tuple[list[dict[str, Any]], int]:
    """``{"input_ids", "labels"}`` per row (token labels for a PRM, a float for an ORM), and how many were too long."""
    layout = layout_of(config)
    if config.kind == "prm":
        render = prm_renderer(tokenizer, config.step_tag, layout)
        tag_id = tokenizer.convert_tokens_to_ids(config.step_tag)
    else:
        render = orm_renderer(tokenizer, layout)
    task = get_task(config.dense_labels) if config.dense_labels and config.kind == "prm" else None
    out, too_long = [], 0
    for row in rows:
        ids = encode(tokenizer, render(row["prompt"], row["completions"]))
        if len(ids) > config.max_length:
            too_long += 1
            continue
        target = row[config.label_column]
        labels = step_token_labels(ids, target, tag_id) if config.kind == "prm" else float(target)
        offsets = task.error_offsets(row["prompt"], row["completions"]) if task else None
        if offsets is None:
            out.append({"input_ids": ids, "labels": labels})
            continue
        dense = dense_token_labels(labels, [c + layout[1] for c in row["completions"]], offsets, tag_id, ids)
        weights = dense_token_weights(ids, dense, tag_id, config.dense_weights)
        out.append({"input_ids": ids, "labels": dense, "label_weights": weights})
    if any("label_weights" in row for row in out):
        for row in out:
            row.setdefault("label_weights", [1.0] * len(row["input_ids"]))
    return out, too_long


def dense_token_labels(
    labels: list[float], steps: Sequence[str], offsets: Sequence[int], tag_id: int, ids: Sequence[int]
) -> list[float]:
    """Add a label at every character of the steps up to the end of the first wrong one (char-level tokenizer: one
    token each) to the tag labels.

    Every character before the solution's first error (``offsets``, -1: none) is 1; the first wrong character and
    the rest of its step are 0: whether the solution is still right through that token. Steps after the first wrong
    one carry no character labels (their text may well follow from the error correctly); the step tags keep the
    step labels. The zeros after the first wrong character teach the positions up to the step's tag to carry "an
    error happened in this step" forward, which the tag's score must say. A tokenizer that is not one token per
    character leaves the labels as they are.

    >>> dense_token_labels([-100.0, -100.0, -100.0, 1.0, -100.0, -100.0, 0.0], ["ab", "cd"], [-1, 1], 9,
    ...                    [5, 1, 2, 9, 3, 4, 9])
    [-100.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    >>> dense_token_labels([-100.0, -100.0, -100.0, -100.0, 0.0, -100.0, 0.0], ["abc", "d"], [1, 0], 9,
    ...                    [5, 1, 2, 7, 9, 4, 9])
    [-100.0, 1.0, 0.0, 0.0, 0.0, -100.0, 0.0]
    """
    tags = [i for i, token in enumerate(ids) if token == tag_id]
    starts = [tags[0] - len(steps[0]), *(t + 1 for t in tags[:-1])] if len(tags) == len(steps) else []
    if not starts or starts[0] < 0 or any(t - a != len(s) for a, t, s in zip(starts, tags, steps, strict=True)):
        return labels
    out = list(labels)
    for tag, step, offset in zip(tags, steps, offsets, strict=True):
        for k in range(len(step)):
            out[tag - len(step) + k] = 1.0 if offset == -1 or k < offset else 0.0
        if offset != -1:
            break
    return out


def dense_token_weights(
    ids: Sequence[int], labels: Sequence[float], tag_id: int, dense_weights: Sequence[float]
) -> list[float]:
    """Loss weights of :func:`dense_token_labels`' targets: a right character ``dense_weights[0]``, the first wrong
    character ``dense_weights[1]``, the rest of its step and every tag 1; unlabelled positions 0.

    >>> dense_token_weights([5, 1, 2, 7, 9, 4, 9], [-100.0, 1.0, 0.0, 0.0, 0.0, -100.0, 0.0], 9, [0.5, 20.0])
    [0.0, 0.5, 20.0, 1.0, 1.0, 0.0, 1.0]
    """
    right, wrong = dense_weights
    first_wrong = next((i for i, (t, x) in enumerate(zip(ids, labels, strict=True)) if x == 0.0 and t != tag_id), -1)
    return [
        0.0 if x == -100 else 1.0 if t == tag_id else right if x == 1.0 else wrong if i == first_wrong else 1.0
        for i, (t, x) in enumerate(zip(ids, labels, strict=True))
    ]


# ---- the run ------------------------------------------------------------------------------------------------------
def train(config: RewardModelConfig, command: str | None = None) -> dict[str, Any]:
    """Train, save the servable checkpoint + tokenizer, plot the loss, evaluate, write ``metrics.json`` and the card."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset

    started, output_dir = time.perf_counter(), Path(config.output_dir)
    tokenizer = build_char_tokenizer()
    train_rows, train_too_long = tokenize_rows(load_rows(config.train_data), config, tokenizer)
    eval_rows = tokenize_rows(load_rows(config.eval_data), config, tokenizer)[0] if config.eval_data else None
    model = build_model(config, tokenizer)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    result = trainer.train(resume_from_checkpoint=resume_path(config))
    final = save_final(trainer.model, tokenizer, output_dir, config.save_dtype)
    plot_loss(trainer.state.log_history, output_dir / "loss.png", title=f"{config.kind.upper()} on {config.train_data}")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    labelled = sum(sum(x != -100 for x in r["labels"]) if config.kind == "prm" else 1 for r in train_rows)
    metrics: dict[str, Any] = {
        "kind": config.kind,
        "preset": config.preset,
        "seed": config.seed,
        "train_data": config.train_data,
        "label_column": config.label_column,
        "train_solutions": len(train_rows),
        "train_labels": labelled,
        "train_rows_too_long": train_too_long,
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "model_bytes": sum(f.stat().st_size for f in final.glob("*.safetensors")),
        "optimizer_steps": trainer.state.global_step,
        "train_time_s": round(result.metrics["train_runtime"], 1),
        "final_loss": losses[-1] if losses else None,
    }
    if not config.keep_checkpoints:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    if config.eval_data:
        metrics["eval"] = evaluate_reward_model(final, config.eval_data, threshold=config.threshold)
    metrics["total_time_s"] = round(time.perf_counter() - started, 1)
    metrics["command"] = command
    metrics["config"] = {name: plain_value(getattr(config, name)) for name in RewardModelConfig.__annotations__}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "README.md").write_text(model_card(metrics))
    return metrics


def save_final(model: nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path, dtype: str) -> Path:
    """The servable folder: safetensors in ``dtype``, ``config.json`` (with the step tag), tokenizer, chat template."""
    model.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    save_tokenizer(tokenizer, path)  # in a subfolder: see reward_models.layout.tokenizer_path
    return path


def origin(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """How the weights started: random, or the body of a policy (frozen or fine-tuned)."""
    if not config.get("init_from"):
        return "trained from random weights"
    trainable = metrics.get("trainable_parameters", metrics["num_parameters"])
    how = (
        f"kept fixed; {trainable:,} parameters trained"
        if config.get("freeze_init_layers") and trainable < metrics["num_parameters"]
        else "fine-tuned with the rest"
    )
    return f"its embeddings and lower layers from the policy `{config['init_from']}` ({how})"


def model_card(metrics: dict[str, Any]) -> str:
    """The checkpoint's README: what it is, how it was made, what it scores."""
    config, kind = metrics["config"], metrics["kind"]
    what = (
        "`Qwen2ForProcessRewardModel` (Qwen2 body + 2-label `score` head read at every `<extra_0>` step tag, the "
        "layout of Qwen2.5-Math-PRM; vLLM's pooling runner serves it)"
        if kind == "prm"
        else "`Qwen2ForSequenceClassification` with one label (sigmoid: P(final answer right))"
    )
    lines = [
        f"# Ponder {kind.upper()}: trained from scratch on `{metrics['train_data']}`",
        "",
        f"A {config['num_hidden_layers']}-layer, {config['hidden_size']}-wide {what}, "
        f"{metrics['num_parameters']:,} parameters, saved in {config['save_dtype']} "
        f"({metrics['model_bytes'] / 1e6:.1f} MB), character-level tokenizer, {origin(config, metrics)} by "
        "`training/prm.py`. No pretrained weights, no downloaded data.",
        "",
        "## How it was made",
        "",
        "```",
        metrics.get("command") or "(run from Python, not the command line)",
        "```",
        "",
        f"- seed {metrics['seed']}; {metrics['train_solutions']:,} labelled solutions, {metrics['train_labels']:,} "
        f"targets (column `{metrics['label_column']}`), {config['num_train_epochs']:g} epoch(s), "
        f"{metrics['optimizer_steps']:,} optimizer steps of {config['per_device_train_batch_size']}",
        f"- training {metrics['train_time_s'] / 60:.1f} min, whole command {metrics['total_time_s'] / 60:.1f} min; "
        f"final loss {metrics['final_loss'] or float('nan'):.4f}",
        "",
    ]
    if "eval" in metrics:
        lines += ["## Held-out evaluation", "", *markdown_table(metrics["eval"]), ""]
    lines += ["Files: `metrics.json` (every number above and the full config), `loss.png` (the loss curve).", ""]
    return "\n".join(lines)
