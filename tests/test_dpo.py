"""DPO: the pair builder, the pair sources, a few real TRL steps on a tiny policy through the CLI, the saved folder.

Offline and CPU-only: the pairs come from reference solutions against planted errors (``--source reference``) or
from a ``ponder label`` file, so no vLLM engine starts here.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.tiny_models import save_tiny_policy
from tests.fakes import arith_script, fake_vllm_engines
from training import cli, dpo, soup, step_pairs, tuning
from training.dpo import (
    PolicyDPOConfig,
    collect_rows,
    graded_rows,
    preference_pairs,
    reference_chosen,
    reference_solutions,
)
from training.label import save_rows
from training.tasks import Problem, TaskSpec, get_task
from training.tasks.game24 import make_problem


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer, 64-wide Llama (head_dim 32) with the character tokenizer and chat template."""
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), hidden=64, layers=1, heads=2)


@pytest.mark.parametrize("module", [dpo, step_pairs, tuning, soup])
def test_doctests(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def _row(pid: str, text: str, right: bool, level: int = 1) -> dict:
    return {"problem_id": pid, "prompt": f"question {pid}", "level": level, "completion": text, "outcome": right}


def test_pairs_put_a_right_solution_over_a_wrong_one_of_the_same_problem():
    task = get_task("arith")
    problems = task.load("train", limit=3, level=2)
    wrong = [f"\\boxed{{{int(p.answer) + 1}}}" for p in problems]
    solutions = [[problems[0].solution, wrong[0]], [problems[1].solution], [wrong[2], wrong[2] + " "]]
    rows = graded_rows(task, problems, solutions)
    pairs = preference_pairs(rows, pairs_per_problem=4)
    assert [p["problem_id"] for p in pairs] == [problems[0].id]  # all right / all wrong: no pair
    pair = pairs[0]
    assert pair["prompt"] == [{"role": "user", "content": task.prompt(problems[0])}]
    assert pair["chosen"] == [{"role": "assistant", "content": problems[0].solution}]
    assert pair["rejected"] == [{"role": "assistant", "content": wrong[0]}]
    assert task.grade(problems[0], pair["chosen"][0]["content"])
    assert not task.grade(problems[0], pair["rejected"][0]["content"])


def test_pairs_use_distinct_solutions_first_and_respect_the_cap():
    rows = [_row("a", t, ok) for t, ok in [("r0", True), ("r1", True), ("w0", False), ("w1", False), ("w2", False)]]
    rows += [_row("b", "r0", True), _row("b", "r0", True), _row("b", "w0", False)]  # duplicates count once
    pairs = preference_pairs(rows, pairs_per_problem=2)
    got = [(p["problem_id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert got == [("a", "r0", "w0"), ("a", "r1", "w1"), ("b", "r0", "w0")]
    assert len(preference_pairs(rows, pairs_per_problem=100)) == 2 * 3 + 1  # every right x wrong combination


def test_graded_rows_drop_empty_and_duplicate_solutions():
    task = get_task("arith")
    problem = task.load("train", limit=1, level=1)[0]
    rows = graded_rows(task, [problem], [[problem.solution, problem.solution, "  ", "\\boxed{-7}"]])
    assert [(r["completion"], r["outcome"]) for r in rows] == [(problem.solution, True), ("\\boxed{-7}", False)]
    assert rows[0]["prompt"] == task.prompt(problem) and rows[0]["level"] == 1


def test_reference_source_pairs_every_problem_with_a_planted_error():
    task = get_task("arith")
    problems = task.load("train", limit=6, level=[2, 3])
    pairs = preference_pairs(graded_rows(task, problems, reference_solutions(problems, seed=0)))
    assert len(pairs) == len(problems)


def test_reference_chosen_pairs_the_reference_over_each_wrong_solution_in_order():
    task = get_task("arith")
    problems = task.load("train", limit=3, level=3)
    wrong = [[f"\\boxed{{{int(p.answer) + k}}}" for k in (1, 2)] for p in problems]
    solutions = [[wrong[0][0], problems[0].solution, wrong[0][1]], [problems[1].solution], wrong[2]]
    rows = reference_chosen(graded_rows(task, problems, solutions), problems)
    pairs = preference_pairs(rows, pairs_per_problem=2)
    got = [(p["problem_id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert got == [  # the policy's own right solution is not a chosen one; a problem with no wrong one gives none
        (problems[0].id, problems[0].solution, wrong[0][0]),
        (problems[0].id, problems[0].solution, wrong[0][1]),
        (problems[2].id, problems[2].solution, wrong[2][0]),
        (problems[2].id, problems[2].solution, wrong[2][1]),
    ]
    assert all(task.grade(problems[0], p["chosen"][0]["content"]) for p in pairs[:2])
    assert [p["level"] for p in pairs] == [3] * 4
    bare = [replace(problems[0], solution="")]
    with pytest.raises(ValueError, match="has no reference solution"):
        reference_chosen(graded_rows(task, bare, [wrong[0]]), bare)


def test_pairs_from_a_ponder_label_file(tmp_path, tiny_policy):
    rows = [_row("a", "r", True), _row("a", "w", False), _row("b", "w", False)]
    path = save_rows(
        [{**r, "completions": [r["completion"]], "labels": [r["outcome"]]} for r in rows], tmp_path / "l.jsonl"
    )
    config = PolicyDPOConfig.from_preset(
        "tiny", policy=str(tiny_policy), pairs_from=str(path), output_dir=str(tmp_path)
    )
    read, before = collect_rows(config)
    assert before == {}  # eval_after_training is off in the tiny preset
    pairs = preference_pairs(read)
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("question a", "r", "w")
    ]


def test_dpo_trains_the_policy_and_saves_a_servable_folder(tmp_path, tiny_policy):
    out = tmp_path / "dpo"
    argv = [
        "dpo",
        "--preset",
        "tiny",
        "--policy",
        str(tiny_policy),
        "--output_dir",
        str(out),
        "--save_dtype",
        "float32",
    ]
    assert cli.main(argv) == 0
    initial = load_file(str(tiny_policy / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == initial.keys()
    assert all(not torch.equal(initial[k], saved[k]) for k in initial)  # every tensor moved (no weight decay)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert model(ids).logits.shape[:2] == ids.shape and model.config.use_cache
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"] == 16 and metrics["optimizer_steps"] == 4 and metrics["pairs_per_level"] == {"1": 8, "2": 8}
    assert "rewards/margins" in metrics["last_log"] and metrics["config"]["source"] == "reference"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "ponder train dpo --preset tiny" in card and "Rafailov et al. 2023" in card
    assert not list(out.glob("checkpoint-*"))


def _wrong_at(problem, index: int) -> str:
    """The reference solution with step ``index``'s result off by one (the other steps as in the reference)."""
    steps = get_task("arith").steps(problem.solution)
    head, result = steps[index].rsplit(" ", 1)
    return "\n\n".join([*steps[:index], f"{head} {int(result) + 1}", *steps[index + 1 :]])


def test_step_pairs_put_the_first_wrong_step_against_a_right_one_after_the_same_prefix():
    task = get_task("arith")
    problem = task.load("train", limit=1, level=4)[0]
    steps = task.steps(problem.solution)
    late, early = _wrong_at(problem, 2), _wrong_at(problem, 0)
    pairs = step_pairs.step_pairs(task, problem, [late, late, early], [problem.solution], per_problem=5)
    assert len(pairs) == 2  # the repeated wrong solution gives one pair
    assert pairs[0]["prefix"] == steps[:2] and pairs[0]["chosen"] == steps[2]
    assert pairs[0]["rejected"] == task.steps(late)[2] != steps[2] and pairs[0]["last"] == (False, False)
    assert pairs[1]["prefix"] == [] and pairs[1]["rejected"] == task.steps(early)[0]
    assert len(step_pairs.step_pairs(task, problem, [late, early], [problem.solution], per_problem=1)) == 1
    assert step_pairs.step_pairs(task, problem, [late], [], per_problem=5) == []  # no right step to prefer
    # a right solution that does not share the prefix cannot give the right step
    assert step_pairs.step_pairs(task, problem, [late], [_wrong_at(problem, 1)], per_problem=5) == []
    answer_wrong = "\n\n".join([*steps[:-1], "\\boxed{-12345}"])
    [last] = step_pairs.step_pairs(task, problem, [answer_wrong], [problem.solution], per_problem=5)
    assert last["prefix"] == steps[:-1] and last["last"] == (True, True)


def test_solver_chosen_steps_pair_errors_that_no_right_solution_shares_a_prefix_with():
    task = get_task("game24")
    problem = make_problem("p", [4, 6, 8, 4], random.Random(0), {})
    steps = ["4 + 8 = 12 (left: 4 6 12)", "6 - 4 = 2 (left: 2 12)", "12 * 2 = 24 (left: 24)"]
    wrong_boxed = "\n\n".join([*steps, "\\boxed{4 + 8 + 6 - 4}"])
    assert step_pairs.step_pairs(task, problem, [wrong_boxed], [], per_problem=2) == []  # nothing to prefer
    [pair] = step_pairs.step_pairs(task, problem, [wrong_boxed], [], per_problem=2, solver=True)
    assert pair == {
        "prefix": steps,
        "chosen": "\\boxed{(4 + 8) * (6 - 4)}",
        "rejected": "\\boxed{4 + 8 + 6 - 4}",
        "last": (True, True),
    }
    # a first step that loses 24: the solver's chosen step keeps it, and min_step 1 leaves the error out
    lost = "4 + 4 = 8 (left: 6 8 8)\n\n8 + 8 = 16 (left: 6 16)"
    [early] = step_pairs.step_pairs(task, problem, [lost], [], per_problem=2, solver=True)
    assert early["prefix"] == [] and task.check_steps(problem, early["chosen"]) == [True]
    assert early["last"] == (False, False) and early["chosen"] != "4 + 4 = 8 (left: 6 8 8)"
    assert step_pairs.step_pairs(task, problem, [lost], [], per_problem=2, solver=True, min_step=1) == []
    # every step the solver offers is right, and the steps that end the solution are the boxed ones
    offered = task.next_right_steps(problem, steps[:1])
    assert offered and all(task.check_steps(problem, "\n\n".join([steps[0], s])) == [True, True] for s, _ in offered)
    assert task.next_right_steps(problem, ["4 + 8 = 13"]) == []  # not a right prefix


def test_step_pairs_need_a_step_checker():
    class Unchecked(TaskSpec):  # the base class has no step checker
        name = "unchecked"

    problem = Problem("p", "What is 2 + 2?", "4", "2 + 2 = 4\n\n\\boxed{4}", {})
    with pytest.raises(ValueError, match="no step checker"):
        step_pairs.step_pairs(Unchecked(), problem, ["\\boxed{5}"], [problem.solution], per_problem=1)


def test_step_pairs_are_tokenized_as_the_policy_continues(tiny_policy):
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    pair = {"prefix": ["1 + 2 = 3"], "chosen": "3 * 2 = 6", "rejected": "3 * 2 = 5", "last": (False, True)}
    row = step_pairs.tokenize_pair(tokenizer, "<prompt>", pair, "\n\n")
    decode = tokenizer.decode
    assert decode(row["prompt_ids"]) == "<prompt>1 + 2 = 3\n\n"
    assert decode(row["chosen_ids"]) == "3 * 2 = 6\n\n"
    assert row["rejected_ids"][-1] == tokenizer.eos_token_id and decode(row["rejected_ids"][:-1]) == "3 * 2 = 5"
    token = step_pairs.tokenize_pair(tokenizer, "<prompt>", pair, "\n\n", first_token=True)
    assert decode(token["prompt_ids"]) == "<prompt>1 + 2 = 3\n\n3 * 2 = "  # what both steps share
    assert (decode(token["chosen_ids"]), decode(token["rejected_ids"])) == ("6", "5")


def test_step_dpo_trains_on_pretokenized_pairs(tmp_path, tiny_policy):
    out = tmp_path / "step-dpo"
    argv = ["dpo", "--preset", "tiny", "--policy", str(tiny_policy), "--pair_unit", "step", "--output_dir", str(out)]
    assert cli.main([*argv, "--save_dtype", "float32"]) == 0
    initial = load_file(str(tiny_policy / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(initial[k], saved[k]) for k in initial)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "Step-DPO" and metrics["pairs"] == 16 and metrics["optimizer_steps"] == 4
    assert "Lai et al. 2024" in (out / "README.md").read_text()


def test_gain_table_compares_before_and_after():
    before = {"levels": {"1": {"greedy": 0.5, "num_problems": 4}, "2": {"greedy": 0.25, "num_problems": 4}}}
    after = {
        "split": "test",
        "seed": 0,
        "levels": {"1": {"greedy": 0.75, "num_problems": 4}, "2": before["levels"]["2"]},
    }
    table = tuning.gain_table(before, after)
    assert "| 1 | 4 | 50.0% | 75.0% | +25.0 |" in table and "| mean | | | | +12.5 |" in table
    one = {"split": "test", "seed": 0, "levels": {"0": {"greedy": 0.35, "num_problems": 100}}}
    table = tuning.gain_table({"levels": {"0": {"greedy": 0.34, "num_problems": 100}}}, one)
    assert "| all | 100 | 34.0% | 35.0% | +1.0 |" in table and not any(row.startswith("| mean") for row in table)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["dpo", "--num_samples", "1"], "needs at least 2 solutions per problem"),
        (["dpo", "--pair_unit", "step", "--num_samples", "0"], "needs at least 1 solutions per problem"),
        (["dpo", "--pair_unit", "step", "--pairs_from", "x.jsonl"], "cannot read --pairs_from"),
        (["dpo", "--pair_unit", "token", "--pairs_from", "x.jsonl"], "cannot read --pairs_from"),
        (["dpo", "--greedy_errors", "true", "--source", "reference"], "needs source=policy"),
        (["dpo", "--pairs_per_problem", "0"], "at least 1"),
        (["dpo", "--chosen", "reference", "--pair_unit", "step"], "chosen=reference pairs whole solutions"),
        (["dpo", "--chosen", "reference", "--source", "reference"], "chosen=reference pairs whole solutions"),
        (["dpo", "--chosen", "reference", "--num_samples", "0"], "needs at least 1 solutions per problem"),
        (["dpo", "--chosen", "solver"], "chosen=solver writes right steps: it needs pair_unit step"),
        (["dpo", "--chosen", "solver", "--pair_unit", "step"], "task 'arith' has no step solver"),
        (["dpo", "--min_pair_step", "1"], "min_pair_step is a step index"),
        (["dpo", "--pair_unit", "step", "--min_pair_step", "-1"], "min_pair_step is a step index"),
        (["dpo", "--source", "nope"], "invalid choice: 'nope'"),
        (["dpo", "--levels", "9"], "has no level [9]"),
        (["dpo", "--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(argv, says, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_missing_policy_fails_before_training(tmp_path):
    config = PolicyDPOConfig.from_preset("tiny", policy=str(tmp_path / "none"), output_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no policy checkpoint"):
        dpo.train(config)


def test_policy_samples_and_greedy_accuracy_come_from_one_engine_session(tiny_policy, tmp_path, monkeypatch):
    """``--source policy``: one engine on the SFT policy gives each problem's greedy solution (``greedy_errors``)
    first, then the samples, then the policy's greedy accuracy; the engine is stopped. On a scripted engine that
    solves every problem except the first, and whose third sample of each problem is wrong."""
    task = get_task("arith")
    problems = task.load("train", limit=4, level=1)
    script = arith_script(lambda question, i: question == problems[0].question or i == 2)
    started = fake_vllm_engines(monkeypatch, script)
    config = PolicyDPOConfig.from_preset(
        "tiny",
        source="policy",
        policy=str(tiny_policy),
        output_dir=str(tmp_path),
        num_samples=3,
        eval_after_training=True,
        eval_levels=[1],
        eval_problems_per_level=2,
        eval_kv_cache_gib=0.25,
    )
    solutions, before = asyncio.run(dpo.sample_policy(config, task, problems))
    ((model, kwargs, engine),) = started
    assert model == str(tiny_policy) and kwargs["seed"] == config.seed and kwargs["kv_cache_gib"] == 0.25
    assert engine.shut_down and engine.running == 0
    graded = [[task.grade(p, text) for text in s] for p, s in zip(problems, solutions, strict=True)]
    assert graded == [[False, False, False]] + [[True, True, False]] * 3  # the script's answers, in order
    assert before["levels"]["1"]["num_problems"] == 2 and before["levels"]["1"]["greedy"] == 1.0
    sampled = engine.calls[0][1]
    assert sampled.n == 3 and sampled.temperature == config.temperature

    greedy_config = replace(config, greedy_errors=True, num_samples=1, eval_after_training=False, pair_unit="step")
    first, _ = asyncio.run(dpo.sample_policy(greedy_config, task, problems))
    again, _ = asyncio.run(dpo.sample_policy(replace(greedy_config, num_samples=0), task, problems))
    assert [len(s) for s in first] == [2] * 4 and [len(s) for s in again] == [1] * 4
    assert [s[0] for s in first] == [s[0] for s in again]  # the greedy decode comes first, and is the same
    greedy = started[1][2].calls[0][1]
    assert greedy.temperature == 0.0 and len(started) == 3 and all(e.shut_down for _, _, e in started)


def test_a_soup_averages_the_weights_and_serves_as_its_first_ingredient(tmp_path, tiny_policy):
    """Two copies of the tiny policy, one with its weights doubled: the soup is 1.5x, the rest of the folder the
    first ingredient's; the soup loads as a policy."""
    doubled = tmp_path / "doubled"
    shutil.copytree(tiny_policy, doubled)
    weights = load_file(str(tiny_policy / "model.safetensors"))
    save_file({k: (v.float() * 2).to(v.dtype) for k, v in weights.items()}, str(doubled / "model.safetensors"))
    out = soup.make_soup([tiny_policy, doubled], tmp_path / "soup")
    mixed = load_file(str(out / "model.safetensors"))
    for name, tensor in weights.items():
        assert mixed[name].dtype == tensor.dtype
        assert torch.allclose(mixed[name].float(), tensor.float() * 1.5, rtol=1e-2, atol=1e-3)
    assert AutoModelForCausalLM.from_pretrained(out).config.architectures == ["LlamaForCausalLM"]  # loads as a policy
    assert json.loads((out / "soup.json").read_text())["ingredients"] == [str(tiny_policy), str(doubled)]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: [d / "a"], "needs at least two ingredients"),
        (lambda d: [d / "a", d / "missing"], "has no model.safetensors"),
        (lambda d: [d / "a", d / "other"], "other tensors than the first"),
        (lambda d: [d / "a", d / "wide"], "tensor w is (3,), not (2,)"),
    ],
)
def test_soup_refuses_what_is_not_one_model_in_one_line(tmp_path, capsys, make, says):
    for name, tensors in {
        "a": {"w": torch.ones(2)},
        "other": {"v": torch.ones(2)},
        "wide": {"w": torch.ones(3)},
    }.items():
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    assert soup.main([*map(str, make(tmp_path)), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("soup: error: ") and says in err and err.count("\n") == 1
