r"""``arith``: seeded multi-step integer arithmetic chains, with steps a checker can label exactly.

A problem is a chain of numbered operations on a running value, in words::

    Start with 12. (1) Add 7. (2) Multiply by 3. (3) Subtract 5. What is the result?

and its reference solution is one step per operation, steps separated by a blank line, then the answer; a step
restates the question's operation, then does it as an equation::

    (1) Add 7: 12 + 7 = 19\n\n(2) Multiply by 3: 19 * 3 = 57\n\n(3) Subtract 5: 57 - 5 = 52\n\n\boxed{52}

A chain rather than a nested expression: every step has one right form (the previous result, the problem's operand),
so :meth:`Arith.check_steps` labels steps exactly, and a character-level model only ever carries one value forward.
The restatement makes reading the question a verbatim copy: after ``(2`` the model copies what follows ``(2`` in the
question, character by character (the induction-head pattern small transformers learn first), and the equation
then uses only what is on its own line and the line before. Without it (bare equations, numbered or not) a 4-layer
character-level policy trained for 20 minutes here never learned to look the operation up: it wrote plausible
chains that ignored the question (0-3% greedy at every level). The step checker reads the step's equation only, so
bare equations are judged the same way.

Levels (every value, start and intermediate results, stays in 0..max; division is always exact)::

    level  ops  operations  +/- operand  * and / operand  values
      1     1   + -          1..99        -                0..99
      2     2   + - *        1..99        2..9             0..99
      3     3   + - * /      1..99        2..9             0..99
      4     4   + - * /      1..99        2..9             0..99
      5     5   + - * /      1..99        2..9             0..99
      6     6   + - * /      1..99        2..9             0..99
      7     4   + - * /      1..999       2..19            0..999
      8     6   + - * /      1..999       2..19            0..999

Levels 1-6 keep every value under 100, where a tiny character-level model learns the arithmetic in minutes
(shared/PLATFORM.md: 56/54/32/23% greedy at 2/3/4/5 operations after 7.5 minutes); the number of operations is the
difficulty knob. Levels 7-8 use three-digit values, which such a model does not learn in that time: they are for
larger policies. Each operation is drawn uniformly from those that keep the value in range (no * or / below 2),
then its operand uniformly from the range that does.

Splits: the SHA-256 of a question's text puts it in one split (:func:`split_of`): 1/10 of all problems are test,
1/10 val (for tuning and early stopping, so that nothing is tuned on test), the rest train; the three are disjoint
for every seed and level. Each split draws from its own stream, ``random.Random(f"arith/{split}/{level}/{seed}")``,
rejecting the other splits' problems. Test and val problems are distinct within a set; train problems may repeat
(level 1 has about 7,800 distinct train problems).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from strategies.answers import equivalent, last_boxed
from training.tasks.base import Problem, TaskSpec, register


@dataclass(frozen=True)
class Level:
    """How one difficulty level draws its chains."""

    num_ops: int
    operations: str  # a subset of "+-*/"
    add_max: int  # + and - operands are 1..add_max
    mul_max: int  # * and / operands are 2..mul_max
    max_value: int  # every value stays in 0..max_value


LEVELS: dict[int, Level] = {
    1: Level(1, "+-", 99, 9, 99),
    2: Level(2, "+-*", 99, 9, 99),
    3: Level(3, "+-*/", 99, 9, 99),
    4: Level(4, "+-*/", 99, 9, 99),
    5: Level(5, "+-*/", 99, 9, 99),
    6: Level(6, "+-*/", 99, 9, 99),
    7: Level(4, "+-*/", 999, 19, 999),
    8: Level(6, "+-*/", 999, 19, 999),
}
DEFAULT_SIZE = {"train": 10_000, "val": 500, "test": 500}  # per level, when no limit is given
HASH_BUCKETS = {0: "test", 1: "val"}  # question hash mod 10 -> split; every other bucket is train
WORDS = {"+": "Add {}.", "-": "Subtract {}.", "*": "Multiply by {}.", "/": "Divide by {}."}
INSTRUCTION = "One equation per step, steps apart by a blank line, answer in \\boxed{}."

Op = tuple[str, int]  # ("*", 3)

_OPERATOR = {"×": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/", "−": "-"}
_WORD_OP = {"Add": "+", "Subtract": "-", "Multiply by": "*", "Divide by": "/"}
_STEP = re.compile(r"(?:\(\d+\) )?(Add|Subtract|Multiply by|Divide by) (\d+)\.")
_QUESTION = re.compile(
    r"Start with (\d+)\. ((?:(?:\(\d+\) )?(?:Add|Subtract|Multiply by|Divide by) \d+\. )+)What is the result\?"
)
_EQUATION = re.compile(r"(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)")


def apply(value: int, op: str, operand: int) -> int | None:
    """``value op operand`` in integers; None when a division is not exact."""
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value // operand if operand and value % operand == 0 else None


def _operand_choices(value: int, op: str, level: Level) -> range | list[int]:
    if op == "+":
        return range(1, min(level.add_max, level.max_value - value) + 1)
    if op == "-":
        return range(1, min(level.add_max, value) + 1)
    if value < 2:
        return []  # 0 * k and 1 * k teach nothing; so do 0 / k and 1 / 1
    if op == "*":
        return range(2, min(level.mul_max, level.max_value // value) + 1)
    return [d for d in range(2, level.mul_max + 1) if value % d == 0]


def draw_chain(rng: random.Random, level: Level) -> tuple[int, list[Op]]:
    """A start value and ``level.num_ops`` operations keeping every value in range."""
    start = value = rng.randint(2, level.max_value)
    ops: list[Op] = []
    for _ in range(level.num_ops):
        feasible = {op: c for op in level.operations if (c := _operand_choices(value, op, level))}
        op = rng.choice(sorted(feasible))
        operand = rng.choice(feasible[op])
        ops.append((op, operand))
        value = apply(value, op, operand)
    return start, ops


def results(start: int, ops: Sequence[Op]) -> list[int]:
    """The running value after each operation."""
    out, value = [], start
    for op, operand in ops:
        value = apply(value, op, operand)
        out.append(value)
    return out


def question_text(start: int, ops: Sequence[Op]) -> str:
    """``Start with 12. (1) Add 7. (2) Multiply by 3. What is the result?``"""
    said = " ".join(f"({i}) " + WORDS[op].format(operand) for i, (op, operand) in enumerate(ops, 1))
    return f"Start with {start}. {said} What is the result?"


def format_step(number: int, op: str, operand: int, left: int, result: int) -> str:
    """``(2) Multiply by 3: 19 * 3 = 57``: the question's numbered operation restated, then its equation."""
    return f"({number}) {WORDS[op].format(operand)[:-1]}: {left} {op} {operand} = {result}"


