"""The paired comparison of two configurations of one accuracy run, and its command line's refusals."""

from __future__ import annotations

import doctest
import json

import pytest

import benchmarks.paired as paired


def test_doctests():
    failures, tried = doctest.testmod(paired)
    assert tried >= 1 and failures == 0


def write_run(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_seeds_of_a_problem_are_averaged_and_only_shared_problems_count(tmp_path, capsys):
    rows = [
        {"strategy": "dvts", "n": 4, "level": 6, "problem_id": "p1", "seed": 0, "correct": True},
        {"strategy": "dvts", "n": 4, "level": 6, "problem_id": "p1", "seed": 1, "correct": False},
        {"strategy": "dvts", "n": 4, "level": 6, "problem_id": "p2", "seed": 0, "correct": True},
        {"strategy": "dvts", "n": 4, "level": 6, "problem_id": "only-dvts", "seed": 0, "correct": True},
        {"strategy": "best_of_n", "n": 4, "level": 6, "problem_id": "p1", "seed": 0, "correct": False},
        {"strategy": "best_of_n", "n": 4, "level": 6, "problem_id": "p2", "seed": 0, "correct": False},
        {"strategy": "best_of_n", "n": 16, "level": 6, "problem_id": "p1", "seed": 0, "correct": True},
    ]
    row = paired.compare(rows, ("dvts", 4), ("best_of_n", 4))
    assert row["problems"] == 2 and row["difference"] == 0.75  # (0.5 + 1.0) / 2
    assert 0.5 <= row["ci_low"] <= row["ci_high"] <= 1.0
    assert paired.main([str(write_run(tmp_path, rows)), "dvts:4", "best_of_n:4"]) == 0
    assert "dvts N=4 - best_of_n N=4: +75.0% over 2 problems" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dvts", "best_of_n:4"], "a configuration reads STRATEGY:N"),
        (["dvts:4", "mcts:4"], "no problem was answered by both"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    rows = [{"strategy": "dvts", "n": 4, "level": 6, "problem_id": "p1", "correct": True}]
    assert paired.main([str(write_run(tmp_path, rows)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder bench paired: error: ") and message in err and err.count("\n") == 1


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert paired.main([str(tmp_path / "nothing"), "dvts:4", "best_of_n:4"]) == 2
    assert "records.jsonl does not exist" in capsys.readouterr().err


def test_b_can_come_from_another_run_of_the_same_strategy(tmp_path, capsys):
    orm = [{"strategy": "best_of_n", "n": 4, "level": 1, "problem_id": f"p{i}", "correct": i < 3} for i in range(4)]
    prm = [r | {"correct": True} for r in orm]
    a, b = write_run(tmp_path / "prm", prm), write_run(tmp_path / "orm", orm)
    assert paired.main([str(a), "best_of_n:4", "best_of_n:4", "--b-run", str(b)]) == 0
    assert "prm best_of_n N=4 - orm best_of_n N=4: +25.0% over 4 problems" in capsys.readouterr().out
    assert paired.main([str(a), "best_of_n:4", "best_of_n:4", "--b-run", str(tmp_path / "none")]) == 2
    assert "none/records.jsonl does not exist" in capsys.readouterr().err


def test_level_keeps_some_levels_and_tokens_are_compared(tmp_path, capsys):
    rows = [
        {
            "strategy": s,
            "n": 16,
            "level": level,
            "problem_id": f"p{i}",
            "seed": 0,
            "correct": s == "ac" or level == 4,
            "completion_tokens": (100 if s == "ac" else 400) * level,
        }
        for s in ("ac", "sc")
        for level in (4, 6)
        for i in range(3)
    ]
    run = str(write_run(tmp_path, rows))
    assert paired.main([run, "ac:16", "sc:16", "--level", "6"]) == 0
    out = capsys.readouterr().out
    assert "+100.0% over 3 problems" in out and "tokens per problem 600 / 2,400 = 0.25" in out
    assert paired.main([run, "ac:16", "sc:16"]) == 0
    assert "+50.0% over 6 problems" in capsys.readouterr().out
    assert paired.main([run, "ac:16", "sc:16", "--level", "six"]) == 2
    assert "--level takes levels" in capsys.readouterr().err
