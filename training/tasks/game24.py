r"""``game24``: the Game of 24 (Yao et al. 2023, "Tree of Thoughts"), with a solver that labels every step.

Combine four numbers with + - * / into 24, each number used once. A solution is three steps in the
Tree-of-Thoughts format, then the whole expression, boxed::

    4 + 8 = 12 (left: 4 6 12)\n\n6 - 4 = 2 (left: 2 12)\n\n12 * 2 = 24 (left: 24)\n\n\boxed{(4 + 8) * (6 - 4)}

Grading (:meth:`Game24.grade`): a boxed expression is judged as the ToT paper judges its answer line (it uses
exactly the puzzle's numbers and equals 24); without one, the steps are: each combines two available numbers with
right arithmetic, and they end at 24. Step labels (:meth:`Game24.check_steps`): a step is right when its arithmetic
is right, it uses numbers still available, its ``(left: ...)`` list (optional) is the true remainder, and the
remainder can still reach 24 (the solver says so); the boxed answer step is right when it is a valid expression.
Arithmetic is exact (fractions: some puzzles need them, e.g. ``1 3 4 6``); a fraction is written ``3/4``.

Puzzles: ``tot/data/24/24.csv`` of the ``tree-of-thoughts-llm`` package (1,362 puzzles: every solvable one with
numbers 1..13), read through ``importlib.resources``. The test split is data rows 900-999 (0-based, ranks 901-1000),
as ToT's ``run.py`` takes ``data[900:1000]``: it never enters train. Train is the other 1,262 rows in a seeded
order, then generated puzzles (numbers 1..24, at least one above 13, so none is in the file; solvable; distinct).
Reference solutions prefer non-negative integer intermediate values and are drawn at random among the solver's
choices with a per-puzzle seed.

Held out (split ``heldout``): the generator's space (:func:`generator_space`: 9,254 puzzles) is cut by a fixed hash
of each puzzle's sorted numbers (:func:`in_heldout`: SHA-256, about 10%), and the 886 puzzles on the held-out side are
never drawn for train, so nothing that trains from the train split (SFT, DPO pairs, GRPO prompts, labels) sees them.
The partition came after ``models/game24-policy`` and ``models/game24-prm``, whose SFT stages drew 9,225 of the
9,254 generated puzzles: for those two models only the 100 test rows are held out (``reports/game24-held-out.md``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import cache, lru_cache
from importlib import resources
from typing import TypeVar

from strategies.answers import last_boxed
from strategies.game24_rules import TARGET, combine, expression_solves, numbers_in
from training.tasks.base import Problem, TaskSpec, register

T = TypeVar("T")
TEST_ROWS = range(900, 1000)  # ToT's test split: data rows 900-999 of 24.csv, never trained or tuned on
DEFAULT_TRAIN_SIZE = 4_000  # 1,262 file rows + generated puzzles
GENERATED_MAX = 24  # generated puzzles draw numbers from 1..GENERATED_MAX
FILE_MAX = 13  # 24.csv holds every solvable puzzle of numbers 1..FILE_MAX; a generated one has a number above it
HELDOUT_PERCENT = 10  # the share of the generator's space, by hash, that no train draw yields (split "heldout")
INSTRUCTION = "Steps: a op b = c (left: numbers left), a blank line apart; the final expression in \\boxed{}."

State = tuple[Fraction, ...]  # the numbers still available, sorted
Move = tuple[Fraction, str, Fraction, Fraction]  # a op b = c

_NUM = r"-?\d+(?:\.\d+)?(?:/\d+)?"
_STEP = re.compile(rf"({_NUM})\s*([-+*/])\s*({_NUM})\s*=\s*({_NUM})(?:\s*\(left:\s*([^)]*)\))?")

_EPS = 1e-6


# --- the solver --------------------------------------------------------------------------------------------------


def fmt(x: Fraction) -> str:
    """``3``, ``-2`` or ``3/4``."""
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _moves(state: Sequence[Fraction], nice: bool) -> list[tuple[int, int, str, Fraction]]:
    """Every (i, j, op, result) combining state[i] and state[j]; ``nice``: non-negative integer results only."""
    moves = []
    for i in range(len(state)):
        for j in range(len(state)):
            for op in "+-*/":
                if i == j or (op in "+*" and i > j):  # commutative: one order is enough
                    continue
                c = combine(state[i], op, state[j])
                if c is not None and (not nice or (c.denominator == 1 and c >= 0)):
                    moves.append((i, j, op, c))
    return moves


@cache
def _reach(state: tuple[float, ...], nice: bool) -> bool:
    # Floats for speed (50x Fractions). Exact here: a value a 4-number puzzle (numbers <= 24) can make is p/q with
    # q <= 24**3, so a value other than 24 is at least 1/q (7e-5) away from it, far above rounding error.
    if len(state) == 1:
        return abs(state[0] - TARGET) < _EPS
    for i in range(len(state)):
        for j in range(i + 1, len(state)):
            a, b = state[i], state[j]
            rest = state[:i] + state[i + 1 : j] + state[j + 1 :]
            results = [a + b, a * b, a - b, b - a] + ([a / b] if b else []) + ([b / a] if a else [])
            for c in results:
                if nice and (c < 0 or abs(c - round(c)) > _EPS):
                    continue
                if _reach(tuple(sorted((*rest, c))), nice):
                    return True
    return False


def _without(items: Sequence[T], i: int, j: int) -> list[T]:
    return [x for k, x in enumerate(items) if k not in (i, j)]


def reachable(state: Sequence[Fraction], nice: bool = False) -> bool:
    """Whether ``state`` can still make 24; ``nice``: through non-negative integer values only."""
    return _reach(tuple(sorted(float(x) for x in state)), nice)


def keeps_24(state: Sequence[Fraction], move: tuple[int, int, str, Fraction], nice: bool = False) -> bool:
    """Whether 24 is still reachable after ``move`` (an entry of :func:`_moves`) on ``state``."""
    i, j, _, c = move
    return reachable([*_without(state, i, j), c], nice)


def solvable(numbers: Sequence[int | Fraction]) -> bool:
    return reachable([Fraction(n) for n in numbers])


def _join(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
    """An expression and its precedence (1: + -, 2: * /, 3: a number) with only the parentheses it needs."""
    prec = 1 if op in "+-" else 2
    ltext = f"({left[0]})" if left[1] < prec else left[0]
    rtext = f"({right[0]})" if right[1] < prec or (right[1] == prec and op in "-/") else right[0]
    return f"{ltext} {op} {rtext}", prec


def solve(numbers: Sequence[int], rng: random.Random | None = None) -> tuple[list[Move], str] | None:
    """Steps and the expression of one solution (nice intermediates when possible), None when unsolvable.

    ``rng`` picks among the moves that keep 24 reachable; without it the first one is taken.
    """
    state = [Fraction(n) for n in sorted(numbers)]
    nice = reachable(state, nice=True)
    if not nice and not reachable(state):
        return None
    exprs = [(fmt(x), 3) for x in state]
    steps: list[Move] = []
    while len(state) > 1:
        moves = _moves(state, nice)
        if rng is not None:
            rng.shuffle(moves)
        i, j, op, c = next(m for m in moves if keeps_24(state, m, nice))
        steps.append((state[i], op, state[j], c))
        joined = _join(exprs[i], op, exprs[j])
        state, exprs = [*_without(state, i, j), c], [*_without(exprs, i, j), joined]
    return steps, exprs[0][0]


def step_lines(numbers: Sequence[int | Fraction], steps: Sequence[Move]) -> list[str]:
    """Each step as ``a op b = c (left: ...)``, the remainder computed as if the step's result were right."""
    pool = [Fraction(n) for n in numbers]
    lines = []
    for a, op, b, c in steps:
        pool.remove(a)
        pool.remove(b)
        pool.append(c)
        lines.append(f"{fmt(a)} {op} {fmt(b)} = {fmt(c)} (left: {' '.join(fmt(x) for x in sorted(pool))})")
    return lines


