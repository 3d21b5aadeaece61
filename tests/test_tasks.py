"""The reasoning tasks: generators, splits, graders, exact step checkers and dataset loaders (all offline, fast)."""

from __future__ import annotations

import csv
import doctest
import io
import random
import re
import string
from importlib import resources
from pathlib import Path

import pytest

import strategies.game24_rules
import training.tasks
import training.tasks.base
import training.tasks.game24
from strategies.game24_rules import evaluate
from training.tasks import TASKS, Problem, TaskSpec, UnknownTaskError, get_task
from training.tasks.arith import LEVELS, apply, parse_question
from training.tasks.base import register
from training.tasks.game24 import TEST_ROWS, solvable, solve

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
TOKENIZER_CHARACTERS = set(string.digits + string.ascii_letters + string.punctuation + " \n")  # tiny_models.py
arith = get_task("arith")
game24 = get_task("game24")


def steps(*lines: str) -> str:
    return "\n\n".join(lines)


# --- registry -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [training.tasks, training.tasks.base, training.tasks.game24])
def test_doctests(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def test_registry_names_and_unknown_task():
    assert {"arith", "game24", "gsm8k", "math500", "aime"} <= set(TASKS)
    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope'; known: aime, arith, game24, gsm8k, math500"):
        get_task("nope")


def test_duplicate_registration_fails():
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Again", (TaskSpec,), {"name": "arith"}))


def test_load_validates_its_arguments():
    with pytest.raises(ValueError, match="no split 'dev'"):
        arith.load("dev", limit=1)
    with pytest.raises(ValueError, match="no level"):
        arith.load("test", limit=1, level=9)
    with pytest.raises(ValueError, match="no difficulty levels"):
        game24.load("test", limit=1, level=2)
    with pytest.raises(ValueError, match="needs a data file"):
        get_task("math500").load()


def test_prompt_is_question_then_instruction():
    problem = arith.load("test", limit=1, level=3)[0]
    prompt = arith.prompt(problem)
    assert prompt.startswith(problem.question + "\n") and "\\boxed{}" in prompt


# --- arith --------------------------------------------------------------------------------------------------------


def test_arith_is_deterministic_and_seeded():
    first = arith.load("train", limit=20, level=4, seed=3)
    assert first == arith.load("train", limit=20, level=4, seed=3)
    assert [p.question for p in first] != [p.question for p in arith.load("train", limit=20, level=4, seed=4)]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_arith_level_properties(level):
    spec = LEVELS[level]
    for problem in arith.load("train", limit=100, level=level):
        start, ops = parse_question(problem.question)
        assert len(ops) == spec.num_ops and problem.meta["level"] == level
        value = start
        assert 0 <= start <= spec.max_value
        for op, operand in ops:
            assert op in spec.operations
            assert 1 <= operand <= spec.add_max if op in "+-" else 2 <= operand <= spec.mul_max
            value = apply(value, op, operand)
            assert value is not None and 0 <= value <= spec.max_value  # division exact, value in range
        assert problem.answer == str(value)
        assert set(problem.question + problem.solution) <= TOKENIZER_CHARACTERS


def test_arith_splits_are_disjoint_and_test_problems_distinct():
    for level in (1, 3):
        test = {p.question for p in arith.load("test", limit=300, level=level, seed=0)}
        val = {p.question for p in arith.load("val", limit=300, level=level, seed=0)}
        assert len(test) == len(val) == 300 and not test & val
        for seed in (0, 1):
            train = {p.question for p in arith.load("train", limit=2000, level=level, seed=seed)}
            assert not train & (test | val)


def test_arith_without_level_mixes_all_levels():
    problems = arith.load("test", limit=16)
    assert sorted(p.meta["level"] for p in problems) == sorted(list(LEVELS) * 2)


def test_arith_reference_solutions_grade_and_check_right():
    for problem in arith.load("test", limit=40):
        assert problem.solution.split("\n\n")[-1] == f"\\boxed{{{problem.answer}}}"
        assert arith.grade(problem, problem.solution)
        labels = arith.check_steps(problem, problem.solution)
        assert labels == [True] * (len(parse_question(problem.question)[1]) + 1)
        assert arith.first_error_step(problem, problem.solution) == -1


def chain_problem() -> Problem:
    question = "Start with 12. Add 7. Multiply by 3. Subtract 5. What is the result?"
    return Problem("p", question, "52", steps("12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52", "\\boxed{52}"))


@pytest.mark.parametrize(
    ("completion", "labels"),
    [
        (steps("12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52", "\\boxed{52}"), [True] * 4),
        (steps("7 + 12 = 19", "3 * 19 = 57", "57 - 5 = 52", "\\boxed{52}"), [True] * 4),  # + and * commute
        (steps("12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52 so \\boxed{52}"), [True] * 3),
        (steps("12 + 7 = 20", "20 * 3 = 60", "60 - 5 = 55", "\\boxed{55}"), [False] * 4),  # wrong arithmetic
        (steps("12 + 7 = 19", "19 * 4 = 76", "76 - 5 = 71", "\\boxed{71}"), [True] + [False] * 3),  # copied operand
        (steps("12 + 7 = 19", "18 * 3 = 54", "54 - 5 = 49", "\\boxed{49}"), [True] + [False] * 3),  # wrong left
        (steps("12 + 7 = 19", "19 + 3 = 22", "22 - 5 = 17", "\\boxed{17}"), [True] + [False] * 3),  # wrong op
        (steps("12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52", "\\boxed{57}"), [True] * 3 + [False]),  # wrong answer
        (steps("12 + 7 = 19", "19 * 3 = 57", "\\boxed{57}"), [True, True, False]),  # answers too early
        (steps("12 + 7 = 19", "19 * 3 = 57", "57 - 5 = 52", "52 - 0 = 52"), [True] * 3 + [False]),  # extra step
        (steps("12 + 7 = 19", "I think so.", "57 - 5 = 52"), [True, False, False]),  # no equation, no answer
        (steps("12 + 7 = 19", "19 * 3 = 57"), [True, True]),  # unfinished: right so far
    ],
)
def test_arith_check_steps_catches_planted_errors(completion, labels):
    problem = chain_problem()
    assert arith.check_steps(problem, completion) == labels
    assert arith.first_error_step(problem, completion) == (labels.index(False) if False in labels else -1)


@pytest.mark.parametrize(
    ("completion", "right"),
    [
        ("12 + 7 = 19\n\n19 * 3 = 57\n\n57 - 5 = 52\n\n\\boxed{52}", True),
        ("So the answer is 52.", True),
        ("\\boxed{52.0}", True),
        ("\\boxed{53}", False),
        ("I do not know.", False),
    ],
)
def test_arith_grading_accepts_equivalent_forms(completion, right):
    assert arith.grade(chain_problem(), completion) is right


# --- game24 -------------------------------------------------------------------------------------------------------


def csv_rows() -> list[list[int]]:
    text = (resources.files("tot") / "data" / "24" / "24.csv").read_text()
    return [[int(x) for x in row["Puzzles"].split()] for row in csv.DictReader(io.StringIO(text))]


def test_game24_solver():
    assert solvable([4, 5, 6, 10]) and not solvable([1, 1, 1, 1])
    moves, expression = solve([1, 3, 4, 6])  # only 6 / (1 - 3/4) works: fractions are needed
    assert evaluate(expression)[0] == 24 and moves[-1][-1] == 24
    assert solve([1, 1, 1, 1]) is None
    assert sum(solvable(row) for row in csv_rows()[:200]) == 200


def test_game24_test_split_is_rows_900_to_999_and_never_in_train():
    rows = csv_rows()
    test = game24.load("test")
    assert [p.meta["numbers"] for p in test] == rows[900:1000] and list(TEST_ROWS) == [p.meta["row"] for p in test]
    train = game24.load("train", limit=1400, seed=5)  # every other file row, then generated puzzles
    test_puzzles = {tuple(sorted(p.meta["numbers"])) for p in test}
    assert not {tuple(sorted(p.meta["numbers"])) for p in train} & test_puzzles
    from_file = [p for p in train if p.meta["source"] == "tot-24.csv"]
    assert len(from_file) == len(rows) - 100 and not {p.meta["row"] for p in from_file} & set(TEST_ROWS)
    generated = [p for p in train if p.meta["source"] == "generated"]
    assert len(generated) == 138 and all(max(p.meta["numbers"]) > 13 for p in generated)
    assert game24.load("train", limit=30, seed=5) == train[:30]


def test_game24_reference_solutions_are_right_and_ascii():
    for problem in game24.load("test") + game24.load("train", limit=1300)[-40:]:
        assert game24.grade(problem, problem.solution)
        assert game24.check_steps(problem, problem.solution) == [True] * 4
        assert set(problem.question + problem.solution) <= TOKENIZER_CHARACTERS


def test_game24_value_examples_are_partial_solutions_labelled_by_whether_24_is_still_reachable():
    from fractions import Fraction

    rng = random.Random(0)
    seen = set()
    for k in range(300):
        numbers = csv_rows()[k]
        text, sure = game24.value_example(puzzle_of(numbers), rng)
        lines = text.split("\n\n")
        boxed = lines[-1].startswith("\\boxed{")
        seen.add((len(lines), sure))
        if boxed:  # three right steps, then an expression that does or does not make 24 of the numbers
            assert sure == strategies.game24_rules.expression_solves(lines[-1][len("\\boxed{") : -1], numbers)
            continue
        a, op, b, c = re.match(r"(\S+) (\S) (\S+) = (\S+) \(left", lines[-1]).groups()
        left = [Fraction(x) for x in lines[-1].split("(left: ")[1].rstrip(")").split()]
        right = strategies.game24_rules.combine(Fraction(a), op, Fraction(b)) == Fraction(c)
        assert sure == (right and training.tasks.game24.reachable(left))
    assert seen == {(depth, label) for depth in (1, 2, 3, 4) for label in (True, False)}  # every depth, both ways


def puzzle_of(numbers: list[int]) -> Problem:
    return Problem("g", training.tasks.game24.question_text(numbers), "24")


S1, S2, S3 = "10 - 4 = 6 (left: 5 6 6)", "5 * 6 = 30 (left: 6 30)", "30 - 6 = 24 (left: 24)"  # solves 4 5 6 10


def puzzle(numbers: str = "4 5 6 10") -> Problem:
    return Problem("g", training.tasks.game24.question_text([int(x) for x in numbers.split()]), "24")


@pytest.mark.parametrize(
    ("completion", "right", "labels"),
    [
        (steps(S1, S2, S3, "\\boxed{5 * (10 - 4) - 6}"), True, [True] * 4),
        (steps(S1, S2, S3), True, [True] * 3),
        (steps(S1, S2, S3, "Done!"), True, [True, True, True, False]),  # chatter after 24: graded right
        (steps("10 - 4 = 6", "5 * 6 = 30", "30 - 6 = 24", "\\boxed{24}"), True, [True] * 4),  # left lists optional
        ("\\boxed{(10 - 4) \\times 5 - 6}", True, [True]),  # the expression alone, LaTeX operators
        (steps("10 - 6 = 4 (left: 4 4 5)", S2, S3), False, [True, False, False]),  # no 6 is left for step 2
        (steps("10 - 4 = 7 (left: 5 6 7)", "5 * 6 = 30 (left: 7 30)", S3), False, [False] * 3),  # wrong arithmetic
        (steps(S1, S2, "30 - 5 = 25 (left: 25)"), False, [True, True, False]),  # not 24
        (steps("10 - 4 = 6 (left: 5 6 7)", S2, S3), False, [False] * 3),  # wrong remainder
        (steps("5 * 4 = 20 (left: 6 10 20)", "20 + 6 = 26 (left: 10 26)"), False, [True, False]),  # dead end
        ("\\boxed{(10 - 4) * 5 - 5}", False, [False]),  # wrong numbers
        ("\\boxed{4 * 6 + 10 - 10}", False, [False]),  # a number used twice, another missing
        ("\\boxed{4 * 5 + 6 - 10}", False, [False]),  # not 24
    ],
)
def test_game24_grade_and_check_steps(completion, right, labels):
    problem = puzzle()
    assert game24.grade(problem, completion) is right
    assert game24.check_steps(problem, completion) == labels


def test_game24_fraction_steps():
    completion = steps("3 / 4 = 3/4 (left: 1 3/4 6)", "1 - 3/4 = 1/4 (left: 1/4 6)", "6 / 1/4 = 24 (left: 24)")
    assert game24.check_steps(puzzle("1 3 4 6"), completion) == [True] * 3
    assert game24.grade(puzzle("1 3 4 6"), completion + "\n\n\\boxed{6 / (1 - 3 / 4)}")


# --- dataset loaders ----------------------------------------------------------------------------------------------


def test_gsm8k_jsonl_fixture():
    task = get_task("gsm8k")
    problems = task.load(data_file=str(FIXTURES / "gsm8k.jsonl"))
    assert [p.answer for p in problems] == ["15", "3250", "12"]
    assert problems[2].id == "made-up-3" and problems[0].id == "gsm8k-test-1"
    first_steps = ("She baked 4 * 6 = 24 rolls.", "After selling, 24 - 9 = 15 rolls are left.", "\\boxed{15}")
    assert problems[0].solution == steps(*first_steps)
    assert all(task.grade(p, p.solution) for p in problems)
    assert task.grade(problems[1], "They sell 3,250 melons in all.") and not task.grade(problems[1], "\\boxed{3000}")
    assert task.check_steps(problems[0], problems[0].solution) is None
    assert task.load(data_file=str(FIXTURES / "gsm8k.jsonl"), limit=1) == problems[:1]


def test_math500_jsonl_fixture():
    task = get_task("math500")
    problems = task.load(data_file=str(FIXTURES / "math500.jsonl"))
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "4", "5\\sqrt{2}"]  # the 2nd from its boxed solution
    assert problems[0].id == "test/prealgebra/0001.json" and problems[0].meta["level"] == 1
    assert task.grade(problems[0], "so it is \\boxed{0.5}") and not task.grade(problems[0], "\\boxed{1/3}")
    assert task.grade(problems[2], "\\boxed{5 \\sqrt{2}}")


