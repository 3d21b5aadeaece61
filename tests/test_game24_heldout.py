"""Game of 24's held-out partition: a fixed hash of the generator's puzzle space that no train draw yields, beside
ToT's 100 test rows (``training/tasks/game24.py``; ``reports/game24-held-out.md``)."""

from __future__ import annotations

from training.tasks import get_task
from training.tasks.game24 import (
    TEST_ROWS,
    file_train_rows,
    generated_puzzles,
    generator_space,
    heldout_puzzles,
    in_heldout,
    puzzle_rows,
)

game24 = get_task("game24")


def test_the_generator_space_and_the_partition_have_pinned_sizes():
    space = generator_space()
    assert len(space) == 9254 and len(set(space)) == 9254
    assert all(max(p) > 13 and max(p) <= 24 and list(p) == sorted(p) for p in space)
    assert len(heldout_puzzles()) == 886  # 9.6% of the space


def test_membership_is_a_fixed_hash_of_the_sorted_numbers():
    held = [(1, 1, 5, 18), (1, 1, 8, 14), (2, 6, 6, 14), (6, 8, 9, 15), (13, 16, 16, 21)]
    kept = [(1, 1, 1, 21), (1, 1, 1, 22), (1, 1, 1, 23)]
    assert all(in_heldout(p) for p in held) and not any(in_heldout(p) for p in kept)
    assert in_heldout((18, 5, 1, 1)) and in_heldout([14, 8, 1, 1])  # any order of the same numbers
    assert not any(in_heldout(p) for p in puzzle_rows())  # 24.csv rows (numbers up to 13) are train or test by row


def test_no_train_draw_yields_a_held_out_or_test_puzzle():
    rows = puzzle_rows()
    test = {rows[r] for r in TEST_ROWS}
    held = set(heldout_puzzles())
    assert len(test) == 100 and not test & held
    file_train = {rows[r] for r in range(len(rows)) if r not in TEST_ROWS}
    assert len(file_train) == file_train_rows() and not file_train & (test | held)
    # What the train split can yield beyond its file rows: the generator, run to exhaustion (seed 42, the DPO runs').
    trainable = set(generator_space()) - held
    for seed in (42,):
        drawn = list(generated_puzzles(seed, set(rows)))
        assert len(drawn) == len(set(drawn)) and set(drawn) <= trainable
        assert len(drawn) >= len(trainable) - 5  # it exhausts the train side (up to a few of the rarest multisets)
    train = game24.load("train", limit=file_train_rows() + 200, seed=3)
    numbers = [tuple(sorted(p.meta["numbers"])) for p in train]
    assert not set(numbers) & (test | held) and len(set(numbers)) == len(numbers)


def test_the_heldout_split_loads_the_partition_deterministically_per_seed():
    first = game24.load("heldout", seed=0)
    assert len(first) == 886 and {tuple(p.meta["numbers"]) for p in first} == set(heldout_puzzles())
    assert game24.load("heldout", limit=5, seed=0) == first[:5]
    other = game24.load("heldout", limit=5, seed=1)
    assert [p.id for p in other] != [p.id for p in first[:5]]  # another seed, another order
    by_id = {p.id: p for p in first}
    assert all(by_id[p.id] == p for p in other)  # the same puzzle has the same reference solution in any order
    assert all(p.meta["source"] == "heldout" for p in first)
    assert all(game24.grade(p, p.solution) for p in first[:50])
