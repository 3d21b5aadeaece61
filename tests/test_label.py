"""Step labels: planted errors, exact labels, Monte Carlo labels (scripted engine; real vLLM on a tiny policy)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from strategies.base import SamplingSpec
from tests.fakes import FakeEngine, arith_script, fake_vllm_engines
from training.label import (
    LabelConfig,
    build_rows,
    exact_rows,
    load_rows,
    main,
    monte_carlo,
    parse_config,
    plant_error,
    save_rows,
    step_prefixes,
    summary,
)
from training.tasks import first_error, get_task

TASK = get_task("arith")


def test_planted_errors_are_caught_at_their_step_and_carried_to_a_wrong_answer() -> None:
    rng = random.Random(0)
    problems = TASK.load("train", limit=120, seed=3)
    for problem in problems:
        assert all(TASK.check_steps(problem, problem.solution))
        wrong = plant_error(problem, rng)
        labels = TASK.check_steps(problem, wrong)
        cut = first_error(labels)
        assert cut >= 0 and not any(labels[cut:]), (problem.question, wrong)
        assert len(TASK.steps(wrong)) == len(labels)


def test_exact_rows_are_trl_stepwise_with_dedup() -> None:
    problem = TASK.load("train", limit=1, level=2)[0]
    wrong = plant_error(problem, random.Random(1))
    rows = exact_rows(TASK, [problem], [[problem.solution, wrong, problem.solution, ""]], dedup=True)
    assert len(rows) == 2  # the duplicate and the empty completion are gone
    right, bad = rows
    assert right["prompt"] == TASK.prompt(problem)
    assert right["completions"] == TASK.steps(problem.solution)
    assert right["labels"] == right["exact_labels"] == [True] * len(right["completions"])
    assert right["outcome"] is True and bad["outcome"] is False
    assert bad["labels"] == TASK.check_steps(problem, wrong) and not all(bad["labels"])
    assert len(exact_rows(TASK, [problem], [[problem.solution] * 3], dedup=False)) == 3


def _rollout_script(good: dict[str, str]):
    """Completes a prefix with the rest of the reference when the prefix is a reference prefix, else garbage."""

    def script(prompt: str, index: int) -> str:
        for prefix, rest in good.items():
            if prompt.endswith(prefix):
                return rest if index % 2 == 0 else "\\boxed{-1}"  # half the rollouts succeed
        return "\\boxed{-1}"

    return script


def test_monte_carlo_labels_one_call_per_round_and_dedup_prefixes() -> None:
    problem = TASK.load("train", limit=1, level=3)[0]
    steps = TASK.steps(problem.solution)
    wrong = plant_error(problem, random.Random(2))
    good = {prefix: "\n\n".join(steps[i + 1 :]) for i, prefix in enumerate(step_prefixes(steps))}
    engine = FakeEngine(_rollout_script(good))
    rows = exact_rows(TASK, [problem], [[problem.solution, wrong]], dedup=True)
    rows.append(dict(rows[0]))  # a duplicate solution: its prefixes are rolled out once
    prompts = {problem.id: "PROMPT "}
    spec = SamplingSpec(temperature=0.8, max_tokens=64, seed=5)
    asyncio.run(monte_carlo(engine, TASK, {problem.id: problem}, prompts, rows, 4, spec, round_size=8))
    assert len(engine.calls) == 1  # one round: one batched engine call
    sent, used = engine.calls[0]
    assert used.n == 4 and used.temperature == 0.8
    assert len(sent) == len(set(sent)) == len(steps) - 1 + len(TASK.steps(wrong)) - 1
    right, bad, _ = rows
    assert right["mc_soft_labels"] == [0.5] * (len(steps) - 1) + [1.0]
    assert right["mc_hard_labels"] == [True] * len(steps)
    cut = first_error(bad["exact_labels"])
    assert bad["mc_hard_labels"][cut:] == [False] * (len(bad["completions"]) - cut)
    assert bad["mc_soft_labels"][-1] == 0.0  # the last step: the solution's own (wrong) outcome
    stats = summary(rows)
    assert stats["solutions"] == 3 and 0 < stats["mc_hard_agrees_with_exact"] <= 1


def test_a_partial_solution_has_its_last_step_rolled_out_too() -> None:
    """A solver path stops before the boxed answer: its last step's Monte Carlo label comes from rollouts after it,
    not from the (missing) answer, so a state that still makes 24 is not marked wrong for being unfinished."""
    game24 = get_task("game24")
    problem = game24.load("test", limit=1)[0]
    path = game24.solver_paths(problem, 1, random.Random(0))[0]
    steps = game24.steps(path)
    assert len(steps) == 3 and "boxed" not in path
    finish = "\\boxed{0}"
    engine = FakeEngine(lambda prompt, i: finish)
    rows = exact_rows(game24, [problem], [[path]], dedup=True)
    spec = SamplingSpec(temperature=0.8, max_tokens=64)
    asyncio.run(monte_carlo(engine, game24, {problem.id: problem}, {problem.id: ""}, rows, 2, spec, 8))
    sent = engine.calls[0][0]
    assert sent == step_prefixes(steps) + [path + "\n\n"]  # every step, the last one included
    assert len(rows[0]["mc_hard_labels"]) == len(steps) == len(rows[0]["exact_labels"])


def test_rounds_split_the_engine_calls() -> None:
    problems = TASK.load("train", limit=3, level=2)
    engine = FakeEngine(lambda prompt, i: "\\boxed{0}")
    rows = exact_rows(TASK, problems, [[p.solution] for p in problems], dedup=True)
    spec = SamplingSpec(temperature=1.0, max_tokens=8, seed=0)
    asyncio.run(monte_carlo(engine, TASK, {p.id: p for p in problems}, {p.id: "" for p in problems}, rows, 2, spec, 2))
    assert len(engine.calls) == 2 and [c[1].seed for c in engine.calls] == [0, 1]


def test_rows_round_trip_through_datasets(tmp_path: Path) -> None:
    problems = TASK.load("train", limit=4, level=1)
    rows = exact_rows(TASK, problems, [[p.solution] for p in problems], dedup=True)
    for target in (tmp_path / "folder", tmp_path / "rows.jsonl"):
        loaded = load_rows(save_rows(rows, target))
        assert loaded[0]["completions"] == rows[0]["completions"] and loaded[0]["labels"] == rows[0]["labels"]
    joined = load_rows(f"{tmp_path / 'folder'},{tmp_path / 'rows.jsonl'}")
    assert len(joined) == 2 * len(rows) and joined[len(rows)]["labels"] == rows[0]["labels"]
    with pytest.raises(FileNotFoundError, match="no label data at"):
        load_rows(f"{tmp_path / 'folder'},{tmp_path / 'missing.jsonl'}")


def test_label_cli_on_reference_solutions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels.jsonl"
    argv = ["--source", "reference", "--num_problems", "12", "--levels", "2", "3", "--output", str(out)]
    assert main(argv) == 0
    rows = load_rows(out)
    assert len(rows) == 12 and set(rows["level"]) == {2, 3}
    assert "wrote 12 labelled solutions" in capsys.readouterr().out


def test_label_config_rejects_mc_labels_without_rollouts() -> None:
    with pytest.raises(ValueError, match="mc_rollouts"):
        LabelConfig(label_source="mc_hard")


def test_monte_carlo_labeller_rolls_out_every_step_prefix(tmp_path: Path, monkeypatch) -> None:
    """Monte Carlo labels from the policy's rollouts, one engine for the run: on a scripted policy whose rollouts
    finish each prefix right twice in three (the third answer is off), every rolled-out step's soft label is 2/3 and
    its hard label true; a finished solution's last step is its own outcome."""
    from server.tiny_models import save_tiny_policy

    policy = save_tiny_policy(tmp_path / "policy", hidden=64, layers=1, heads=2)
    started = fake_vllm_engines(monkeypatch, arith_script(lambda question, i: i == 2))
    config = LabelConfig(
        source="reference",
        policy=str(policy),
        num_problems=6,
        levels=[2, 3],
        mc_rollouts=3,
        label_source="mc_hard",
        round_size=4,
        output=str(tmp_path / "mc"),
    )
    rows = asyncio.run(build_rows(config))
    assert len(rows) == 6
    ((model, kwargs, engine),) = started
    assert model == str(policy) and kwargs["seed"] == config.seed and engine.shut_down
    assert len(engine.calls) == 2 and all(spec.n == 3 for _, spec in engine.calls)  # rounds of 4 and 2 solutions
    assert {False, True} == {row["outcome"] for row in rows}  # planted errors among the reference solutions
    for row in rows:
        soft, hard = row["mc_soft_labels"], row["mc_hard_labels"]
        assert len(soft) == len(hard) == len(row["completions"]) == len(row["exact_labels"])
        assert soft[:-1] == [pytest.approx(2 / 3)] * (len(soft) - 1) and soft[-1] == float(row["outcome"])
        assert hard == [s > 0 for s in soft] and row["labels"] == hard


