"""The Game of 24 search diagnosis: where a tree loses the way to 24, and its command line's refusals."""

from __future__ import annotations

import doctest

import pytest

import benchmarks.game24_lost as lost


def test_doctests():
    failures, tried = doctest.testmod(lost)
    assert tried >= 3 and failures == 0


def test_a_puzzle_lost_after_a_good_state_was_pruned():
    numbers = [4, 6, 1, 1]
    tree = [
        {"parent": None, "text": ""},
        {"parent": 0, "depth": 1, "text": "4 * 6 = 24 (left: 1 1 24)\n\n"},
        {"parent": 0, "depth": 1, "text": "4 + 6 = 10 (left: 1 1 10)\n\n"},
        {"parent": 1, "depth": 2, "text": "1 * 1 = 1 (left: 1 24)\n\n", "pruned": True},
        {"parent": 2, "depth": 2, "text": "1 + 1 = 2 (left: 2 10)\n\n"},
    ]
    by_depth = lost.levels(tree, numbers)
    assert by_depth[1] == {"states": 2, "kept": 2, "good": 1, "good_kept": 1}
    assert by_depth[2] == {"states": 2, "kept": 1, "good": 1, "good_kept": 0}
    assert lost.lost_at(by_depth) == "depth 2, pruned"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/folder"], "--model must be a folder"),
        (["--breadth", "2", "--root-samples", "11"], "root_samples must be between 1 and breadth * samples_per_state"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert lost.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder bench game24-lost: error: ") and message in err and err.count("\n") == 1
