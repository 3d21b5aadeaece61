"""`ponder bench serve` (benchmarks/serve.py, benchmarks/loadgen.py): aggregation, report and plot on synthetic
data; the load generator against the app in-process on the fake engine (request counts, errors, bounded
concurrency); optillm's request and command as read from its source; the command's mistakes. Needs neither vLLM
nor optillm."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.loadgen import Outcome, Target, Workload, aggregate, measure
from benchmarks.serve import (
    build_report,
    markdown,
    optillm_cmd,
    optillm_target,
    ponder_target,
    vllm_target,
    workload_prompts,
    write,
)
from benchmarks.servers import ponder_cmd
from server.app import create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer, tokens

SOLUTION = "3 + 4 = 7\n\n\\boxed{7}"
PROMPTS = ("What is 3 + 4?", "What is 2 + 2?", "What is 5 - 1?")


class Counting(httpx.AsyncBaseTransport):
    """Wraps a transport: counts requests, the most in flight at once, and refuses every ``refuse_every``-th one."""

    def __init__(self, inner: httpx.AsyncBaseTransport, refuse_every: int = 0) -> None:
        self.inner, self.refuse_every = inner, refuse_every
        self.seen = self.now = self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            if self.refuse_every and self.seen % self.refuse_every == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= 1


def ponder_app(engine: FakeEngine | None = None, **config) -> httpx.ASGITransport:
    engine = engine or FakeEngine(lambda prompt, i: SOLUTION)
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm", **config), engine=engine, scorer=FakeScorer()
    )
    return httpx.ASGITransport(app=app)


def best_of_n(n: int = 4) -> Target:
    return ponder_target("http://ponder", "tiny", "best_of_n", n, {}, {})


# ---- aggregation, report, plot on synthetic data ------------------------------------------------------------------
def test_aggregate_percentiles_rates_and_errors():
    outcomes = [Outcome(latency_s=float(i), completion_tokens=10) for i in range(1, 101)]
    outcomes += [Outcome(latency_s=0.5, error="503: busy"), Outcome(latency_s=9.0, error="ConnectError: refused")]
    level = aggregate(outcomes, wall=20.0, concurrency=4)
    assert (level["requests"], level["ok"], level["errors"]) == (102, 100, 2)
    assert level["latency_s"]["p50"] == pytest.approx(50.5) and level["latency_s"]["max"] == 100.0
    assert level["latency_s"]["p95"] == pytest.approx(95.05) and level["latency_s"]["p99"] == pytest.approx(99.01)
    assert level["requests_per_s"] == 5.0 and level["tokens_per_s"] == 50.0 and level["completion_tokens"] == 1000
    assert level["first_errors"] == ["503: busy", "ConnectError: refused"]


def test_aggregate_of_only_errors_has_no_latency():
    level = aggregate([Outcome(1.0, error="500: boom")], wall=1.0, concurrency=1)
    assert level["ok"] == 0 and level["latency_s"]["p50"] is None and level["completion_tokens_mean"] is None


def synthetic_target(scale: float) -> dict:
    levels = [
        aggregate(
            [Outcome(latency_s=scale * c, completion_tokens=64) for _ in range(8)], wall=scale * 8 / c, concurrency=c
        )
        for c in (1, 4, 16)
    ]
    batch = aggregate([Outcome(latency_s=scale, completion_tokens=256)] * 32, wall=scale * 4, concurrency=32)
    return {"url": "http://x", "body": {}, "levels": levels, "batch": batch}


def test_report_markdown_batch_ratio_and_plot(tmp_path):
    targets = {"Ponder best_of_n N=8": synthetic_target(2.0), "vLLM n=8": synthetic_target(1.0)}
    options = {"requests": 8, "max_tokens": 64, "temperature": 0.8, "n": 8, "workload": "arith", "prompts": 3}
    report = build_report(options, targets, "Ponder best_of_n N=8", "vLLM n=8")
    assert report["batch"]["tokens_per_s_ratio"] == pytest.approx(0.5) and report["batch"]["wall_ratio"] == 2.0
    text = markdown(report)
    assert text.count("| Ponder best_of_n N=8 |") == 3 and text.count("| vLLM n=8 |") == 3
    assert "Throughput ratio 0.50, wall-time ratio 2.00" in text
    write(report, tmp_path)
    assert json.loads((tmp_path / "serve.json").read_text())["batch"]["requests"] == 32
    assert (tmp_path / "serve.md").read_text() == text
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_batch_ratio_without_both_sides():
    targets = {"vLLM n=8": synthetic_target(1.0)}
    assert build_report({}, targets, None, "vLLM n=8")["batch"] is None


# ---- the load generator against the app in-process ----------------------------------------------------------------
async def test_levels_send_every_request_within_the_concurrency_bound():
    transport = Counting(ponder_app())
    result = await measure(
        best_of_n(4), Workload(PROMPTS, max_tokens=16), [1, 4], requests=12, warmup=1, batch=6, transport=transport
    )
    assert transport.seen == 1 + 12 + 12 + 6  # warm-up, two levels, the batch
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 4]
    for level in [*result["levels"], result["batch"]]:
        assert level["ok"] == level["requests"] and level["errors"] == 0
        assert level["completion_tokens_mean"] == 4 * tokens(SOLUTION)  # usage counts all N samples
        assert level["peak_in_flight"] <= level["concurrency"]
    assert result["levels"][0]["peak_in_flight"] == 1 and transport.peak <= 6
    assert result["levels"][1]["requests"] == 12 and result["batch"]["requests"] == 6
    assert all(lv["scorer_s_p50"] >= 0 for lv in result["levels"])  # Ponder's reward-model time, from its body
    report = build_report(
        {"requests": 12, "max_tokens": 16, "temperature": 0.8, "n": 4, "workload": "chat", "prompts": 3},
        {"Ponder best_of_n N=4": result},
        None,
        None,
    )
    assert "| reward model s, median |" in markdown(report)


async def test_concurrency_is_bounded_by_the_level_not_the_request_count():
    # the engine answers once three calls wait at once: the level's three workers overlap
    engine = FakeEngine(lambda prompt, i: SOLUTION, gate=asyncio.Event(), open_when=lambda e: e.running >= 3)
    transport = Counting(ponder_app(engine))
    result = await measure(best_of_n(2), Workload(PROMPTS), [3], requests=15, warmup=0, transport=transport)
    assert transport.seen == 15 and 1 < transport.peak <= 3 and result["levels"][0]["peak_in_flight"] <= 3


async def test_transport_errors_and_error_statuses_are_counted():
    transport = Counting(ponder_app(), refuse_every=3)
    result = await measure(best_of_n(2), Workload(PROMPTS), [3], requests=9, warmup=0, transport=transport)
    level = result["levels"][0]
    assert (level["ok"], level["errors"]) == (6, 3) and level["first_errors"][0].startswith("ConnectError")
    result = await measure(
        best_of_n(2), Workload(PROMPTS), [2], requests=4, warmup=0, transport=ponder_app(max_messages=0)
    )  # every request is over the cap: 400s
    level = result["levels"][0]
    assert level["errors"] == 4 and level["ok"] == 0 and level["first_errors"][0].startswith("400: ")


async def test_a_200_without_usage_is_an_error():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"choices": []}))
    result = await measure(vllm_target("http://v", "m", 2), Workload(PROMPTS), [2], 4, 0, transport=transport)
    assert result["levels"][0]["errors"] == 4 and result["levels"][0]["first_errors"] == ["KeyError: 'usage'"]
    ok = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"choices": [], "usage": {"completion_tokens": 3}})
    )
    level = (await measure(vllm_target("http://v", "m", 2), Workload(PROMPTS), [2], 4, 0, transport=ok))["levels"][0]
    assert level["ok"] == 4 and level["scorer_s_p50"] is None  # not Ponder: no reward-model time to report


def test_every_target_sends_the_same_workload():
    workload = Workload(PROMPTS, max_tokens=32, temperature=0.7)
    for target in (best_of_n(8), vllm_target("http://v", "m", 8), optillm_target("http://o", "m", "bon", 8)):
        bodies = [workload.body(target, i) for i in range(4)]
        assert [b["messages"][0]["content"] for b in bodies] == [*PROMPTS, PROMPTS[0]]
        assert all(b["max_tokens"] == 32 and b["temperature"] == 0.7 for b in bodies)
    assert best_of_n(8).body["strategy_params"] == {"num_samples": 8} and vllm_target("u", "m", 8).body["n"] == 8


async def test_the_arith_workload_grades_every_answer():
    from training.tasks import get_task

    problems = get_task("arith").load("test", limit=3, seed=0, level=2)
    prompts, grade = workload_prompts("arith", 3, level=2)
    right = problems[0].solution  # the fake policy solves the first problem and answers -1 to the others

    def answer(prompt: str, i: int) -> str:
        return right if prompts[0] in prompt else "1 + 1 = 2\n\n\\boxed{-1}"

    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm"), engine=FakeEngine(answer), scorer=FakeScorer()
    )
    workload = Workload(prompts, grade=grade)
    result = await measure(best_of_n(2), workload, [2], requests=6, warmup=0, transport=httpx.ASGITransport(app=app))
    level = result["levels"][0]
    assert (level["graded"], level["accuracy"]) == (6, pytest.approx(1 / 3))  # prompts 0, 1, 2, 0, 1, 2
    report = build_report(
        {"requests": 6, "max_tokens": 64, "temperature": 0.8, "n": 2, "workload": "arith", "prompts": 3},
        {"Ponder best_of_n N=2": result},
        None,
        None,
    )
    assert "| accuracy |" in markdown(report) and "| 33.3% (2 / 6) |" in markdown(report)


def test_chat_workload_is_not_graded():
    prompts, grade = workload_prompts("chat", 3)
    assert grade is None and prompts
    level = aggregate([Outcome(1.0, 10)], wall=1.0, concurrency=1)
    assert (level["graded"], level["accuracy"]) == (0, None)
    report = build_report(
        {"requests": 1, "max_tokens": 64, "temperature": 0.8, "n": 2, "workload": "chat", "prompts": 3},
        {"vLLM n=2": {"levels": [level]}},
        None,
        None,
    )
    assert "accuracy" not in markdown(report)


# ---- optillm, as its 0.4.0 source reads -------------------------------------------------------------------------
def test_optillm_requests_and_command():
    bon = optillm_target("http://o", "model", "bon", 8)
    assert bon.body == {"model": "model", "optillm_approach": "bon"}  # no n: it would repeat the whole approach
    assert optillm_target("http://o", "model", "mcts", 8).body["mcts_simulations"] == 8
    cmd = optillm_cmd(".venv-optillm/bin/optillm", "http://127.0.0.1:9000/", 8)
    assert cmd[cmd.index("--base-url") + 1] == "http://127.0.0.1:9000/v1" and cmd[cmd.index("--best-of-n") + 1] == "8"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "{port}" in cmd


def test_several_ponder_strategies_each_with_its_n(monkeypatch, tmp_path):
    import benchmarks.serve as serve

    seen = []

    async def fake_measure(target, workload, levels, requests, warmup, batch=0):
        seen.append((target.name, target.body["strategy_params"]["num_samples"], batch))
        return {"levels": [], **({"batch": {"tokens_per_s": 1.0, "wall_s": 1.0}} if batch else {})}

    monkeypatch.setattr(serve, "served_model", lambda url, headers: "tiny")
    monkeypatch.setattr(serve, "measure", fake_measure)
    args = serve.build_parser().parse_args(
        [
            "--url",
            "http://p",
            "--ponder-strategy",
            "best_of_n,self_consistency:5",
            "--n",
            "8",
            "--output",
            str(tmp_path),
        ]
    )
    serve.validate(args)
    report = serve.run(args)
    assert seen == [("Ponder best_of_n N=8", 8, 32), ("Ponder self_consistency N=5", 5, 0)]
    assert list(report["targets"]) == ["Ponder best_of_n N=8", "Ponder self_consistency N=5"]


def test_spawned_ponder_reads_the_prm_as_told():
    cmd = ponder_cmd("policy", "prm", 0.2, "--api-key", "k", prm_format="likelihood")
    assert cmd[cmd.index("--prm-format") + 1] == "likelihood" and cmd[cmd.index("--prm") + 1] == "prm"
    assert "--prm-format" not in ponder_cmd("policy", "prm", 0.2) and "--prm-format" not in ponder_cmd(
        "policy", None, 0.2, prm_format="likelihood"
    )


# ---- the command's mistakes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no target"),
        (["--url", "http://a", "--spawn-ponder"], "not both"),
        (["--optillm-url", "http://o", "--url", "http://a"], "optillm runs on the vLLM target"),
        (["--vllm-url", "http://v", "--optillm-approaches", "moa"], "unknown optillm approach"),
        (["--spawn-vllm", "--spawn-optillm", "--optillm-cmd", "/nope/optillm"], "install_optillm.sh"),
        (["--url", "http://a", "--concurrency", "0,4"], "--concurrency"),
        (["--url", "http://a", "--n", "0"], "--n"),
        (["--url", "http://a", "--ponder-strategy", "nope"], "unknown strategy 'nope'"),
        (["--spawn-vllm", "--model", "/nope"], "no such checkpoint folder"),
        (["--url", "http://a", "--ponder-params", "[1]"], "JSON object"),
        (["--url", "http://a", "--bogus"], "unrecognized arguments"),
        (["--spawn-ponder", "--no-prm", "--prm-format", "likelihood"], "cannot go with --no-prm"),
        (["--spawn-ponder", "--prm-format", "nope"], "invalid choice: 'nope'"),
        (["--url", "http://a", "--ponder-strategy", "best_of_n,nope:4"], "unknown strategy 'nope'"),
        (["--url", "http://a", "--ponder-strategy", "self_consistency:0"], "at least 1"),
        (["--url", "http://a", "--ponder-strategy", ","], "names no strategy"),
        (["--url", "http://a", "--level", "9"], "--level is an arith level"),
        (["--url", "http://a", "--workload", "chat", "--level", "2"], "--level is an arith level"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert bench_main(["serve", *argv, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder bench serve: error: ") and message in err and err.count("\n") == 1


def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path, capsys):
    assert bench_main(["serve", "--url", "http://127.0.0.1:9", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9: cannot list its models" in err and err.count("\n") == 1


def test_the_optillm_prompt_check_refuses_a_missing_model(tmp_path, capsys):
    from benchmarks.optillm_prompt import main as prompt_main

    assert prompt_main(["--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder bench optillm-prompt: error: ") and err.count("\n") == 1


def test_the_overhead_benchmark_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    from benchmarks.overhead import main

    assert main(["--model", str(tmp_path / "nowhere"), "--prm", str(tmp_path), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "not a model folder" in err and err.count("\n") == 1
