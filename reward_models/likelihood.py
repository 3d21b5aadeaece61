r"""A causal LM as its own process verifier: a step's score is the lowest probability the LM gives any of its tokens.

The ``likelihood`` PRM format. The LM (typically the policy itself) reads the question through its chat template and
the steps as it would have written them, steps joined by the step delimiter (``"\n\n"``), and each step is scored by
``min_t P(token_t | everything before it)`` over the step's tokens and the delimiter after it (where a number ended
too early, the delimiter is the unlikely token). This is token-level confidence, the signal that DeepConf (Fu et al.
2025, "Deep Think with Confidence") filters reasoning traces by, read per step so that it answers the PRM's
question: where does a solution first go wrong? A step the LM wrote by sampling a token it thought unlikely is the
typical error of a sampled solution; an error the LM makes with confidence it cannot see (its blind spot, which a
trained verifier must cover).

How it runs on vLLM: one generation request per item with ``max_tokens=1`` and ``prompt_logprobs=0``, which returns
the log-probability of every prompt token (the raw distribution, temperature 1), all items submitted at once.
Requests read vLLM's prefix cache: the question and, in a step-level search, the steps scored in earlier rounds are
not computed again. vLLM then leaves the log-probabilities of the cached tokens out, so the scorer keeps the scores
of the steps it has read (keyed by the token ids up to the step's end, :data:`KNOWN_STEPS` of them) and a step whose
tokens were served from the cache takes its known score; an item with such a step of unknown score is read again
without the cache.

The training-time counterpart, :func:`torch_scores`, computes the same numbers from a transformers model and shares the
rendering (:func:`encode_steps`), so ``ponder eval prm`` measures what the server serves.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import shutil
import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from vllm import SamplingParams
from vllm.logprobs import FlatLogprobs
from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.registry import CAUSAL_LMS, DEFAULT_ENGINE, EngineOptions
from reward_models.vllm_prm import VLLMPoolingScorer, require_fast_tokenizer
from reward_models.vllm_runtime import engine_input
from strategies.errors import ScorerError

DELIMITER = "\n\n"  # the default policy's step delimiter, and the server's
KNOWN_STEPS = 1 << 16  # step scores kept for prefixes vLLM may serve from its prefix cache (~100 bytes each)


def render(
    tokenizer: Any, question: str, steps: Sequence[str], delimiter: str = DELIMITER
) -> tuple[str, list[tuple[int, int]]]:
    r"""The text the LM reads (its chat template over the question, then the steps) and each step's character span,
    the delimiter after it included.

    >>> class T:
    ...     def apply_chat_template(self, messages, **kwargs):
    ...         return "Q: " + messages[0]["content"] + "\nA: "
    >>> render(T(), "2+3?", ["2 + 3 = 5", "\\boxed{5}"])
    ('Q: 2+3?\nA: 2 + 3 = 5\n\n\\boxed{5}', [(11, 22), (22, 31)])
    """
    messages = [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    spans = []
    for i, step in enumerate(steps):
        piece = step.rstrip("\n")
        last = i == len(steps) - 1
        piece += delimiter if not last or step.endswith(delimiter) else ""
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    return text, spans


def encode_steps(
    tokenizer: Any, question: str, steps: Sequence[str], delimiter: str = DELIMITER
) -> tuple[list[int], list[list[int]]]:
    """Token ids of :func:`render`'s text and, per step, the positions of the tokens that overlap its span."""
    text, spans = render(tokenizer, question, steps, delimiter)
    bos = tokenizer.bos_token
    encoded = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    positions = [[i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a and i > 0] for a, b in spans]
    return list(encoded["input_ids"]), positions


def read(token_probs: Sequence[float], positions: Sequence[Sequence[int]]) -> list[float]:
    """One score per step: the lowest probability among its tokens (1.0 for a step without tokens).

    >>> read([1.0, 0.9, 0.2, 0.95, 0.99], [[1, 2], [3, 4]])
    [0.2, 0.95]
    """
    return [min((float(token_probs[i]) for i in span), default=1.0) for span in positions]


@torch.no_grad()
def torch_scores(
    model: Any, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], delimiter: str = DELIMITER
) -> list[list[float]]:
    """The training-time equivalent of :meth:`LikelihoodPRM.score` with a transformers causal LM, one item at a
    time (the items differ in length, and a tiny model is fast enough)."""
    scores = []
    for question, steps in items:
        ids, positions = encode_steps(tokenizer, question, steps, delimiter)
        logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        scores.append(read([1.0, *logp.exp().tolist()], positions))
    return scores


