"""Every cell of docs/api.md's conformance table: each row's example, sent with a strategy of each column (the
column's strategies take turns down the rows, so every strategy is in many rows).

A cell that starts with 400 must be refused with a 400; any other cell must be served, and a row's sampling fields
must reach every engine call the strategy makes. The engine is the scripted one, rendering with the real Qwen3
tokenizer and chat template so that vLLM's ``qwen3`` reasoning and ``hermes`` tool parsers run on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.config import ServerConfig
from server.request_fields import PASSED
from tests.fakes import FakeEngine, FakeScorer
from tests.qwen3 import load_qwen3_tokenizer

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
COLUMNS = (  # the table's strategy columns, in order
    ("none",),
    ("best_of_n", "weighted_best_of_n", "self_consistency"),
    ("beam_search", "dvts", "mcts"),
    ("tree_of_thought",),
)
QUICK = {  # small settings, so that every search finishes in a few engine calls
    "beam_search": {"num_samples": 2, "beam_width": 1, "max_depth": 2},
    "dvts": {"num_samples": 2, "beam_width": 1, "max_depth": 2},
    "mcts": {"num_samples": 2, "num_iterations": 2},
    "tree_of_thought": {"num_samples": 1, "samples_per_state": 2, "max_depth": 2, "value_votes": 1},
    "best_of_n": {"num_samples": 2},
    "weighted_best_of_n": {"num_samples": 2},
    "self_consistency": {"num_samples": 2},
}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def table() -> list[tuple[str, dict, list[str]]]:
    """The rows between the conformance markers: (field, example body, one cell per column)."""
    text = API_DOC.read_text()
    body = text[text.index("<!-- conformance:start -->") : text.index("<!-- conformance:end -->")]
    rows = []
    for line in body.splitlines()[3:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        field, example, *columns = cells
        rows.append((field, json.loads(example.strip("`").replace("[...]", json.dumps([TOOL]))), columns))
    return rows


ROWS = table()
CASES = [  # every cell, each with one strategy of its column in turn (row i takes the column's (i mod k)-th)
    pytest.param(field, example, group[i % len(group)], cell, id=f"{field[:40]}-{group[i % len(group)]}")
    for i, (field, example, cells) in enumerate(ROWS)
    for group, cell in zip(COLUMNS, cells, strict=True)
]


def test_the_table_has_a_cell_for_every_column_and_names_every_passed_field():
    assert ROWS and all(len(cells) == len(COLUMNS) for _, _, cells in ROWS)
    named = " ".join(field for field, _, _ in ROWS)
    assert all(f"`{name}`" in named for name in PASSED)


@pytest.fixture(scope="module")
def tokenizer():
    from vllm.tokenizers.hf import get_cached_tokenizer

    return get_cached_tokenizer(load_qwen3_tokenizer())  # as vLLM's engine hands it out: its vocabulary cached


@pytest.mark.parametrize("field,example,strategy,cell", CASES)
async def test_every_cell(tokenizer, field, example, strategy, cell):
    engine = FakeEngine(lambda prompt, i: "3 + 4 = 7\n\n\\boxed{7}", tokenizer=tokenizer, reasoning_parser="qwen3")
    config = ServerConfig(
        model_name="tiny",
        reward_model_name="prm",
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
        trust_request_chat_template=True,
    )
    app = create_app(config, engine=engine, scorer=FakeScorer(default=0.5))
    body = {
        "messages": [{"role": "user", "content": "What is 3 + 4?"}],
        "max_tokens": 16,
        "strategy": strategy,
        "strategy_params": QUICK.get(strategy, {}) | example.pop("strategy_params", {}),
    } | example
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:
        r = await client.post("/v1/chat/completions", json=body)
    if cell.startswith("400"):
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"]
        return
    assert r.status_code == 200, r.text
    passed = {
        ("extra_args" if k == "vllm_xargs" else k): v for k, v in example.items() if k in PASSED or k == "vllm_xargs"
    }
    for _, spec in engine.calls:
        assert passed.items() <= dict(spec.options).items()
