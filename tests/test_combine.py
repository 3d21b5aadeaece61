"""``ponder bench combine``: one table and plot from several accuracy runs, and its refusals."""

from __future__ import annotations

import json

import pytest

from benchmarks import combine


def record(strategy: str, n: int, problem: int, correct: bool, tokens: int) -> dict:
    return {
        "dataset": "game24",
        "level": None,
        "strategy": strategy,
        "n": n,
        "seed": 0,
        "problem_id": f"p{problem}",
        "correct": correct,
        "completion_tokens": tokens,
        "engine_calls": 1,
        "latency_s": 0.1,
        "error": None,
    }


def write_run(folder, rows, timings=()):
    folder.mkdir(parents=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "timings.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timings))
    return folder


def test_each_strategy_comes_from_its_own_run_under_its_label(tmp_path, capsys):
    a = write_run(
        tmp_path / "a",
        [record("best_of_n", 4, i, i < 1, 400) for i in range(4)]
        + [record("tree_of_thought", 4, i, False, 2000) for i in range(4)],  # the weaker ToT: left out
    )
    timing = {"dataset": "game24", "level": None, "strategy": "tree_of_thought", "n": 4, "completion_tokens": 9000}
    b = write_run(
        tmp_path / "b",
        [record("tree_of_thought", 4, i, i < 3, 2500) for i in range(4)],
        [timing | {"wall_s": 3.0}],
    )
    out = tmp_path / "all"
    code = combine.main(["--output", str(out), f"{a}:best_of_n", f"{b}:tree_of_thought:ToT (PRM, checked)"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    rows = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"best_of_n", "ToT (PRM, checked)"}
    assert rows["best_of_n"]["accuracy"] == 0.25 and rows["best_of_n"]["completion_tokens_mean"] == 400
    assert rows["ToT (PRM, checked)"]["accuracy"] == 0.75 and rows["ToT (PRM, checked)"]["tokens_per_s"] == 3000
    assert (out / "accuracy.png").stat().st_size > 0
    sources = json.loads((out / "sources.json").read_text())
    assert [s["label"] for s in sources] == ["best_of_n", "ToT (PRM, checked)"] and sources[1]["run"] == str(b)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["{a}:mcts"], "no records of strategy 'mcts'"),
        (["{a}:best_of_n", "{a}:best_of_n"], "two sources are labelled 'best_of_n'"),
        (["{a}"], "expected RUN:STRATEGY"),
        (["{a}/missing:best_of_n"], "no records.jsonl"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, sources, message):
    a = write_run(tmp_path / "a", [record("best_of_n", 4, 0, True, 400)])
    out = tmp_path / "out"
    assert combine.main(["--output", str(out), *(s.format(a=a) for s in sources)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