def torch_scores_at(path: str | Path, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
    """:func:`torch_scores` of the causal LM saved at ``path`` (the ``likelihood`` format's torch scorer)."""
    # deferred import: torch/transformers only on this path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return torch_scores(model, AutoTokenizer.from_pretrained(str(path)), items)


class LikelihoodPRM(VLLMPoolingScorer):
    """A causal LM served as a PRM by its own token probabilities (``score``: one probability per step)."""

    kind = "prm"
    aggregation = "min"  # a solution is as likely as its least likely step; the last step only copies the answer

    def __init__(self, llm: AsyncLLM, model_name: str, delimiter: str = DELIMITER) -> None:
        super().__init__(llm, model_name, system_prompt=None)
        self.delimiter = delimiter
        require_fast_tokenizer(self.tokenizer, model_name)
        self._known: OrderedDict[bytes, float] = OrderedDict()  # step scores by the ids up to the step's end (LRU)

    @classmethod
    async def create(
        cls,
        path: str,
        engine: EngineOptions = DEFAULT_ENGINE,
    ) -> LikelihoodPRM:
        """Start a generation engine on the LM (~25-40 s for a tiny model on the CPU, off the event loop)."""
        llm = await cls._start(path, engine, runner="generate")
        return cls(llm, model_name=path)

    async def _pool_one(self, ids: list[int], request_id: str, *, fresh: bool = False) -> torch.Tensor:
        """Every prompt token's probability under the LM (the first, which nothing predicts, is 1); NaN for the
        tokens vLLM served from its prefix cache (``fresh``: read none from it)."""
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            flat_logprobs=True,  # flat lists instead of a dict per token: the server's event loop has less to build
            detokenize=False,
            skip_reading_prefix_cache=fresh,
        )
        final = await self._last(self._llm.generate(engine_input(self._llm, ids), params, request_id), request_id)
        flat = None if final is None else final.prompt_logprobs
        if not isinstance(flat, FlatLogprobs) or len(flat) != len(ids):
            raise ScorerError(f"the reward model returned no prompt log-probabilities for {request_id}")
        cached = 0 if fresh else final.num_cached_tokens or 0  # token p is predicted from p - 1: computed if p > cached
        starts, ends, logprobs = flat.start_indices, flat.end_indices, flat.logprobs
        # prompt_logprobs=0: a computed position holds one entry, the prompt token's own log-probability
        return torch.tensor(
            [1.0]
            + [
                math.exp(logprobs[starts[p]]) if p > cached and ends[p] > starts[p] else math.nan
                for p in range(1, len(ids))
            ]
        )

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        """Per-step probabilities for every (question, steps) item: one forward pass per item, all in one batch
        (one more, without the prefix cache, for the items with a cached step of unknown score)."""
        todo = [i for i, (_, steps) in enumerate(items) if steps]  # no steps: nothing to score
        encoded = [encode_steps(self.tokenizer, *items[i], self.delimiter) for i in todo]
        pooled = await self._pool_ids([ids for ids, _ in encoded], request_id)
        read_back = [
            self._read(ids, positions, probs.tolist()) for (ids, positions), probs in zip(encoded, pooled, strict=True)
        ]
        again = [k for k, got in enumerate(read_back) if got is None]
        if again:
            fresh = await asyncio.gather(
                *(self._pool_one(encoded[k][0], f"{request_id}-fresh-{k}", fresh=True) for k in again)
            )
            for k, probs in zip(again, fresh, strict=True):
                read_back[k] = self._read(*encoded[k], probs.tolist())
        scores: list[list[float]] = [[] for _ in items]
        for i, got in zip(todo, read_back, strict=True):
            assert got is not None  # a fresh read computes every token
            scores[i] = got
        return scores

    def _read(self, ids: list[int], positions: list[list[int]], probs: list[float]) -> list[float] | None:
        """:func:`read` with the known scores of the steps whose tokens came from the prefix cache; None when one
        such step's score is unknown. Every step read is remembered."""
        scores = []
        for span in positions:
            key = hashlib.blake2b(array("i", ids[: span[-1] + 1] if span else ids).tobytes(), digest_size=16).digest()
            values = [probs[p] for p in span]
            if any(math.isnan(v) for v in values):
                if key not in self._known:
                    return None
                self._known.move_to_end(key)
                scores.append(self._known[key])
                continue
            scores.append(min(values, default=1.0))
            self._known[key] = scores[-1]
            if len(self._known) > KNOWN_STEPS:
                self._known.popitem(last=False)
        return scores


# ---- a policy checkpoint marked as a likelihood PRM ---------------------------------------------------------------
CARD = """# {name}: the causal LM `{policy}` read as a likelihood PRM

The weights and tokenizer of `{policy}`, with `"ponder_prm_format": "likelihood"` in `config.json`: served as a PRM
(`ponder serve --prm {output}`), each step is scored by the lowest probability the LM gives any of its tokens and
the step delimiter after it (`reward_models/likelihood.py`). Nothing is trained for the reading itself: it flags the
steps whose tokens the LM finds unlikely, so it catches the errors that this LM would not make.

Made by `ponder convert likelihood-prm --policy {policy} --output {output}`.
Evaluate: `ponder eval prm --model {output} --data LABELS --threshold T`.
"""


def export(policy: str | Path, output: str | Path) -> Path:
    """Copy a causal-LM checkpoint to ``output`` with ``ponder_prm_format: likelihood`` set, so that ``load_scorer``
    (and the server's default PRM) reads it as this PRM; a model card says what it is."""

    policy, output = Path(policy), Path(output)
    config = json.loads((policy / "config.json").read_text()) if (policy / "config.json").is_file() else None
    if config is None or not set(config.get("architectures") or []) & set(CAUSAL_LMS):
        raise ValueError(f"{policy}: not a causal LM checkpoint ({', '.join(CAUSAL_LMS)})")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for item in policy.iterdir():
        if item.is_file() and item.name != "README.md":  # weights, tokenizer, and the LM's metrics and loss curve
            shutil.copy2(item, output / item.name)
    (output / "config.json").write_text(json.dumps(config | {"ponder_prm_format": "likelihood"}, indent=2) + "\n")
    card = CARD.format(name=output.name, policy=policy, output=output)
    if (policy / "README.md").is_file():  # the LM's own card: how it was trained
        own = (policy / "README.md").read_text()
        card += "\n## The LM's own card\n\n" + ("##" + own if own.startswith("# ") else own)
    (output / "README.md").write_text(card)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder convert likelihood-prm", description="Mark a policy checkpoint as a likelihood PRM."
    )
    parser.add_argument("--policy", required=True, help="causal LM checkpoint folder (e.g. models/default-policy)")
    parser.add_argument("--output", required=True, help="folder to write (replaced if it exists)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export(args.policy, args.output)}")
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
