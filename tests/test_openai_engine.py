"""OpenAIEngine against a scripted fake completions server (``httpx.MockTransport``) and a tiny in-process
tokenizer: the JSON sent, the choice-to-prompt mapping, kept stop strings, streaming, abort and errors."""

from __future__ import annotations

import asyncio
import json
import socket
import string
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from server.engine.openai_engine import OpenAIEngine
from strategies.base import Engine, Sample, SamplingSpec
from strategies.errors import EngineError, EngineUnavailableError

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, and a BOS token ``<s>``. Built in-process: no downloads."""
    vocab = {c: i for i, c in enumerate(["[UNK]", "<s>", *string.printable])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(["<s>"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")


async def unused(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no request expected")


def make_engine(handler: Handler, **kwargs: object) -> tuple[OpenAIEngine, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return await handler(request)

    engine = OpenAIEngine(
        "http://remote:8000/v1", "policy", tiny_tokenizer(), transport=httpx.MockTransport(record), **kwargs
    )
    return engine, sent


def choice(index: int, text: str, finish: str = "stop", stop: str | int | None = None) -> dict[str, object]:
    return {"index": index, "text": text, "finish_reason": finish, "stop_reason": stop, "logprobs": None}


def test_satisfies_the_engine_protocol() -> None:
    engine, _ = make_engine(unused)
    assert isinstance(engine, Engine)
    assert engine.model_name == "policy" and engine.max_model_len == 4096
    assert engine.count_tokens("step one\n\n") == 1 + 10  # BOS added, as the remote will
    assert engine.count_tokens("<s>step one\n\n") == 1 + 10  # the template has it already


async def test_generate_sends_one_request_and_maps_choices_back_to_prompts() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        # Out of order on purpose; vLLM's index is prompt * n + sample.
        choices = [
            choice(3, "B1 two", "length"),
            choice(0, "A0 step", stop="\n\n"),
            choice(2, "B0 one", stop=7),
            choice(1, "A1 three \n\n", stop="\n\n"),
        ]
        return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 99}})

    engine, sent = make_engine(handler, api_key="sk-test")
    spec = SamplingSpec(n=2, temperature=0.7, top_p=0.9, max_tokens=32, stop=("\n\n",), seed=5)
    result = await engine.generate(["prompt A", "prompt B"], spec, "req-1")

    assert len(sent) == 1
    assert sent[0].url == "http://remote:8000/v1/completions"
    assert sent[0].headers["authorization"] == "Bearer sk-test"
    assert json.loads(sent[0].content) == {
        "model": "policy",
        "prompt": ["prompt A", "prompt B"],
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "include_stop_str_in_output": True,
        "stop": ["\n\n"],
        "seed": 5,
    }
    assert [[s.text for s in row] for row in result] == [
        ["A0 step\n\n", "A1 three \n\n"],
        ["B0 one", "B1 two"],
    ]
    a0, a1 = result[0]
    b0, b1 = result[1]
    assert (a0.finish_reason, a0.stop_reason) == ("stop", "\n\n")  # stop string appended, not doubled in a1
    assert (b0.finish_reason, b0.stop_reason) == ("stop", None)  # stop token id: nothing to append
    assert b1.finish_reason == "length"
    # Several samples: re-tokenized (one token per character here), plus one for the stop token b0 ended on,
    # which vLLM counts but does not print.
    assert [a0.num_tokens, a1.num_tokens, b0.num_tokens, b1.num_tokens] == [9, 11, 6 + 1, 6]
    assert engine.num_running() == 0


async def test_token_counts_from_usage_for_one_sample_and_from_logprobs() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        c = choice(0, "the answer is 4")
        if body.get("logprobs") is not None:
            c["logprobs"] = {
                "tokens": ["the", " answer", " is", " 4", "</s>"],
                "token_logprobs": [-0.5, -0.25, -0.25, -1.0, 0.0],
            }
        return httpx.Response(200, json={"choices": [c], "usage": {"completion_tokens": 6}})

    engine, sent = make_engine(handler)
    [[single]] = await engine.generate(["q"], SamplingSpec(), "r")
    assert single.num_tokens == 6 and single.cumulative_logprob is None  # usage.completion_tokens
    [[with_logprobs]] = await engine.generate(["q"], SamplingSpec(logprobs=0), "r")
    assert with_logprobs.num_tokens == 5 and with_logprobs.cumulative_logprob == -2.0
    assert json.loads(sent[1].content)["logprobs"] == 0


async def test_stream_yields_deltas_that_reassemble_with_the_stop_string() -> None:
    chunks = [
        {"choices": [{"index": 0, "text": t, "finish_reason": None}], "usage": {"completion_tokens": k}}
        for k, t in enumerate(["step", " one", ""], start=1)
    ]
    chunks[-1]["choices"][0] |= {"finish_reason": "stop", "stop_reason": "\n\n"}  # type: ignore[index]
    chunks.append({"choices": [], "usage": {"completion_tokens": 4}})
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    engine, sent = make_engine(handler)
    deltas = [s async for s in engine.stream("p", SamplingSpec(stop=("\n\n",)), "r")]
    body = json.loads(sent[0].content)
    assert body["stream"] is True and body["n"] == 1 and body["prompt"] == ["p"]
    assert "".join(d.text for d in deltas) == "step one\n\n"
    assert [d.num_tokens for d in deltas] == [1, 2, 4]
    assert [d.finish_reason for d in deltas] == [None, None, "stop"]
    assert deltas[-1] == Sample("\n\n", 4, "stop", "\n\n")
    assert engine.num_running() == 0


async def test_stream_yields_each_deltas_logprobs_with_the_top_alternatives() -> None:
    def piece(text: str, tokens: list[tuple[str, float, dict[str, float]]]) -> dict[str, object]:
        logprobs = {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens],
        }
        return {"choices": [{"index": 0, "text": text, "finish_reason": None, "logprobs": logprobs}]}

    chunks = [
        piece("7", [("7", -0.5, {"7": -0.5, "8": -2.0})]),
        piece("", [("bytes:\\xe2", -0.1, {"bytes:\\xe2": -0.1, "x": -3.0})]),  # a token that ends mid-character
        piece("\u2192!", [("\u2192", -0.2, {"y": -4.0, "\u2192": -0.2}), ("!", -1.5, {"!": -1.5, "?": -1.0})]),
        piece("", [("", -0.3, {"": -0.3, ".": -1.2})]),  # EOS: no text
    ]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"  # type: ignore[index]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    engine, sent = make_engine(handler)
    deltas = [s async for s in engine.stream("p", SamplingSpec(logprobs=2), "r")]
    assert json.loads(sent[0].content)["logprobs"] == 2
    assert [d.text for d in deltas] == ["7", "\u2192!", ""]
    assert [d.num_tokens for d in deltas] == [1, 4, 5]  # no usage stats: one per logprob token
    assert [[t.token for t in d.logprobs or ()] for d in deltas] == [["7"], ["bytes:\\xe2", "\u2192", "!"], [""]]
    assert deltas[1].logprobs[2].logprob == -1.5 and deltas[1].logprobs[2].top == (("?", -1.0), ("!", -1.5))
    assert deltas[0].logprobs[0].top == (("7", -0.5), ("8", -2.0))  # most likely first
    assert deltas[2].finish_reason == "stop" and deltas[2].logprobs[0].top == (("", -0.3), (".", -1.2))
    without = [s async for s in engine.stream("p", SamplingSpec(), "r")]
    assert all(d.logprobs is None for d in without)  # none asked: none yielded


def hanging_handler(started: asyncio.Event, closed: asyncio.Event) -> Handler:
    """A remote that never answers, and notices when its request is dropped."""

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            closed.set()
        raise AssertionError("unreachable")

    return handler


async def test_abort_closes_the_request_and_returns_aborted_samples() -> None:
    started, closed = asyncio.Event(), asyncio.Event()
    engine, _ = make_engine(hanging_handler(started, closed))
    call = asyncio.create_task(engine.generate(["a", "b"], SamplingSpec(n=2), "req-7/beam-0"))
    await started.wait()
    assert engine.num_running() == 1
    await engine.abort("req-7")  # a prefix of the id
    result = await call
    assert closed.is_set() and engine.num_running() == 0
    assert [[s.finish_reason for s in row] for row in result] == [["abort", "abort"], ["abort", "abort"]]


async def test_cancelling_the_caller_closes_the_request() -> None:
    started, closed = asyncio.Event(), asyncio.Event()
    engine, _ = make_engine(hanging_handler(started, closed))
    call = asyncio.create_task(engine.generate(["a"], SamplingSpec(), "req-8"))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(closed.wait(), 30)  # the remote saw its request dropped
    assert engine.num_running() == 0


async def test_abort_ends_a_stream() -> None:
    started, closed = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"index": 0, "text": "step", "finish_reason": null}]}\n\n'
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    engine, _ = make_engine(handler)
    stream = engine.stream("p", SamplingSpec(), "req-9")
    first = await anext(stream)
    await started.wait()
    await engine.abort("req-9")
    rest = [s async for s in stream]
    assert first == Sample("step", 1, None) and rest == [Sample("", 1, "abort")]
    assert closed.is_set() and engine.num_running() == 0


@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (400, {"error": {"message": "max_tokens is too large", "type": "BadRequestError"}}, "too large"),
        (500, {"object": "error", "message": "engine dead", "code": 500}, "engine dead"),
        (502, "upstream gone", "upstream gone"),
    ],
)
async def test_remote_errors_become_engine_errors(status: int, payload: object, message: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(payload, str):
            return httpx.Response(status, text=payload)
        return httpx.Response(status, json=payload)

    engine, _ = make_engine(handler)
    with pytest.raises(EngineError, match=message) as info:
        await engine.generate(["a"], SamplingSpec(), "r")
    assert not isinstance(info.value, EngineUnavailableError) and str(status) in str(info.value)
    with pytest.raises(EngineError, match=message):
        [s async for s in engine.stream("a", SamplingSpec(), "r")]
    assert engine.healthy() and engine.num_running() == 0


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "policy", tiny_tokenizer(), timeout=5.0)
    assert engine.healthy()
    with pytest.raises(EngineUnavailableError, match="cannot reach"):
        await engine.generate(["a"], SamplingSpec(), "r")
    assert not engine.healthy() and engine.num_running() == 0
    await engine.shutdown()


async def test_bos_is_not_doubled_and_max_tokens_fits_the_context() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [choice(0, "x")], "usage": {"completion_tokens": 1}})

    engine, sent = make_engine(handler, max_model_len=10)
    await engine.generate(["<s>hello"], SamplingSpec(max_tokens=32), "r")  # 6 prompt tokens
    await engine.generate(["hi"], SamplingSpec(max_tokens=3), "r")  # the remote adds BOS: 3 prompt tokens
    first, second = (json.loads(request.content) for request in sent)
    assert first["add_special_tokens"] is False and first["max_tokens"] == 4
    assert "add_special_tokens" not in second and second["max_tokens"] == 3
    with pytest.raises(ValueError, match="context"):
        await engine.generate(["<s>123456789"], SamplingSpec(), "r")
    with pytest.raises(ValueError, match="one sample"):
        await anext(engine.stream("p", SamplingSpec(n=2), "r"))
    assert len(sent) == 2


async def test_the_requests_options_and_logprobs_cross_the_wire_as_vllms_fields() -> None:
    from vllm.sampling_params import StructuredOutputsParams

    async def handler(request: httpx.Request) -> httpx.Response:
        logprobs = {
            "tokens": ["7", "!"],
            "token_logprobs": [-0.5, -1.5],
            "top_logprobs": [{"7": -0.5, "8": -2.0}, {"!": -1.5, "?": -1.0}],
            "text_offset": [0, 1],
        }
        return httpx.Response(200, json={"choices": [choice(0, "7!") | {"logprobs": logprobs}]})

    engine, sent = make_engine(handler)
    options = {
        "top_k": 20,
        "logit_bias": {"7": 1.0},
        "structured_outputs": StructuredOutputsParams(regex="[0-9]!"),
        "extra_args": {"tag": "x"},
    }
    spec = SamplingSpec(max_tokens=4, logprobs=2, options=options)
    ((sample,),) = await engine.generate(["p"], spec, "req")
    body = json.loads(sent[0].content)
    assert body["top_k"] == 20 and body["logit_bias"] == {"7": 1.0}
    assert body["structured_outputs"] == {"regex": "[0-9]!"} and body["vllm_xargs"] == {"tag": "x"}
    assert body["logprobs"] == 2
    assert [(t.token, t.logprob) for t in sample.logprobs] == [("7", -0.5), ("!", -1.5)]
    assert sample.logprobs[1].top == (("?", -1.0), ("!", -1.5))  # most likely first


async def test_score_text_reads_the_answers_tokens_back_with_echo() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["echo"] is True and body["max_tokens"] == 1 and body["prompt"] == "Q: A"
        logprobs = {
            "tokens": ["Q", ":", " ", "A", "."],
            "token_logprobs": [None, -0.1, -0.2, -0.3, -0.4],
            "top_logprobs": [None, {":": -0.1}, {" ": -0.2}, {"A": -0.3}, {".": -0.4}],
            "text_offset": [0, 1, 2, 3, 4],
        }
        return httpx.Response(200, json={"choices": [choice(0, "Q: A.") | {"logprobs": logprobs}]})

    engine, _ = make_engine(handler)
    tokens = await engine.score_text("Q: ", "A", 1)
    assert [(t.token, t.logprob, t.top) for t in tokens] == [("A", -0.3, (("A", -0.3),))]
