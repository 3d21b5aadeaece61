"""Fuzzing the HTTP API in-process: schemathesis against the app's own ``/openapi.json``, a targeted fuzzer of
``strategy_params`` (a free-form object in the schema, so schemathesis alone rarely reaches a strategy's config),
raw bodies that are not JSON objects at all, and the API-key guard.

Checks on every response: no 5xx, a status code the schema documents, the documented content type, a body that
matches the schema, and errors in OpenAI's envelope. The engine and reward model are the scripted fakes behind the
tiny models' real tokenizer, so a few hundred cases take seconds. Generation is derandomized (the same cases every
run: `make test` is reproducible); ``PONDER_FUZZ_RANDOM=1`` explores new ones, ``PONDER_FUZZ_EXAMPLES=N`` sets the
examples per operation, ``PONDER_FUZZ_SKIP_CHECKS=a,b`` looks past known failures. Run with ``-s`` for the counts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections import Counter

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import strategies
from server.app import create_app
from server.config import ServerConfig
from server.tiny_models import build_char_tokenizer
from strategies.errors import EngineError
from tests.fakes import FakeEngine, FakeScorer

SOLUTIONS = ("3 + 4 = 7\n\n\\boxed{7}", "3 + 4 = 8\n\n\\boxed{8}", "Yes, likely.\n\n\\boxed{7}", "hmm\n\n\\boxed{1}")
EXAMPLES = int(os.environ.get("PONDER_FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("PONDER_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
# Small caps keep a fuzzed search (mcts with 10**6 iterations) short on the fake engine, and get hit by the fuzzer.
CONFIG = ServerConfig(
    model_name="tiny",
    reward_model_name="prm",
    max_num_samples=16,
    max_total_tokens=2048,
    max_tree_nodes=256,
    default_max_tokens=64,
    max_messages=8,
    max_body_bytes=64 << 10,
    request_timeout=10.0,
)


class TokenizingEngine(FakeEngine):
    """The scripted engine behind the tiny models' real tokenizer and chat template, so text the tokenizer chokes on
    (a lone surrogate, say) reaches the same code it does in `ponder serve`; it refuses seeds vLLM cannot take."""

    def __init__(self) -> None:
        super().__init__(lambda prompt, i: SOLUTIONS[i % len(SOLUTIONS)], max_model_len=512)
        self.tokenizer = build_char_tokenizer()

    def count_tokens(self, text: str) -> int:  # as server.engine.vllm_engine.encode_prompt counts a prompt
        return len(self.tokenizer.encode(text, add_special_tokens=not text.startswith(self.tokenizer.bos_token)))

    @staticmethod
    def _refuse_as_vllm_does(spec) -> None:
        """vLLM's engine client cannot send a seed outside [-2**63, 2**64 - 1]; VLLMEngine reports it as this."""
        if spec.seed is not None and not -(2**63) <= spec.seed <= 2**64 - 1:
            raise EngineError("the policy engine failed on a request: can't serialize ints < -2**63 or > 2**64 - 1")

    async def generate(self, prompts, spec, request_id):
        self._refuse_as_vllm_does(spec)
        return await super().generate(prompts, spec, request_id)

    async def stream(self, prompt, spec, request_id):
        self._refuse_as_vllm_does(spec)
        async for piece in super().stream(prompt, spec, request_id):
            yield piece