def solution_text(numbers: Sequence[int], steps: Sequence[Move], expression: str) -> str:
    """Steps ``a op b = c (left: ...)`` with the true remainder, then ``\\boxed{expression}``."""
    return "\n\n".join([*step_lines(numbers, steps), f"\\boxed{{{expression}}}"])


def value_example(numbers: Sequence[int], rng: random.Random) -> tuple[str, bool]:
    r"""A partial solution of the puzzle and whether it can still make 24: what ToT's value prompt asks.

    Every step but the last keeps 24 reachable; the last one does or does not (even odds where both exist), and one
    in ten has a wrong result. Depth 1-3 are equation steps, depth 4 the boxed expression after three steps.

    >>> text, sure = value_example([4, 6, 8, 4], random.Random(3))
    >>> text.count("(left:") >= 1, sure in (True, False)
    (True, True)
    """
    state, exprs = [Fraction(n) for n in numbers], [(str(n), 3) for n in numbers]
    depth, want = rng.randint(1, 4), rng.random() < 0.5
    steps: list[Move] = []
    while len(steps) < min(depth, 3):
        last = len(steps) + 1 == depth
        moves = _moves(state, nice=False)
        if rng.random() < 0.7:  # mostly non-negative integers, as the reference solutions (and so the policy) do
            moves = [m for m in moves if m[3].denominator == 1 and m[3] >= 0] or moves
        good = [m for m in moves if keeps_24(state, m)]
        good = good or [m for m in _moves(state, nice=False) if keeps_24(state, m)]
        bad = [m for m in moves if m not in good]
        pick = good if not last or want or not bad else bad
        i, j, op, c = rng.choice(pick)
        if last and rng.random() < 0.1:  # a wrong result (the remainder follows it, as a policy's would)
            c += rng.choice([-2, -1, 1, 2, 10])
        steps.append((state[i], op, state[j], c))
        state, exprs = [*_without(state, i, j), c], [*_without(exprs, i, j), _join(exprs[i], op, exprs[j])]
    lines = step_lines(numbers, steps)
    if depth == 4:
        expression = exprs[0][0]
        if not want:  # a slip in the written expression
            expression = expression.replace(
                rng.choice([op for op in "+-*/" if op in expression] or ["+"]), rng.choice("+-*/"), 1
            )
        lines.append(f"\\boxed{{{expression}}}")
    return "\n\n".join(lines), all(walk_steps(numbers, lines)[0])