def test_aime_jsonl_fixture():
    task = get_task("aime")
    problems = task.load(data_file=str(FIXTURES / "aime.jsonl"))
    assert [(p.id, p.answer) for p in problems] == [("1", "401"), ("2099-I-2", "24"), ("aime-3", "033")]
    assert problems[1].question.startswith("How many")  # "Problem" / "Answer" keys, any case
    assert task.grade(problems[2], "n = 33, so \\boxed{33}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "answer": "#### 1"}\n{"answer": "#### 2"\n', r"bad\.jsonl:2: not valid JSON"),
        ('["question", "answer"]\n', r"bad\.jsonl:1: expected a JSON object"),
        ('{"question": "q"}\n', r"bad\.jsonl:1: missing field 'answer'"),
        ('{"question": "q", "answer": "no final line"}\n', r"bad\.jsonl:1: the answer has no '#### N' final line"),
    ],
)
def test_loader_errors_name_file_and_line(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(ValueError, match=message):
        get_task("gsm8k").load(data_file=str(bad), limit=1)  # the whole file is checked, whatever the limit


def test_loader_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.jsonl: cannot read data file"):
        get_task("aime").load(data_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match=r"missing field 'problem' or 'question'"):
        (tmp_path / "a.jsonl").write_text('{"answer": "1"}\n')
        get_task("aime").load(data_file=str(tmp_path / "a.jsonl"))


def test_gsm8k_from_the_installed_package():
    task = get_task("gsm8k")
    problems = task.load()
    assert len(problems) == 100 and len({p.id for p in problems}) == 100
    assert problems[0].id == "gsm8k-0000" and problems[-1].id == "gsm8k-0099"
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in problems)
    assert all(p.solution.endswith(f"\\boxed{{{p.answer}}}") and "<<" not in p.solution for p in problems)
    assert all(task.grade(p, p.solution) for p in problems[:10])
    with pytest.raises(ValueError, match="test problems"):
        task.load("train")