def test_label_cli_reads_yaml_and_flags_override_it(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    config = tmp_path / "label.yaml"
    config.write_text(f"source: reference\nnum_problems: 50\nlevels: [4]\noutput: {out}\n")
    assert main(["--config", str(config), "--num_problems", "5"]) == 0
    assert len(load_rows(out)) == 5 and set(load_rows(out)["level"]) == {4}


def test_label_cli_says_when_the_policy_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--policy", str(tmp_path / "nothing"), "--output", str(tmp_path / "x")]) == 2
    assert "no policy checkpoint" in capsys.readouterr().err


def test_label_cli_says_when_the_task_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "nope", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("ponder label: error: unknown task 'nope'; known: aime, arith")


def test_label_config_drops_the_arith_levels_for_a_task_without_levels() -> None:
    """game24 has no difficulty levels: the default (arith's 1-6) is dropped rather than refused."""
    assert parse_config(["--task", "game24"]).levels is None
    assert parse_config(["--task", "arith"]).levels == [1, 2, 3, 4, 5, 6]


def test_eval_labels_compares_monte_carlo_with_exact_labels(tmp_path: Path, capsys) -> None:
    from training.evaluate import main as eval_main

    rows = [
        {
            "prompt": "q1",
            "completions": ["a", "b"],
            "labels": [True, False],
            "outcome": False,
            "exact_labels": [True, False],
            "mc_hard_labels": [True, False],
            "mc_soft_labels": [0.75, 0.0],
        },
        {
            "prompt": "q2",
            "completions": ["c", "d"],
            "labels": [True, True],
            "outcome": True,
            "exact_labels": [True, True],
            "mc_hard_labels": [False, False],
            "mc_soft_labels": [0.0, 0.25],
        },
    ]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert eval_main(["labels", "--data", str(data), "--output", str(tmp_path / "out.json")]) == 0
    got = json.loads((tmp_path / "out.json").read_text())
    assert got == json.loads(capsys.readouterr().out)
    assert (got["solutions"], got["steps"], got["mc_hard_agrees_with_exact"]) == (2, 4, 0.5)
    assert (got["mc_hard_precision"], got["mc_hard_recall"]) == (pytest.approx(1 / 3), 1.0)
    assert got["mc_first_error_matches_exact"] == 0.5
    assert got["mc_soft_mean_exact_right"] == pytest.approx((0.75 + 0.0 + 0.25) / 3)
    assert got["mc_soft_mean_exact_wrong"] == 0.0
    assert eval_main(["labels", "--data", str(tmp_path / "missing")]) == 2


def test_solver_paths_label_game24_states_with_no_engine(tmp_path: Path) -> None:
    """``--source solver``: partial solutions from every first step, labelled exactly: a step is right when 24 is
    still in reach after it (the results are always right), and both kinds are there at every depth."""
    from fractions import Fraction

    from strategies.game24_rules import numbers_in
    from training.tasks.game24 import reachable

    out = tmp_path / "solver.jsonl"
    argv = ["--task", "game24", "--source", "solver", "--num_problems", "20", "--paths_per_problem", "5"]
    assert main([*argv, "--output", str(out)]) == 0
    rows = load_rows(out)
    assert len(rows) == 100 and len(set(rows["problem_id"])) == 20
    for row in rows:
        assert len(row["completions"]) == 3 and row["labels"] == row["exact_labels"]
        lefts = [[Fraction(x) for x in step.split("(left: ")[1].rstrip(")").split()] for step in row["completions"]]
        expected = [all(reachable(left) for left in lefts[: d + 1]) for d in range(3)]
        assert row["labels"] == expected and numbers_in(row["prompt"])
    for depth in range(3):
        assert {row["labels"][depth] for row in rows} == {True, False}


def test_solver_source_needs_a_task_with_a_solver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "arith", "--source", "solver", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == "ponder label: error: task 'arith' has no solver paths (--source solver: game24)\n"