def solver_paths(numbers: Sequence[int], count: int, rng: random.Random) -> list[str]:
    r"""Up to ``count`` three-step partial solutions, one per first step (a random choice of them when the puzzle has
    more): the states a search visits, for a value model to learn from exact labels (``ponder label --source solver``).

    After its first step (any of the puzzle's moves, so most lose the way to 24) each path takes a move that keeps 24
    reachable or one that does not, at even odds where both exist; the result is always right, so a step is wrong only
    when 24 is out of reach after it.

    >>> paths = solver_paths([4, 6, 8, 4], 3, random.Random(0))
    >>> len(paths), [p.count("(left:") for p in paths]
    (3, [3, 3, 3])
    """
    state0 = [Fraction(n) for n in numbers]
    firsts = _moves(state0, nice=False)
    rng.shuffle(firsts)
    paths = []
    for i, j, op, c in firsts[:count]:
        steps: list[Move] = [(state0[i], op, state0[j], c)]
        state = [*_without(state0, i, j), c]
        while len(state) > 1:
            moves = _moves(state, nice=False)
            good = [m for m in moves if keeps_24(state, m)]
            bad = [m for m in moves if m not in good]
            i2, j2, op2, c2 = rng.choice(good if good and (not bad or rng.random() < 0.5) else bad)
            steps.append((state[i2], op2, state[j2], c2))
            state = [*_without(state, i2, j2), c2]
        paths.append("\n\n".join(step_lines(numbers, steps)))
    return paths