def reference_solution(start: int, ops: Sequence[Op]) -> str:
    """One step per operation (:func:`format_step`), then ``\\boxed{answer}``; steps joined by a blank line."""
    lefts = [start, *results(start, ops)]
    steps = [format_step(i + 1, op, operand, lefts[i], lefts[i + 1]) for i, (op, operand) in enumerate(ops)]
    return "\n\n".join([*steps, f"\\boxed{{{lefts[-1]}}}"])


def split_of(question: str) -> str:
    """The split a question belongs to, from its SHA-256: test and val a tenth each, train the rest."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 10
    return HASH_BUCKETS.get(bucket, "train")


def generate(split: str, level: int, count: int, seed: int = 0) -> list[Problem]:
    """``count`` problems of ``level`` from ``split``'s own seeded stream (see the module docstring)."""
    rng = random.Random(f"arith/{split}/{level}/{seed}")
    spec, distinct = LEVELS[level], split != "train"
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 50 * count + 10_000:
            raise ValueError(f"arith level {level} has too few distinct {split} problems for {count}")
        start, ops = draw_chain(rng, spec)
        question = question_text(start, ops)
        if split_of(question) != split or (distinct and question in seen):
            continue
        seen.add(question)
        answer = str(results(start, ops)[-1])
        meta = {"level": level, "source": "generated"}
        problem_id = f"arith-{split}-L{level}-s{seed}-{len(problems):05d}"
        problems.append(Problem(problem_id, question, answer, reference_solution(start, ops), meta))
    return problems


def _interleave(groups: Sequence[Sequence[Problem]]) -> Iterator[Problem]:
    for row in zip_longest(*groups):
        yield from (p for p in row if p is not None)


