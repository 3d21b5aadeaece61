"""A process reward model on vLLM's pooling runner: one correctness probability per reasoning step.

Serves ``Qwen2ForProcessRewardModel`` checkpoints, the architecture of Qwen2.5-Math-PRM (Zhang et al. 2025,
"The Lessons of Developing Process Reward Models in Mathematical Reasoning"). The input is the format that model
was trained on: its chat template over a system prompt, the question as the user turn, and the steps joined by the
step tag with one trailing tag as the assistant turn. vLLM's ``STEP`` pooler returns the 2-label softmax at every
tag token (``PoolerConfig(step_tag_id=...)``); the positive class, index 1, is the step's score.

:class:`VLLMPoolingScorer` holds what the PRM and the ORM (``reward_models.orm``) share: the ``AsyncLLM``,
batched submission with abort on cancellation, and lifecycle. Cost: one pooling request per item, all at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from vllm import PoolingParams
from vllm.config import PoolerConfig
from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.hardware import scorer_cpu_bind
from reward_models.layout import (
    QWEN_PRM_SYSTEM,
    STEP_TAG,
    configured_layout,
    configured_step_read,
    read_steps,
    step_spans,
    tokenizer_path,
)
from reward_models.registry import DEFAULT_ENGINE, EngineOptions
from reward_models.vllm_runtime import (
    encode_prompt,
    engine_args,
    engine_input,
    start_llm,
    stop_llm,
    translate_errors,
)
from strategies.errors import ScorerError


class VLLMPoolingScorer:
    """A reward model served by an in-process vLLM engine (pooling; the likelihood PRM runs a generation one); the
    subclasses render items and read scores."""

    kind: Literal["prm", "orm"]
    pooling_task: str

    def __init__(self, llm: AsyncLLM, model_name: str, system_prompt: str | None = QWEN_PRM_SYSTEM) -> None:
        self._llm = llm
        self.model_name = model_name
        self.system_prompt = system_prompt
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len: int = llm.model_config.max_model_len
        self._live: set[str] = set()

    @staticmethod
    async def _start(path: str, engine: EngineOptions, runner: str = "pooling", **extra: Any) -> AsyncLLM:
        """The reward model's own vLLM engine, on the cores :func:`scorer_cpu_bind` gives it."""
        args = engine_args(
            path,
            kv_cache_gib=engine.kv_cache_gib,
            memory_fraction=engine.memory_fraction,
            max_model_len=engine.max_model_len,
            seed=engine.seed,
            tensor_parallel_size=1,
            dtype=engine.dtype,
            runner=runner,
            **({} if engine.enforce_eager is None else {"enforce_eager": engine.enforce_eager}),
            **extra,
        )
        return await start_llm(args, cpu_bind=scorer_cpu_bind(requested=engine.scorer_cpus))

    def chat(self, question: str, answer: str) -> str:
        """The model's chat template over (system prompt,) the question and an answer, as one text."""
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    async def _pool(self, texts: Sequence[str], request_id: str) -> list[torch.Tensor]:
        """The pooled output of every text, submitted all at once; one failure cancels the rest."""
        return await self._pool_ids([encode_prompt(self.tokenizer, text) for text in texts], request_id)

    async def _pool_ids(self, encoded: Sequence[list[int]], request_id: str) -> list[torch.Tensor]:
        """The pooled output of every tokenized prompt, submitted all at once; one failure cancels the rest."""
        for ids in encoded:
            if len(ids) > self.max_model_len:
                raise ScorerError(
                    f"a scored item is {len(ids)} tokens; the reward model's context is {self.max_model_len}"
                )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._pool_one(ids, f"{request_id}-{i}")) for i, ids in enumerate(encoded)]
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _pool_one(self, ids: list[int], request_id: str) -> torch.Tensor:
        params = PoolingParams(task=self.pooling_task)
        final = await self._last(self._llm.encode(engine_input(self._llm, ids), params, request_id), request_id)
        if final is None or final.outputs.data is None:
            raise ScorerError(f"the reward model returned nothing for {request_id}")
        return final.outputs.data.float().cpu()

    async def _last(self, outputs: Any, request_id: str) -> Any:
        """The last item of one engine request's output stream (None if it gave none), the request tracked as live
        meanwhile and aborted if the caller is cancelled."""
        self._live.add(request_id)
        final = None
        try:
            with translate_errors("reward-model", ScorerError):
                async for output in outputs:
                    final = output
        except asyncio.CancelledError:
            await asyncio.shield(self._llm.abort(request_id))
            raise
        finally:
            self._live.discard(request_id)
        return final

    async def abort(self, request_id: str) -> None:
        """Abort every live scoring request whose id starts with ``request_id``."""
        doomed = [rid for rid in self._live if rid.startswith(request_id)]
        if doomed:
            await self._llm.abort(doomed)

    def num_running(self) -> int:
        return len(self._live)

    def healthy(self) -> bool:
        return not self._llm.errored

    async def shutdown(self) -> None:
        if self._live and self.healthy():
            await self._llm.abort(list(self._live))
        stop_llm(self._llm)