def openai_error_envelope(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, f"error body is not an OpenAI envelope: {response.text[:300]}"
    assert set(body["error"]) == {"message", "type", "param", "code"}, f"error fields: {response.text[:300]}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], response.text[:300]


SKIPPED = os.environ.get("PONDER_FUZZ_SKIP_CHECKS", "").split(",")
CHECKS = [
    check
    for check in (
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        openai_error_envelope,
    )
    if check.__name__ not in SKIPPED
]

app = create_app(CONFIG, engine=TokenizingEngine(), scorer=FakeScorer(default=0.6))
# POST /v1/responses is left out: its request schema (OpenAI's input-item unions) takes the generator a minute to
# build whatever the number of examples; tests/test_responses.py sends it malformed and refused bodies instead.
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/v1/responses", method="POST")
CHAT = schema["/v1/chat/completions"]["POST"]
statuses: Counter[tuple[str, int]] = Counter()  # (operation, status) -> cases


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print(
        f"\nfuzzing: {sum(statuses.values())} cases, {sum(n for (_, s), n in statuses.items() if s >= 500)} 5xx; "
        + ", ".join(f"{op} {s}: {n}" for (op, s), n in sorted(statuses.items()))
    )


def validated(case: schemathesis.Case, label: str = "") -> schemathesis.Response:
    response = case.call()
    statuses[(label + case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    return response


@schema.parametrize()
@FUZZ_SETTINGS
def test_openapi_operations(case: schemathesis.Case) -> None:
    """Every operation the schema lists, with inputs that match it and inputs that do not."""
    validated(case)


# ---- strategy_params: the right names, values of any type and size ------------------------------------------------
def _values(annotation: typing.Any) -> st.SearchStrategy:
    """Values for a config field: mostly of its type, at and beyond its edges; sometimes of another type."""
    wild = st.one_of(
        st.none(),
        st.booleans(),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )
    ints = st.one_of(st.integers(-2, 20), st.sampled_from([2**31, 2**63, 10**6, -(10**6)]))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        typed = st.sampled_from(args)
    elif annotation is bool:
        typed = st.booleans()
    elif annotation is int:
        typed = ints
    elif annotation is float:
        typed = st.one_of(st.floats(-2, 3), st.sampled_from([1e308, -1e308, 5e-324]), ints)
    elif annotation is str:
        typed = st.text(max_size=12)
    elif args:  # X | None
        typed = st.one_of(*[_values(a) for a in args])
    else:
        typed = wild
    return st.one_of(typed, typed, typed, wild)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict:
    spec = draw(st.sampled_from(strategies.available()))
    hints = typing.get_type_hints(spec.config_cls)
    names = draw(
        st.lists(st.sampled_from([f.name for f in dataclasses.fields(spec.config_cls)]), unique=True, max_size=4)
    )
    body: dict = {
        "model": "tiny",
        "strategy": spec.name,
        "strategy_params": {name: draw(_values(hints[name])) for name in names},
        "messages": [{"role": "user", "content": draw(st.text(max_size=40))}],
    }
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 600))
    if draw(st.booleans()):
        body["temperature"] = draw(st.sampled_from([0.0, 0.7, 1.0, 2.0]))
    if draw(st.integers(0, 3)) == 0:
        body["stream"] = True
    if draw(st.integers(0, 5)) == 0:
        body["n"] = draw(st.integers(1, 20))
    if draw(st.integers(0, 5)) == 0:
        body["seed"] = draw(st.sampled_from([0, -1, 2**64, 12345]))
    return body


@FUZZ_SETTINGS
@given(body=chat_bodies())
def test_strategy_params(body: dict) -> None:
    """Every registered strategy with its own parameter names set to odd values: a 200 or a documented 4xx."""
    validated(CHAT.Case(body=body, media_type="application/json"))


# ---- bodies that are not what the schema describes at all ----------------------------------------------------------
HI = b'{"messages": [{"role": "user", "content": "hi"}], '
RAW_BODIES = [
    HI + b'"temperature": NaN}',  # Python's JSON parser accepts NaN and Infinity
    HI + b'"top_p": Infinity}',
    HI + b'"strategy": "best_of_n", "strategy_params": {"temperature": NaN}}',
    HI + b'"strategy": "mcts", "strategy_params": {"exploration": NaN}}',
    HI + b'"strategy": "tree_of_thought", "strategy_params": {"prune_threshold": -Infinity, "search": "dfs"}}',
    HI + b'"max_tokens": 1e400}',
    HI + b'"seed": 99999999999999999999999999999}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate: valid JSON, not encodable text
    HI[:-2],  # truncated
    b'[{"role": "user", "content": "hi"}]',
    b'"hi"',
    b"null",
    b"",
    b"\xff\xfe\x00",
    b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"messages": [' + b", ".join([b'{"role": "user", "content": "hi"}'] * 9) + b"]}",  # above max_messages
    b'{"messages": [{"role": "user", "content": "' + b"x" * (65 << 10) + b'"}]}',  # above max_body_bytes
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=range(len(RAW_BODIES)))
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_raw_bodies(raw: bytes, content_type: str) -> None:
    """NaN and Infinity, a lone surrogate, wrong shapes, broken, deep or oversized JSON: a 200 or a 4xx."""
    validated(CHAT.Case(body=raw, media_type="application/octet-stream", headers={"content-type": content_type}))


# ---- with API keys: none, wrong ones, malformed headers, the right one ---------------------------------------------
KEY = "sk-fuzz-0123456789"
keyed_app = create_app(
    dataclasses.replace(CONFIG, api_keys=("another-key", KEY)), engine=TokenizingEngine(), scorer=FakeScorer()
)
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", keyed_app, headers={"Authorization": f"Bearer {KEY}"})
AUTHORIZATIONS = [
    None,
    f"Bearer {KEY}",
    f"bearer {KEY}",
    "Bearer sk-wrong",
    f"Basic {KEY}",
    "Bearer",
    "Bearer  ",
    f"Bearer {KEY}x",
    f"Bearer {KEY[:-1]}",
    "Bearer \u00e9t\u00e9",
]


@keyed_schema.parametrize()
@keyed_schema.given(authorization=st.sampled_from(AUTHORIZATIONS))
@settings(FUZZ_SETTINGS, max_examples=max(10, EXAMPLES // 5))
def test_api_keys(case: schemathesis.Case, authorization: str | None) -> None:
    """Only a configured key gets past the guard (/health needs none); the 401 is documented, in OpenAI's envelope."""
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if authorization is not None:
        case.headers["Authorization"] = authorization
    response = validated(case, label="keyed ")
    scheme, _, token = (authorization or "").partition(" ")
    refused = not (scheme.lower() == "bearer" and token.strip() == KEY) and case.operation.path != "/health"
    assert (response.status_code == 401) == refused, (authorization, response.status_code, response.text)
