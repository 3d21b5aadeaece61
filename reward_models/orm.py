"""An outcome reward model on vLLM's pooling runner: one probability that a whole solution is right.

Serves sequence classifiers (``Qwen2ForSequenceClassification``, ``LlamaForSequenceClassification``, ...), which
vLLM runs through its ``classify`` task: the last token's logits through the checkpoint's head, a sigmoid for one
label and a softmax for more. The positive class is the last label. The input is the chat template over the system
prompt the checkpoint's ``config.json`` names (:func:`configured_layout`; default Qwen's), the question and the
steps joined by ``step_separator``. Cost: one pooling request per item, all submitted at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.layout import QWEN_PRM_SYSTEM, configured_layout
from reward_models.registry import DEFAULT_ENGINE, EngineOptions
from reward_models.vllm_prm import VLLMPoolingScorer


class VLLMOutcomeRewardModel(VLLMPoolingScorer):
    """Whole-solution scorer: ``score`` gives ``[p]`` per item, ``p`` in [0, 1]."""

    kind = "orm"
    pooling_task = "classify"

    def __init__(
        self, llm: AsyncLLM, model_name: str, step_separator: str = "\n\n", system_prompt: str | None = QWEN_PRM_SYSTEM
    ) -> None:
        super().__init__(llm, model_name, system_prompt)
        self.step_separator = step_separator

    @classmethod
    async def create(
        cls,
        path: str,
        engine: EngineOptions = DEFAULT_ENGINE,
        *,
        step_separator: str = "\n\n",
    ) -> VLLMOutcomeRewardModel:
        """Start the engine (~25-40 s for a tiny model on the CPU, off the event loop)."""
        llm = await cls._start(path, engine)
        system, _ = configured_layout(Path(path))
        return cls(llm, model_name=path, step_separator=step_separator, system_prompt=system)

    def render(self, question: str, steps: Sequence[str]) -> str:
        """The exact text the ORM reads."""
        return self.chat(question, self.step_separator.join(steps))

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        """One probability per (question, steps) item, scored in one batch."""
        pooled = await self._pool([self.render(question, steps) for question, steps in items], request_id)
        return [[float(data.reshape(-1)[-1])] for data in pooled]  # data: (num_labels,), activated