def require_fast_tokenizer(tokenizer: Any, model_name: str) -> None:
    """Adapters that locate steps by character offsets need a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_name}: a fast tokenizer is needed (the adapter reads its character offsets)")


def pooler_config(step_read: str, step_tag_id: int) -> PoolerConfig:
    """vLLM's ``STEP`` pooler (the rows at the step tags) for the ``tag`` reading; ``ALL`` (a row per token) for a
    reading over each step's span. (Left unset, vLLM gives this architecture ``STEP`` with Qwen's tag id 151651.)"""
    if step_read == "tag":
        return PoolerConfig(step_tag_id=step_tag_id)
    return PoolerConfig(tok_pooling_type="ALL")


class VLLMProcessRewardModel(VLLMPoolingScorer):
    """Qwen2.5-Math-PRM-style step scorer: ``score`` gives one probability in [0, 1] per step."""

    kind = "prm"
    pooling_task = "token_classify"

    def __init__(
        self,
        llm: AsyncLLM,
        model_name: str,
        step_tag: str,
        system_prompt: str | None = QWEN_PRM_SYSTEM,
        step_suffix: str = "",
        step_read: str = "tag",
    ) -> None:
        super().__init__(llm, model_name, system_prompt)
        self.step_tag, self.step_suffix, self.step_read = step_tag, step_suffix, step_read
        self.step_tag_id = self.tokenizer.convert_tokens_to_ids(step_tag)

    @classmethod
    async def create(
        cls,
        path: str,
        engine: EngineOptions = DEFAULT_ENGINE,
        *,
        step_tag: str | None = None,
    ) -> VLLMProcessRewardModel:
        """Start the engine (~25-40 s for a tiny model on the CPU, off the event loop). ``step_tag``: None reads
        it from the checkpoint's ``config.json`` (key ``step_tag``), else ``<extra_0>``."""
        step_tag = step_tag or _configured_step_tag(Path(path)) or STEP_TAG
        step_tag_id = _single_token_id(path, step_tag)
        step_read = configured_step_read(Path(path))
        llm = await cls._start(path, engine, pooler_config=pooler_config(step_read, step_tag_id))
        system, suffix = configured_layout(Path(path))
        return cls(
            llm, model_name=path, step_tag=step_tag, system_prompt=system, step_suffix=suffix, step_read=step_read
        )

    def render(self, question: str, steps: Sequence[str]) -> str:
        """The exact text the PRM reads: ``step_suffix`` and the tag end every step; the tag appears nowhere else."""
        return self.chat(question.replace(self.step_tag, ""), self._answer(steps))

    def _answer(self, steps: Sequence[str]) -> str:
        tag, suffix = self.step_tag, self.step_suffix
        return "".join(step.replace(tag, "") + suffix + tag for step in steps)

    def encode_item(self, question: str, steps: Sequence[str]) -> tuple[list[int], int]:
        """The token ids the PRM reads and the position where the first step starts (the training-time ``min``
        reading needs each step's span)."""
        text = self.render(question, steps)
        start = len(encode_prompt(self.tokenizer, text[: text.rindex(self._answer(steps))]))
        return encode_prompt(self.tokenizer, text), start

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        """Per-step probabilities for every (question, steps) item, scored in one batch."""
        todo = [i for i, (_, steps) in enumerate(items) if steps]  # no steps: nothing to score
        encoded = [self.encode_item(*items[i]) for i in todo]
        pooled = await self._pool_ids([ids for ids, _ in encoded], request_id)
        scores: list[list[float]] = [[] for _ in items]
        for i, (ids, first), data in zip(todo, encoded, pooled, strict=True):  # data: softmaxed, (tags or tokens, 2)
            step_scores = data[:, 1].tolist()
            if self.step_read != "tag":  # ALL pooling: one row per token, reduced over each step's span
                step_scores = read_steps(step_scores, step_spans(ids, self.step_tag_id, first), self.step_read)
            if len(step_scores) != len(items[i][1]):
                raise ScorerError(f"the PRM scored {len(step_scores)} step tags for {len(items[i][1])} steps")
            scores[i] = step_scores
        return scores


def _configured_step_tag(path: Path) -> str | None:
    config = path / "config.json"
    return json.loads(config.read_text()).get("step_tag") if config.is_file() else None


def _single_token_id(path: str, step_tag: str) -> int:
    # deferred import: torch/transformers only on this path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(path))
    ids = tokenizer.encode(step_tag, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"step tag {step_tag!r} is not a single token of the tokenizer at {path} ({ids})")
    return ids[0]
