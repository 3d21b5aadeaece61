"""The PRM's model class and its torch scoring: what reads a Ponder PRM or ORM checkpoint outside vLLM.

:class:`Qwen2ForProcessRewardModel` is the architecture of Qwen2.5-Math-PRM (Zhang et al. 2025, "The Lessons of
Developing Process Reward Models in Mathematical Reasoning"): a Qwen2 body and a ``score`` head (Linear -> ReLU ->
Linear, 2 labels) read at every step-tag token, saved in the layout vLLM's own ``Qwen2ForProcessRewardModel`` loads.
:func:`score_steps` and :func:`score_outcomes` score (question, steps) items with the training-time model as vLLM
scores them, through the serving adapters' own rendering (:mod:`reward_models.vllm_prm`, :mod:`reward_models.orm`),
so the trainer (:mod:`training.prm`), the evaluator and the benchmarks read what the server reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen2Model,
    Qwen2PreTrainedModel,
)
from transformers.modeling_outputs import TokenClassifierOutput

from reward_models.layout import (
    QWEN_PRM_SYSTEM,
    STEP_TAG,
    Layout,
    layout_from,
    read_steps,
    step_read_from,
    step_spans,
    tokenizer_path,
)
from reward_models.orm import VLLMOutcomeRewardModel
from reward_models.vllm_prm import VLLMProcessRewardModel
from reward_models.vllm_runtime import encode_prompt

Render = Callable[[str, Sequence[str]], str]  # (question, steps) -> the text the reward model reads


# ---- the model ----------------------------------------------------------------------------------------------------
class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2 body + vLLM's PRM ``score`` head; ``logits`` (B, T, 2) at every token, loss at the labelled ones."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.model = Qwen2Model(config)
        width = config.hidden_size
        self.score = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, config.num_labels))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_weights: torch.Tensor | None = None,
    ) -> TokenClassifierOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        logits = self.score(hidden)  # (B, T, 2)
        loss = None if labels is None else step_loss(logits, labels, label_weights)
        return TokenClassifierOutput(loss=loss, logits=logits)


def step_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy of the 2-way softmax against (possibly soft) targets at positions whose label is not -100,
    averaged with ``weights`` (B, T) where given."""
    mask = labels != -100  # (B, T)
    target = labels[mask].float()  # (N,) probability that the step is right
    logp = torch.log_softmax(logits[mask].float(), dim=-1)  # (N, 2)
    losses = -(target * logp[:, 1] + (1 - target) * logp[:, 0])
    if weights is None:
        return losses.mean()
    w = weights[mask].float()
    return (losses * w).sum() / w.sum().clamp_min(1e-8)


PRM_ARCH = Qwen2ForProcessRewardModel.__name__


def load_reward_model(path: str | Path) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """A saved PRM or ORM and its tokenizer, in float32 and eval mode (the training-time model)."""
    architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    cls = Qwen2ForProcessRewardModel if PRM_ARCH in architectures else Qwen2ForSequenceClassification
    model = cls.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_path(path))


# ---- reading as the server reads ----------------------------------------------------------------------------
def saved_layout(model: nn.Module) -> Layout:
    """The layout a saved model was trained in (its config; Qwen's when it records none), as the server reads it."""
    return layout_from(model.config.to_dict())


def prm_adapter(tokenizer: Any, step_tag: str = STEP_TAG, layout: Layout = (QWEN_PRM_SYSTEM, "")):
    """The serving adapter bound to a tokenizer, no engine started: train and eval read what serve reads."""
    adapter = object.__new__(VLLMProcessRewardModel)  # render and encode_item need these attributes, not the engine
    adapter.tokenizer, adapter.step_tag = tokenizer, step_tag
    adapter.system_prompt, adapter.step_suffix = layout
    return adapter


