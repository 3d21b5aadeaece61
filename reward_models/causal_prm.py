"""Process reward models that are causal LMs: a step's score is P(good) / (P(good) + P(bad)) for two label tokens.

Two published formats, each rendered exactly as its reference code renders it:

- ``math_shepherd``: Math-Shepherd (Wang et al. 2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step
  without Human Annotations"; peiyi9979/math-shepherd-mistral-7b-prm). One text, ``question + " " + step_1 + " ки\\n"
  + ... + step_n + " ки"``; step i is judged by the next-token distribution at its ``ки`` tag, over ``+`` and ``-``.
- ``rlhflow``: the RLHFlow PRMs (Xiong et al. 2024, "An Implementation of Generative PRM", RLHFlow;
  RLHFlow/Llama3.1-8B-PRM-Deepseek-Data). The model's chat template over a conversation: the first user turn is
  ``question + " " + step_1``, every later step is a user turn, and every user turn is answered ``+``; step i is
  judged by the next-token distribution just before the assistant's i-th answer.

How it runs on vLLM: neither prompt logprobs (top-k only, so the bad token may be missing) nor one request per
step prefix is needed. vLLM's pooling runner converts a ``*ForCausalLM`` into a classifier whose one output is
``h · (W[good] - W[bad])`` from the LM head's two rows (``hf_overrides`` ``classifier_from_token``,
``method="from_2_way_softmax"``, the recipe of LM-as-reranker models); its sigmoid is exactly
``P(good) / (P(good) + P(bad))``. An ``ALL`` token pooler returns that at every position, and the adapter reads the
positions where the label would be predicted, located from the tokenizer's character offsets (so a tag or label
that is several tokens long, or a tag token that also occurs inside a step, is read at the right place).

Cost: one pooling request (one forward pass) per solution, all submitted at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vllm.config import PoolerConfig
from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.registry import DEFAULT_ENGINE, EngineOptions
from reward_models.vllm_prm import VLLMPoolingScorer, require_fast_tokenizer
from strategies.errors import ScorerError

CausalPRMFormatName = Literal["math_shepherd", "rlhflow"]
CAUSAL_PRM_FORMATS: tuple[CausalPRMFormatName, ...] = ("math_shepherd", "rlhflow")


@dataclass(frozen=True)
class CausalPRMFormat:
    """How a causal-LM PRM reads a solution and which two tokens carry its verdict."""

    name: CausalPRMFormatName
    good_token: str = "+"  # both reference PRMs: "+" for a correct step ...
    bad_token: str = "-"  # ... and "-" for a wrong one
    step_tag: str = "ки"  # math_shepherd only: the tag closing every step (Cyrillic "ki", as in the paper's data)

    def __post_init__(self) -> None:
        if self.name not in CAUSAL_PRM_FORMATS:
            raise ValueError(f"unknown causal PRM format {self.name!r}; known: {', '.join(CAUSAL_PRM_FORMATS)}")
        if not (self.good_token and self.bad_token and self.step_tag) or self.good_token == self.bad_token:
            raise ValueError("good_token, bad_token and step_tag must be non-empty, and the two tokens different")


class CausalLMProcessRewardModel(VLLMPoolingScorer):
    """A causal LM served as a PRM (Math-Shepherd or RLHFlow format): ``score`` gives P(good | good or bad) per step."""

    kind = "prm"
    pooling_task = "token_classify"

    def __init__(self, llm: AsyncLLM, model_name: str, fmt: CausalPRMFormat) -> None:
        super().__init__(llm, model_name, system_prompt=None)
        self.format = fmt
        require_fast_tokenizer(self.tokenizer, model_name)

    @classmethod
    async def create(
        cls,
        path: str,
        engine: EngineOptions = DEFAULT_ENGINE,
        *,
        format: CausalPRMFormatName,
        good_token: str | None = None,
        bad_token: str | None = None,
        step_tag: str | None = None,
    ) -> CausalLMProcessRewardModel:
        """Start the engine (~25-60 s for a tiny model on the CPU, off the event loop); None keeps a default."""
        overrides: dict[str, Any] = {"good_token": good_token, "bad_token": bad_token, "step_tag": step_tag}
        fmt = CausalPRMFormat(format, **{k: v for k, v in overrides.items() if v is not None})
        # deferred import: torch/transformers only on this path
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        # vLLM looks the two up with convert_tokens_to_ids: hand it the vocabulary entries that the texts encode to
        # (for a SentencePiece vocabulary "+" is "▁+", as the Math-Shepherd card's encode("+ -") gives).
        labels = (fmt.bad_token, fmt.good_token)
        bad, good = (tokenizer.convert_ids_to_tokens(label_token_id(tokenizer, t)) for t in labels)
        llm = await cls._start(
            path,
            engine,
            convert="classify",
            hf_overrides={"classifier_from_token": [bad, good], "method": "from_2_way_softmax"},
            pooler_config=PoolerConfig(tok_pooling_type="ALL"),  # a score at every position; we pick the steps'
        )
        return cls(llm, model_name=path, fmt=fmt)

    # ---- rendering ---------------------------------------------------------------------------------------------
    def render(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        """The exact text the PRM reads, and per step the character index where its label token would stand."""
        if self.format.name == "math_shepherd":
            return self._render_math_shepherd(question, steps)
        return self._render_rlhflow(question, steps)

    def _render_math_shepherd(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        tag = self.format.step_tag
        text, anchors = question.replace(tag, ""), []
        for i, step in enumerate(steps):
            text += (" " if i == 0 else "\n") + step.replace(tag, "") + " " + tag
            anchors.append(len(text))  # the label follows the tag
        return text, anchors

    def _render_rlhflow(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        messages: list[dict[str, str]] = []
        for i, step in enumerate(steps):
            messages.append({"role": "user", "content": f"{question} {step}" if i == 0 else step})
            messages.append({"role": "assistant", "content": self.format.good_token})
        text = self._template(messages, add_generation_prompt=False)
        anchors = []
        for i in range(len(steps)):
            prefix = self._template(messages[: 2 * i + 1], add_generation_prompt=True)  # up to answer i
            if not text.startswith(prefix + self.format.good_token):
                raise ScorerError(
                    f"{self.model_name}: its chat template does not render a conversation as the "
                    "concatenation of its turns; cannot locate the assistant's answers"
                )
            anchors.append(len(prefix))
        return text, anchors

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the rendered item and, per step, the position whose next-token distribution judges it."""
        text, anchors = self.render(question, steps)
        bos = self.tokenizer.bos_token
        encoded = self.tokenizer(
            text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True
        )
        ends = {end: i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end > start}  # last token wins
        positions = [ends.get(anchor) for anchor in anchors]
        if None in positions:
            raise ScorerError(f"{self.model_name}: the tokenizer merges a label position with the text after it")
        return encoded["input_ids"], positions  # type: ignore[return-value]

    # ---- Scorer protocol ---------------------------------------------------------------------------------------
    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        """Per-step probabilities for every (question, steps) item: one forward pass per item, all in one batch."""
        todo = [i for i, (_, steps) in enumerate(items) if steps]  # no steps: nothing to score
        encoded = [self.encode(*items[i]) for i in todo]
        pooled = await self._pool_ids([ids for ids, _ in encoded], request_id)
        scores: list[list[float]] = [[] for _ in items]
        for i, (ids, positions), data in zip(todo, encoded, pooled, strict=True):  # data: (T, 1), sigmoid applied
            if data.shape[0] != len(ids):
                raise ScorerError(f"the PRM returned {data.shape[0]} token scores for {len(ids)} tokens")
            scores[i] = data[positions, 0].tolist()
        return scores


def label_token_id(tokenizer: Any, token: str) -> int:
    """The one id ``token`` encodes to (no special tokens added); a label that is several tokens is an error."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"label token {token!r} is not a single token of the tokenizer ({ids})")
    return ids[0]