def parse_question(question: str) -> tuple[int, list[Op]]:
    """The start value and operations of a question :func:`question_text` wrote; ValueError for any other text."""
    found = _QUESTION.fullmatch(question)
    if found is None:
        raise ValueError(f"not an arith question: {question!r}")
    ops = [(_WORD_OP[word], int(operand)) for word, operand in _STEP.findall(found.group(2))]
    return int(found.group(1)), ops


def parse_equation(step: str) -> tuple[int, str, int, int] | None:
    """The last ``a op b = c`` in a step (``×``, ``÷``, ``\\times``, ``\\div`` read as ``*``, ``/``), or None."""
    for written, op in _OPERATOR.items():
        step = step.replace(written, op)
    found = _EQUATION.findall(step)
    if not found:
        return None
    left, op, right, result = found[-1]
    return int(left), op, int(right), int(result)


def step_is_right(step: str, index: int, start: int, ops: Sequence[Op]) -> bool:
    """Whether step ``index`` (all earlier steps right) is operation ``index`` done right, or the final answer.

    An equation step must apply the problem's operation to the previous result: right arithmetic, left operand =
    previous result, right operand = the problem's operand (so a copied wrong operand is wrong even when the sum
    is right); + and * may be written either way round. A step with no equation must be the ``\\boxed{}`` answer
    after the last operation. A step with both is judged on both.
    """
    values = [start, *results(start, ops)]
    equation, boxed = parse_equation(step), last_boxed(step)
    if equation is None and boxed is None:
        return False
    done = index  # operations completed before this step
    if equation is not None:
        if index >= len(ops):
            return False
        left, op, right, result = equation
        want_op, operand = ops[index]
        operands_ok = (left, right) == (values[index], operand) or (
            op in "+*" and (right, left) == (values[index], operand)
        )
        if op != want_op or not operands_ok or result != values[index + 1]:
            return False
        done = index + 1
    if boxed is not None:
        return done == len(ops) and equivalent(boxed, str(values[-1]))
    return True


@register
class Arith(TaskSpec):
    name = "arith"
    description = "multi-step integer arithmetic chains, levels 1-8; exact step labels"
    splits = ("train", "val", "test")
    levels = tuple(LEVELS)
    instruction = INSTRUCTION
    max_tokens = 256  # level 8: six ~20-character steps and the answer
    default_policy = "models/default-policy"  # the shipped default models are trained on arith (README, top)
    default_reward_model = "models/default-prm"

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        if data_file is not None:
            raise ValueError("task 'arith' generates its problems; it takes no data file")
        total = limit if limit is not None else DEFAULT_SIZE[split] * len(levels)
        counts = [total // len(levels) + (i < total % len(levels)) for i in range(len(levels))]
        groups = [generate(split, level, count, seed) for level, count in zip(levels, counts, strict=True)]
        return list(_interleave(groups))

    def error_offsets(self, prompt: str, steps: Sequence[str]) -> list[int] | None:
        r"""Where each step first departs from the canonical right step (:func:`format_step`, then ``\boxed{}``).

        A step :func:`step_is_right` accepts is -1 even where its text differs (``3 * 19`` for ``19 * 3``); the
        first wrong step's offset is its first character unlike the canonical one; every later step is 0.

        >>> Arith().error_offsets("Start with 4. (1) Add 3. What is the result?", ["(1) Add 3: 4 + 3 = 8", "x"])
        [19, 0]
        """
        found = _QUESTION.search(prompt)
        if found is None:
            return None
        start, ops = parse_question(found.group(0))
        values, offsets = [start, *results(start, ops)], []
        for index, step in enumerate(steps):
            if offsets and offsets[-1] != -1:
                offsets.append(0)
            elif step_is_right(step, index, start, ops):
                offsets.append(-1)
            else:
                canonical = (
                    format_step(index + 1, *ops[index], values[index], values[index + 1])
                    if index < len(ops)
                    else f"\\boxed{{{values[-1]}}}"
                )
                same = next((i for i, (a, b) in enumerate(zip(step, canonical, strict=False)) if a != b), None)
                offsets.append(min(len(step) - 1, len(canonical)) if same is None else same)
        return offsets

    def check_steps(self, problem: Problem, completion: str) -> list[bool]:
        start, ops = parse_question(problem.question)
        labels: list[bool] = []
        for index, step in enumerate(self.steps(completion)):
            labels.append(bool(not labels or labels[-1]) and step_is_right(step, index, start, ops))
        return labels
