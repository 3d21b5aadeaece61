"""The shipped Game of 24 policy (``models/game24-policy``) on the vLLM engine: Tree of Thoughts' value prompt and
the search it guides.

Train-split puzzles only: the test split (rows 900-999) is what the README measures, never what a test tunes on.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

import strategies
from server.accounting import CountingEngine, Ledger
from strategies.base import SamplingSpec, Task
from strategies.search import VALUE_TOKENS, self_value, value_query
from training.evaluate_policy import chat_prompt
from training.tasks import get_task
from training.tasks.game24 import file_train_rows

GAME24_POLICY = Path(__file__).resolve().parents[1] / "models" / "game24-policy"
game24 = get_task("game24")


@pytest.fixture(scope="module")  # on the session loop (pyproject)
async def policy():
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(str(GAME24_POLICY), kv_cache_gib=0.5, dtype="float32", seed=0)
    yield engine
    await engine.shutdown()


def task_for(engine, problem, request_id: str) -> Task:
    prompt = chat_prompt(engine.tokenizer, game24, problem)
    return Task(
        prompt=prompt,
        question=game24.prompt(problem),
        max_tokens=game24.max_tokens,
        temperature=None,
        top_p=1.0,
        request_id=request_id,
    )


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_its_verdicts_agree_with_the_solver(policy) -> None:
    """Partial solutions of generated puzzles (numbers up to 24), half of them dead ends or slips: the greedy verdict
    to the value prompt that ``tree_of_thought`` and ``mcts`` send is the solver's for most (18 of 24 for the shipped
    policy; a coin would get 12)."""
    problems = game24.load("train", limit=file_train_rows() + 12, seed=7)[-12:]  # past the file rows: generated puzzles
    assert all(p.meta["source"] == "generated" for p in problems)
    rng = random.Random(0)
    cases = [(p, *game24.value_example(p, rng)) for p in problems for _ in range(2)]
    prompts = [value_query(chat_prompt(policy.tokenizer, game24, p), partial) for p, partial, _ in cases]
    outputs = await policy.generate(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=VALUE_TOKENS), "verdicts")
    verdicts = [self_value([samples[0].text])[1] for samples in outputs]
    assert all(len(v) == 1 for v in verdicts)  # one of sure / likely / impossible, every time
    agree = sum(("sure" in v) == sure for v, (_, _, sure) in zip(verdicts, cases, strict=True))
    assert {sure for *_, sure in cases} == {True, False} and agree >= 16, f"{agree} of 24 verdicts agree"


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_tree_of_thought_solves_puzzles_with_its_own_verdicts_and_the_final_check(policy) -> None:
    """ToT's BFS (b = 5, k = 5) valued by the policy's verdicts on 16 train puzzles: two engine calls per level, and
    answers that grade. On its verdicts alone it solves 3-6 of them (engine seeds 0-5 on this machine); with ToT's
    final check (``final_check: "game24"``) 9-12. The thresholds sit far below both, because sampling differs from one
    CPU to another. The 32 searches run at once, as a server's concurrent requests do."""
    problems = game24.load("train", limit=16, seed=3)
    spec = strategies.get("tree_of_thought")

    async def solve(check: str | None, k: int) -> bool:
        task = task_for(policy, problems[k], f"tot-{check}-{k}")
        ledger = Ledger(token_budget=20_000)
        config = spec.config_cls(value_source="self", return_trace=True, final_check=check)
        result = await spec.fn(task, config, CountingEngine(policy, ledger, task.request_id), None)
        levels = len(result.extra["rounds"])
        assert 3 <= levels <= 5 and ledger.engine_calls == 2 * levels  # the steps, then the verdicts
        return game24.grade(problems[k], result.choices[0].text)

    runs = [(check, k) for check in (None, "game24") for k in range(len(problems))]
    found = await asyncio.gather(*(solve(check, k) for check, k in runs))
    solved = {None: 0, "game24": 0}
    for (check, _), right in zip(runs, found, strict=True):
        solved[check] += right
    assert solved[None] >= 1 and solved["game24"] >= 6, f"solved of 16: {solved}"


GAME24_PRM = GAME24_POLICY.parent / "game24-prm"


def test_the_game24_prm_ranks_states_that_keep_24_in_reach_first() -> None:
    """The shipped Game of 24 PRM (``make game24-prm``) on solver paths of generated puzzles (numbers up to 24, none
    in ToT's file, another seed than its training rows): at each depth, how well its step score separates states
    that can still make 24 from those that cannot. Measured: 0.655 / 0.831 / 0.981 at depths 1 / 2 / 3 (60 puzzles,
    4 paths each). Three numbers left is the hard depth, where Tree of Thoughts' value matters most."""
    from benchmarks.game24_value import depth_aurocs, solver_states
    from reward_models.torch_prm import load_reward_model, score_steps

    model, tokenizer = load_reward_model(GAME24_PRM)
    _, items, labels = solver_states(puzzles=60, paths=4, seed=7)
    found = [round(a, 3) for a in depth_aurocs(score_steps(model, tokenizer, items), labels)]
    assert found[0] >= 0.6 and found[1] >= 0.8 and found[2] >= 0.9, found


def test_the_value_benchmark_refuses_what_is_not_a_model(tmp_path: Path, capsys) -> None:
    from benchmarks.game24_value import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(GAME24_PRM), "--puzzles", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "--puzzles" in err and "Traceback" not in err