def prm_renderer(tokenizer: Any, step_tag: str = STEP_TAG, layout: Layout = (QWEN_PRM_SYSTEM, "")) -> Render:
    """The serving adapter's ``render`` bound to a tokenizer."""
    return prm_adapter(tokenizer, step_tag, layout).render


def orm_renderer(tokenizer: Any, layout: Layout = (QWEN_PRM_SYSTEM, "")) -> Render:
    """The ORM adapter's ``render``, bound to a tokenizer without starting an engine."""
    adapter = object.__new__(VLLMOutcomeRewardModel)
    adapter.tokenizer, adapter.system_prompt, adapter.step_separator = tokenizer, layout[0], "\n\n"
    return adapter.render


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids as the serving adapters encode them (BOS only when the rendered text lacks it)."""
    return encode_prompt(tokenizer, text)


@dataclass
class PadCollator:
    """Right-pads a batch: ``input_ids`` with the pad id, token labels with -100; ORM labels become (B, 1)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(input_ids)
        token_labels = isinstance(features[0]["labels"], list)
        labels = torch.full((len(features), width), -100.0) if token_labels else torch.zeros(len(features), 1)
        weighted = "label_weights" in features[0]
        weights = torch.zeros(len(features), width) if weighted else None
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), 1
            if token_labels:
                labels[i, :n] = torch.tensor(f["labels"])
            else:
                labels[i, 0] = f["labels"]
            if weighted:
                weights[i, :n] = torch.tensor(f["label_weights"])
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        return batch | {"label_weights": weights} if weighted else batch


@torch.no_grad()
def score_steps(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[tuple[str, Sequence[str]]],
    step_tag: str = STEP_TAG,
    batch_size: int = 32,
) -> list[list[float]]:
    """Per-step P(right) of a PRM for (question, steps) items, as vLLM computes it (the softmax at the tag tokens,
    or the lowest over each step's tokens where the checkpoint's config says ``min``)."""
    read, tag_id = step_read_from(model.config.to_dict()), tokenizer.convert_tokens_to_ids(step_tag)
    adapter = prm_adapter(tokenizer, step_tag, saved_layout(model))
    collate, scores = PadCollator(tokenizer.pad_token_id), []
    for first in range(0, len(items), batch_size):
        encoded = [adapter.encode_item(q, steps) for q, steps in items[first : first + batch_size]]
        batch = collate([{"input_ids": x, "labels": [0.0] * len(x)} for x, _ in encoded])
        probs = torch.softmax(model(batch["input_ids"], batch["attention_mask"]).logits.float(), dim=-1)  # (B, T, 2)
        for row, (ids, start) in enumerate(encoded):
            scores.append(read_steps(probs[row, :, 1].tolist(), step_spans(ids, tag_id, start), read))
    return scores


@torch.no_grad()
def score_outcomes(model: nn.Module, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 32):
    """P(right) of an ORM per (question, steps) item, as vLLM computes it (sigmoid of the last token's logit)."""
    render, collate, scores = orm_renderer(tokenizer, saved_layout(model)), PadCollator(tokenizer.pad_token_id), []
    for first in range(0, len(items), batch_size):
        ids = [encode(tokenizer, render(q, steps)) for q, steps in items[first : first + batch_size]]
        batch = collate([{"input_ids": x, "labels": 0.0} for x in ids])
        scores += torch.sigmoid(model(batch["input_ids"], batch["attention_mask"]).logits.float())[:, 0].tolist()
    return scores


def step_scores_at(path: str | Path, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
    """:func:`score_steps` of the PRM saved at ``path`` (the ``qwen`` format's torch scorer)."""
    model, tokenizer = load_reward_model(path)
    return score_steps(model, tokenizer, items)


def outcome_scores_at(path: str | Path, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
    """:func:`score_outcomes` of the ORM saved at ``path``, one score per item (the ``orm`` format's torch scorer)."""
    model, tokenizer = load_reward_model(path)
    return [[score] for score in score_outcomes(model, tokenizer, items)]