def next_right_steps(numbers: Sequence[int], prefix: Sequence[str]) -> list[tuple[str, bool]]:
    r"""Every step that keeps 24 in reach after the right steps ``prefix`` (those with non-negative integer results
    first, as :func:`solve` prefers them), or the boxed expression that the steps have built once they leave 24;
    each with whether it ends the solution. [] when ``prefix`` is not a chain of valid steps.

    >>> next_right_steps([4, 6, 8, 4], ["4 + 8 = 12 (left: 4 6 12)", "6 - 4 = 2 (left: 2 12)"])[0]
    ('12 * 2 = 24 (left: 24)', False)
    >>> next_right_steps([4, 6, 8, 4], ["4 + 8 = 12 (left: 4 6 12)", "6 - 4 = 2 (left: 2 12)", "12 * 2 = 24"])
    [('\\boxed{(4 + 8) * (6 - 4)}', True)]
    """
    pool = [Fraction(n) for n in numbers]
    exprs = [(fmt(x), 3) for x in pool]
    for step in prefix:
        parsed = _parse_step(step)
        if parsed is None or apply_step(step, pool) is None:
            return []
        a, op, b, c, _ = parsed
        i = pool.index(a)
        j = next(k for k, x in enumerate(pool) if x == b and k != i)
        pool, exprs = [*_without(pool, i, j), c], [*_without(exprs, i, j), _join(exprs[i], op, exprs[j])]
    if len(pool) == 1:
        return [(f"\\boxed{{{exprs[0][0]}}}", True)] if pool[0] == TARGET else []
    moves = [m for m in _moves(pool, nice=False) if keeps_24(pool, m)]
    moves.sort(key=lambda m: not (m[3].denominator == 1 and m[3] >= 0))  # stable: nice results first
    return [(step_lines(pool, [(pool[i], op, pool[j], c)])[0], False) for i, j, op, c in moves]


# --- reading and judging completions ------------------------------------------------------------------------------


def _is_expression(text: str) -> bool:
    return any(op in text for op in ("+", "-", "*", "/", "\\times", "\\div", "\\cdot", "×", "÷"))


@lru_cache(maxsize=4096)
def _parse_step(step: str) -> tuple[Fraction, str, Fraction, Fraction, list[Fraction] | None] | None:
    found = _STEP.search(step)
    if found is None:
        return None
    a, op, b, c, left = found.groups()
    try:
        remainder = None if left is None else [Fraction(x) for x in left.replace(",", " ").split()]
        return Fraction(a), op, Fraction(b), Fraction(c), remainder
    except (ValueError, ZeroDivisionError):
        return None


def apply_step(step: str, pool: list[Fraction]) -> list[Fraction] | None:
    """The numbers left after an equation step that is valid on ``pool``, or None (see the module docstring)."""
    parsed = _parse_step(step)
    if parsed is None:
        return None
    a, op, b, c, left = parsed
    rest = list(pool)
    for x in (a, b):
        if x not in rest:
            return None
        rest.remove(x)
    if combine(a, op, b) != c:
        return None
    rest.append(c)
    if left is not None and Counter(left) != Counter(rest):
        return None
    return rest


def walk_steps(numbers: Sequence[int], steps: Sequence[str]) -> tuple[list[bool], bool]:
    """Per-step labels (Math-Shepherd semantics) and whether the steps alone reach 24 with all of them right."""
    pool = [Fraction(n) for n in numbers]
    labels: list[bool] = []
    solved = False  # every step right up to one that leaves exactly 24; chatter after it does not undo that
    for step in steps:
        ok = not labels or labels[-1]
        if ok:
            boxed = last_boxed(step)
            if boxed is not None and _is_expression(boxed):
                ok = expression_solves(boxed, numbers)
            elif _parse_step(step) is not None:
                new = apply_step(step, pool)
                ok = new is not None and reachable(new)
                pool = new if new is not None else pool
            elif boxed is not None:  # \boxed{24} after the steps reached 24
                ok = pool == [TARGET] and _number(boxed) == TARGET
            else:
                ok = False
        labels.append(ok)
        solved = solved or (ok and pool == [TARGET])
    return labels, solved


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None


