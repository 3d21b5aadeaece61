"""The policy as a remote OpenAI-compatible completions endpoint (vLLM, SGLang): ``{base_url}/completions``.

Lets Ponder sit in front of an existing, possibly multi-GPU, deployment. The server renders the chat template
itself, so only raw prompt text crosses the wire. One :meth:`OpenAIEngine.generate` call is one HTTP request
carrying every prompt; vLLM returns ``len(prompts) * n`` choices with ``index = i * n + j``.

Aborting closes the HTTP connection, which makes vLLM abort the request server-side. Prompts are tokenized
remotely as the in-process engine tokenizes them: BOS is added only when the rendered template lacks it.

Token counts per sample (vLLM's ``usage`` only gives the total):
1. ``logprobs`` requested: the number of returned tokens (exact).
2. a single sample in the call: ``usage.completion_tokens`` (exact).
3. otherwise: the text re-tokenized with the local tokenizer, plus one for a sample that ended on an EOS or
   stop token, which vLLM counts but does not print (an estimate; re-tokenizing may merge tokens differently).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from typing import Any

import httpx

from server.config import EngineConfig
from server.engine import checkpoint_reasoning_parser
from server.request_fields import json_options
from strategies.base import FinishReason, InvalidRequestError, Sample, SamplingSpec, TokenLogprob
from strategies.errors import EngineError, EngineUnavailableError

Json = dict[str, Any]


class OpenAIEngine:
    """:class:`strategies.base.Engine` over HTTP, with one shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,  # a HF tokenizer: the server's chat template, and count_tokens
        *,
        api_key: str | None = None,
        timeout: float = 600.0,  # seconds per connect / read; a long generation sends nothing until it ends
        max_model_len: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject a fake server here
        reasoning_parser: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.reasoning_parser = reasoning_parser  # the text comes back whole; Ponder's server sets the thinking apart
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            # Every in-flight engine call holds a connection; the remote server does the queuing.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=transport,
        )
        self._inflight: dict[asyncio.Task[Any], str] = {}  # each in-flight HTTP request -> its request_id
        self._healthy = True

    @classmethod
    async def from_config(cls, config: EngineConfig) -> OpenAIEngine:
        """The ``openai`` backend of ``ponder serve``: the remote server's model, with the tokenizer in
        ``config.tokenizer`` (else ``config.model``)."""
        # deferred import: torch/transformers only on this path
        from transformers import AutoTokenizer
        from vllm.tokenizers.hf import get_cached_tokenizer  # its vocabulary cached: vLLM's parsers read it often

        folder = config.tokenizer or config.model
        tokenizer = get_cached_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
        return cls(
            str(config.base_url),
            str(config.remote_model),
            tokenizer,
            api_key=config.remote_api_key,
            max_model_len=config.max_model_len or 4096,
            reasoning_parser=config.reasoning_parser or checkpoint_reasoning_parser(folder),
        )

    # --- Engine protocol ---

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        if not prompts:
            return []
        task = self._start(request_id, self._post(self._body(list(prompts), spec)))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the caller was cancelled: close its request too
            task.cancel()
            raise
        if task.cancelled():  # abort()
            return [[Sample("", 0, "abort") for _ in range(spec.n)] for _ in prompts]
        return self._parse(task.result(), spec, len(prompts))

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        """One sample as text deltas; ``num_tokens`` is cumulative, only the last delta has a finish_reason. With
        ``spec.logprobs`` set, each delta carries its tokens' logprobs (``Sample.logprobs``, with the top
        alternatives), as the in-process engine's deltas do."""
        if spec.n != 1:
            raise ValueError(f"streaming draws one sample, got n={spec.n}")
        body = self._body([prompt], spec)
        body |= {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        chunks: asyncio.Queue[Json | None] = asyncio.Queue()
        task = self._start(request_id, self._pump(body, chunks))
        task.add_done_callback(lambda _: chunks.put_nowait(None))  # also when cancelled before it started
        text, num_tokens, last = "", 0, None
        pending = _Pending(spec.logprobs is not None)  # each token's logprobs, until a delta carries them
        try:
            while (chunk := await chunks.get()) is not None:
                usage = chunk.get("usage") or {}
                num_tokens = usage.get("completion_tokens", num_tokens)
                if not chunk.get("choices"):
                    continue
                choice = chunk["choices"][0]
                delta = choice.get("text") or ""
                tokens = _completion_logprobs(choice.get("logprobs") or {})
                if not usage:  # no continuous usage stats: count logprob tokens, else one per chunk
                    num_tokens += len(tokens) if tokens is not None else int(bool(delta))
                pending.add(tokens)
                text += delta
                if choice.get("finish_reason"):  # hold it back: the usage chunk that follows has the total
                    last = choice
                elif delta:
                    yield Sample(delta, num_tokens, None, logprobs=pending.take())  # not finished yet
            await asyncio.wait({task})
            if task.cancelled():
                yield Sample("", num_tokens, "abort", logprobs=pending.take())
                return
            task.result()  # raise the remote's error, if any
            if last is None:
                raise EngineError("remote engine closed the stream without a finish_reason")
            finish, stop = _finish(last), _stop_string(last)
            delta = last.get("text") or ""
            if finish == "stop" and stop and not text.endswith(stop):
                delta += stop
            yield Sample(delta, num_tokens, finish, stop, logprobs=pending.take())
        finally:
            task.cancel()

    async def abort(self, request_id: str) -> None:
        for task, rid in list(self._inflight.items()):
            if rid.startswith(request_id):
                task.cancel()

    # --- what the server asks of an engine ---

    def check_options(self, options: Mapping[str, Any]) -> None:
        """The remote server validates the options itself (its 400 comes back as an engine error)."""

    async def score_text(self, prompt: str, text: str, top: int) -> list[TokenLogprob]:
        """Each token of ``text`` after ``prompt``: the remote's ``echo`` with ``logprobs`` over prompt + text, the
        tokens past the prompt's characters kept."""
        body: Json = {
            "model": self.model_name,
            "prompt": prompt + text,
            "max_tokens": 1,
            "echo": True,
            "logprobs": top,
        }
        if self._has_bos(prompt):
            body["add_special_tokens"] = False
        payload = await self._post(body)
        logprobs = (payload.get("choices") or [{}])[0].get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        offsets = logprobs.get("text_offset") or []
        values = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or [None] * len(tokens)
        end = len(prompt + text)
        return [
            TokenLogprob(token, value or 0.0, tuple(sorted((alts or {}).items(), key=lambda kv: -kv[1]))[:top])
            for token, offset, value, alts in zip(tokens, offsets, values, tops, strict=False)
            if len(prompt) <= offset < end
        ]

    def num_running(self) -> int:
        """In-flight HTTP requests (one per generate or stream call)."""
        return len(self._inflight)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (as the remote tokenizes it, see :meth:`_body`)."""
        return len(self.tokenizer.encode(text, add_special_tokens=not self._has_bos(text)))

    def healthy(self) -> bool:
        """False after a call failed to reach the remote, until one reaches it again."""
        return self._healthy

    async def shutdown(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await self._client.aclose()

    # --- HTTP ---

    def _has_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return bool(bos) and text.startswith(bos)

    def _body(self, prompts: list[str], spec: SamplingSpec) -> Json:
        room = self.max_model_len - max(self.count_tokens(prompt) for prompt in prompts)
        if room < 1:
            raise InvalidRequestError(f"a prompt fills the model's context of {self.max_model_len} tokens")
        body: Json = {
            "model": self.model_name,
            "prompt": prompts,
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": min(spec.max_tokens, room),  # vLLM rejects prompt + max_tokens > max_model_len
            "include_stop_str_in_output": True,  # vLLM extension: keep step delimiters in the text
        }
        if all(self._has_bos(prompt) for prompt in prompts):  # vLLM extension; it adds BOS by default
            body["add_special_tokens"] = False
        if spec.stop:
            body["stop"] = list(spec.stop)
        if spec.seed is not None:
            body["seed"] = spec.seed
        if spec.logprobs is not None:
            body["logprobs"] = spec.logprobs
        return body | json_options(spec.options)

    def _start(self, request_id: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._inflight[task] = request_id
        task.add_done_callback(self._inflight.pop)
        return task

    async def _post(self, body: Json) -> Json:
        with self._remote_errors():
            response = await self._client.post("/completions", json=body)
            await self._raise_for_status(response)
            try:
                return response.json()
            except ValueError as exc:
                raise EngineError(f"remote engine sent invalid JSON: {response.text[:200]!r}") from exc

    async def _pump(self, body: Json, chunks: asyncio.Queue[Json | None]) -> None:
        """Read the SSE stream into ``chunks``; runs as its own task so that abort() can cancel it."""
        with self._remote_errors():
            async with self._client.stream("POST", "/completions", json=body) as response:
                await self._raise_for_status(response)
                async for line in response.aiter_lines():
                    data = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or not data:
                        continue
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise EngineError(f"remote engine failed mid-stream: {_message(chunk)}")
                    chunks.put_nowait(chunk)

    async def _raise_for_status(self, response: httpx.Response) -> None:
        self._healthy = True  # it answered
        if response.status_code >= 400:
            await response.aread()
            try:
                message = _message(response.json())
            except ValueError:
                message = response.text[:500] or response.reason_phrase
            raise EngineError(f"remote engine returned {response.status_code}: {message}")

    @contextlib.contextmanager
    def _remote_errors(self) -> Iterator[None]:
        """Turn httpx's exceptions into ours, with the remote's message and no traceback text."""
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._healthy = False
            raise EngineUnavailableError(f"cannot reach the remote engine at {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise EngineError(f"remote engine timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"remote engine request failed: {type(exc).__name__}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise EngineError(f"remote engine sent an invalid stream chunk: {exc}") from exc

    # --- response parsing ---

    def _parse(self, payload: Json, spec: SamplingSpec, num_prompts: int) -> list[list[Sample]]:
        by_index = {int(choice["index"]): choice for choice in payload.get("choices") or []}
        expected = num_prompts * spec.n
        if sorted(by_index) != list(range(expected)):
            raise EngineError(f"remote engine returned choices {sorted(by_index)}, wanted 0..{expected - 1}")
        total = (payload.get("usage") or {}).get("completion_tokens") if expected == 1 else None
        return [[self._sample(by_index[i * spec.n + j], total) for j in range(spec.n)] for i in range(num_prompts)]

    def _sample(self, choice: Json, total_tokens: int | None) -> Sample:
        text, finish, stop = choice.get("text") or "", _finish(choice), _stop_string(choice)
        if finish == "stop" and stop and not text.endswith(stop):
            text += stop
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens")
        if tokens is not None:
            num_tokens = len(tokens)
        elif total_tokens is not None:
            num_tokens = total_tokens
        else:
            num_tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
            num_tokens += int(finish == "stop" and stop is None)
        logprob = sum(lp for lp in logprobs.get("token_logprobs") or [] if lp is not None) if tokens else None
        return Sample(text, num_tokens, finish, stop, logprob, logprobs=_completion_logprobs(logprobs))


def _finish(choice: Json) -> FinishReason:
    reason = choice.get("finish_reason")
    return "length" if reason == "length" else "abort" if reason == "abort" else "stop"


def _stop_string(choice: Json) -> str | None:
    """The stop string that ended the choice; vLLM says ``stop_reason`` (an int for a stop token), SGLang
    ``matched_stop``."""
    stop = choice.get("stop_reason", choice.get("matched_stop"))
    return stop if isinstance(stop, str) and stop else None


def _message(body: Any) -> str:
    """The message in OpenAI's envelope ``{"error": {"message"}}`` or vLLM's older ``{"message"}``."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error", body)
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


class _Pending:
    """A stream's token logprobs (with the spec's ``logprobs`` set) not yet yielded: a chunk whose text is empty
    (a token that ends mid-character, the finish) hands its tokens to the next delta that is yielded."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.tokens: list[TokenLogprob] = []

    def add(self, tokens: tuple[TokenLogprob, ...] | None) -> None:
        if self.wanted:
            self.tokens.extend(tokens or ())

    def take(self) -> tuple[TokenLogprob, ...] | None:
        """The tokens held so far (None without logprobs asked), and none held after."""
        if not self.wanted:
            return None
        taken, self.tokens = tuple(self.tokens), []
        return taken


def _completion_logprobs(logprobs: Json) -> tuple[TokenLogprob, ...] | None:
    """A /v1/completions choice's ``logprobs`` (tokens, token_logprobs, top_logprobs) as :class:`TokenLogprob`."""
    tokens = logprobs.get("tokens")
    if tokens is None:
        return None
    values = logprobs.get("token_logprobs") or [0.0] * len(tokens)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(token, value or 0.0, tuple(sorted((alts or {}).items(), key=lambda kv: -kv[1])))
        for token, value, alts in zip(tokens, values, tops, strict=False)
    )
