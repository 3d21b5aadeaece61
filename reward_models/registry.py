"""The reward-model formats: each a name, the file that serves it and the checkpoints it reads.

A format is registered lazily, as vLLM registers its reasoning and tool parsers
(``ReasoningParserManager.register_lazy_module(name, module_path, class_name)``): the registry holds the module and
class names, and the module, which imports vLLM, is imported only when a checkpoint of that format loads. A new format
is one file with a class that has ``async create(path, engine: EngineOptions, **options)`` and one
:func:`register_format` line in :mod:`reward_models`. A duplicate name fails at import; an unknown name fails with the
list of known ones.

No vLLM import here: the command line and the evaluator read the registry without starting an engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

CAUSAL_LMS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class EngineOptions:
    """How a reward model's own vLLM engine starts; every format takes the same ones."""

    memory_fraction: float = 0.1  # KV cache: fraction of GPU memory (of RAM on the CPU engine)
    kv_cache_gib: float | None = None  # KV cache in GiB; overrides memory_fraction
    dtype: str = "auto"  # auto: the checkpoint's, float32 where bf16 would be emulated (reward_models.hardware)
    max_model_len: int | None = None  # None: the checkpoint's context length
    seed: int = 0
    enforce_eager: bool | None = None  # skip vLLM's torch.compile warm-up; None: the engines' default
    scorer_cpus: str | None = None  # CPU build: the cores its worker binds to ("1", "12-15", "shared"); None: default


@dataclass(frozen=True)
class RewardModelFormat:
    """A registered format: what it reads and where its serving class lives."""

    name: str
    kind: Literal["prm", "orm"]  # per-step scores, or one score per solution
    module: str  # imported only when a checkpoint of this format loads
    cls: str
    architectures: tuple[str, ...]  # config.json architectures it reads; "*Suffix" matches by suffix
    detected: bool  # chosen from the architecture alone when neither the caller nor the checkpoint names a format
    help: str
    fixed: tuple[tuple[str, Any], ...] = ()  # options the class always gets for this format (one class, two formats)
    torch_scores: str | None = None  # "module:function" (path, items) -> scores without vLLM; None: vLLM only

    def reads(self, architectures: list[str]) -> bool:
        """Whether a checkpoint with these architectures is one this format can serve."""
        return any(_matches(arch, pattern) for arch in architectures for pattern in self.architectures)

    def needs(self) -> str:
        """What the format reads, in words, for an error message."""
        if self.architectures == CAUSAL_LMS:
            return f"causal LM ({', '.join(CAUSAL_LMS)})"
        return " or ".join(self.architectures)

    def load_class(self) -> Any:
        """The serving class (importing its module, and so vLLM)."""
        return getattr(importlib.import_module(self.module), self.cls)

    def load_torch_scores(self) -> Any:
        """The function that scores items with the checkpoint in torch (``ponder eval --backend torch``)."""
        if self.torch_scores is None:
            raise ValueError(f"format {self.name!r} is scored on vLLM only (--backend vllm)")
        module, _, function = self.torch_scores.partition(":")
        return getattr(importlib.import_module(module), function)


DEFAULT_ENGINE = EngineOptions()
FORMATS: dict[str, RewardModelFormat] = {}


def register_format(fmt: RewardModelFormat) -> None:
    """Add ``fmt`` to the registry; a name registered twice is an error."""
    if fmt.name in FORMATS:
        raise ValueError(f"reward-model format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt


def get_format(name: str) -> RewardModelFormat:
    """The format called ``name``, or ValueError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown PRM format {name!r}; known: {', '.join(FORMATS)}") from None


def detect_format(architectures: list[str]) -> RewardModelFormat | None:
    """The first detectable format whose architectures match, or None."""
    return next((f for f in FORMATS.values() if f.detected and f.reads(architectures)), None)


def _matches(architecture: str, pattern: str) -> bool:
    return architecture.endswith(pattern[1:]) if pattern.startswith("*") else architecture == pattern