# --- the task -----------------------------------------------------------------------------------------------------


@cache
def puzzle_rows() -> tuple[tuple[int, ...], ...]:
    """The numbers of every data row of ToT's ``24.csv``, in file order."""
    text = (resources.files("tot") / "data" / "24" / "24.csv").read_text()
    return tuple(tuple(int(x) for x in row["Puzzles"].split()) for row in csv.DictReader(io.StringIO(text)))


def file_train_rows() -> int:
    """How many rows of ``24.csv`` the train split holds (every row but the test ones); a train split of more
    problems fills the rest with generated puzzles, so ``load("train", limit=file_train_rows() + k)[-k:]`` are k
    generated ones.

    >>> file_train_rows()
    1262
    """
    return len(puzzle_rows()) - len(TEST_ROWS)


def numbers_of(problem: Problem) -> list[int]:
    """The puzzle's numbers, read from the question (the one source of truth)."""
    numbers = numbers_in(problem.question) if problem.question.startswith("Use the numbers ") else None
    if numbers is None:
        raise ValueError(f"not a game24 question: {problem.question!r}")
    return numbers


def question_text(numbers: Sequence[int]) -> str:
    listed = " ".join(map(str, numbers))
    return (
        f"Use the numbers {listed} and basic arithmetic operations (+ - * /) to obtain 24. "
        "Use each number exactly once."
    )


def make_problem(problem_id: str, numbers: Sequence[int], rng: random.Random, meta: dict) -> Problem:
    solved = solve(numbers, rng)
    if solved is None:
        raise ValueError(f"game24 puzzle {' '.join(map(str, numbers))} has no solution")
    steps, expression = solved
    meta = {"numbers": list(numbers), **meta}
    return Problem(problem_id, question_text(numbers), str(TARGET), solution_text(numbers, steps, expression), meta)


def in_heldout(numbers: Sequence[int]) -> bool:
    """Whether a puzzle is in the held-out partition: it has a number above FILE_MAX (so it is not a 24.csv row) and
    the first 8 bytes of the SHA-256 of ``game24/heldout/`` and its sorted numbers (``"1 1 5 18"``), read as a
    big-endian integer, are below HELDOUT_PERCENT modulo 100. Fixed: no seed, no Python ``hash``.

    >>> in_heldout([18, 5, 1, 1]), in_heldout([1, 1, 1, 21]), in_heldout([4, 6, 8, 4])
    (True, False, False)
    """
    if max(numbers) <= FILE_MAX:
        return False
    key = " ".join(map(str, sorted(numbers)))
    digest = hashlib.sha256(f"game24/heldout/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


@cache
def generator_space() -> tuple[tuple[int, ...], ...]:
    """Every puzzle the generator can make, sorted: solvable, numbers 1..GENERATED_MAX, one above FILE_MAX (9,254;
    about 10 s, as every multiset is solved once)."""
    candidates = itertools.combinations_with_replacement(range(1, GENERATED_MAX + 1), 4)
    return tuple(c for c in candidates if max(c) > FILE_MAX and solvable(c))


def heldout_puzzles() -> tuple[tuple[int, ...], ...]:
    """The held-out partition: the puzzles of :func:`generator_space` that :func:`in_heldout` picks (886), sorted."""
    return tuple(c for c in generator_space() if in_heldout(c))


def generated_puzzles(seed: int, exclude: set[tuple[int, ...]]) -> Iterator[tuple[int, ...]]:
    """Distinct solvable puzzles with numbers 1..GENERATED_MAX, none in ``exclude`` and none held out
    (:func:`in_heldout`), in a seeded order: the train split's generated puzzles."""
    rng = random.Random(f"game24/generated/{seed}")
    seen = set(exclude)
    misses = 0
    while misses < 100_000:
        numbers = tuple(sorted(rng.randint(1, GENERATED_MAX) for _ in range(4)))
        if numbers in seen or in_heldout(numbers) or not solvable(numbers):
            misses += 1
            continue
        seen.add(numbers)
        misses = 0
        yield numbers


@register
class Game24(TaskSpec):
    name = "game24"
    description = (
        "Game of 24 (ToT's 24.csv; test = rows 900-999) plus generated puzzles (heldout = a hashed 10% of them, "
        "never in train); exact step labels"
    )
    splits = ("train", "test", "heldout")
    instruction = INSTRUCTION
    max_tokens = 192  # three ~30-character steps and the boxed expression
    # its own policy and PRM (README, "Game of 24"); the searches valued by the PRM and answering with a solution
    # that passes ToT's rule (strategies/checks), as in results/game24-root and results/game24-mcts-root
    default_policy = "models/game24-policy"
    default_reward_model = "models/game24-prm"
    default_params = {
        "tree_of_thought": {"value_source": "prm", "final_check": "game24"},
        "mcts": {"value_source": "prm", "final_check": "game24", "root_samples": 16},
    }
    kv_cache_gib = 2.0  # what its runs used (README, "Game of 24": --kv-cache-gib 2)

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        if data_file is not None:
            raise ValueError("task 'game24' reads its puzzles from the tree-of-thoughts-llm package; no data file")
        rows = puzzle_rows()
        if split == "test":
            chosen = list(TEST_ROWS)[:limit]
            return [self._row_problem(r, rows[r], random.Random(f"game24/row/{r}")) for r in chosen]
        if split == "heldout":  # all 886 in a seeded order; a puzzle's reference solution does not depend on it
            held = list(heldout_puzzles())
            random.Random(f"game24/heldout-order/{seed}").shuffle(held)
            return [self._heldout_problem(numbers) for numbers in held[:limit]]
        size = DEFAULT_TRAIN_SIZE if limit is None else limit
        order = [r for r in range(len(rows)) if r not in TEST_ROWS]
        random.Random(f"game24/train/{seed}").shuffle(order)
        problems = [self._row_problem(r, rows[r], random.Random(f"game24/{seed}/row/{r}")) for r in order[:size]]
        for k, numbers in zip(range(size - len(problems)), generated_puzzles(seed, set(rows)), strict=False):
            meta = {"source": "generated"}
            problems.append(
                make_problem(f"game24-gen-s{seed}-{k:05d}", numbers, random.Random(f"game24/gen/{seed}/{k}"), meta)
            )
        if len(problems) < size:
            raise ValueError(f"game24 has only {len(problems)} distinct train puzzles, fewer than {size}")
        return problems

    @staticmethod
    def _heldout_problem(numbers: tuple[int, ...]) -> Problem:
        key = "-".join(map(str, numbers))
        return make_problem(
            f"game24-heldout-{key}", numbers, random.Random(f"game24/heldout-solution/{key}"), {"source": "heldout"}
        )

    @staticmethod
    def _row_problem(row: int, numbers: tuple[int, ...], rng: random.Random) -> Problem:
        return make_problem(f"game24-{row:04d}", numbers, rng, {"source": "tot-24.csv", "row": row})

    def grade(self, problem: Problem, completion: str) -> bool:
        numbers = numbers_of(problem)
        boxed = last_boxed(completion)
        if boxed is not None and _is_expression(boxed):
            return expression_solves(boxed, numbers)
        return walk_steps(numbers, self.steps(completion))[1]

    def value_example(self, problem: Problem, rng: random.Random) -> tuple[str, bool]:
        return value_example(numbers_of(problem), rng)

    def solver_paths(self, problem: Problem, count: int, rng: random.Random) -> list[str]:
        return solver_paths(numbers_of(problem), count, rng)

    def check_steps(self, problem: Problem, completion: str) -> list[bool]:
        return walk_steps(numbers_of(problem), self.steps(completion))[0]

    def next_right_steps(self, problem: Problem, prefix: Sequence[str]) -> list[tuple[str, bool]]:
        return next_right_steps(numbers_of(problem), prefix)
