"""Final-answer checks (strategies/checks.py): ToT's Game of 24 rule, and ``tree_of_thought`` / ``mcts`` choosing
the solution that passes it over one their values prefer."""

from __future__ import annotations

import pytest

from strategies import checks
from strategies.base import InvalidRequestError
from strategies.search import VALUE_PROMPT
from tests.test_search_strategies import PROMPT, Policy, RuleScorer, chat, client_for, make_task, run

QUESTION = "Use the numbers 1 2 3 4 and basic arithmetic operations (+ - * /) to obtain 24. Use each number once."
RIGHT, WRONG = "\\boxed{1 * 2 * 3 * 4}", "\\boxed{(1 + 2) * (3 + 4)}"


def confident_in_the_wrong_one(prompt: str, i: int) -> str:
    """Two one-step solutions; the policy is sure of the wrong one (21) and only finds the right one likely."""
    prefix = prompt[len(PROMPT) :]
    if prefix.endswith(VALUE_PROMPT):
        return " sure" if "+" in prefix else " likely"
    return WRONG if i % 2 == 0 else RIGHT


def test_game24_check_reads_the_numbers_from_the_question():
    check = checks.bind("game24", "Question: " + QUESTION)
    assert check("steps\n\n" + RIGHT) and check("\\boxed{(4 * 3) * (2 * 1)}")
    assert not check(WRONG)  # 21
    assert not check("\\boxed{4 * 3 * 2}")  # 24 without the 1
    assert not check("\\boxed{24}") and not check("no answer") and not check("\\boxed{1 * 2 * 3 * 4 +}")
    assert checks.bind(None, QUESTION) is None


def test_a_question_the_check_cannot_read_and_an_unknown_check_are_client_errors():
    with pytest.raises(InvalidRequestError, match="Use the numbers a b c d"):
        checks.bind("game24", "What is 6 * 7?")
    with pytest.raises(ValueError, match="final_check must be one of game24"):
        checks.validate("sudoku")


@pytest.mark.parametrize(
    "name, params",
    [
        ("tree_of_thought", dict(breadth=2, samples_per_state=2)),
        ("mcts", dict(value_source="self", num_samples=2, num_iterations=2)),
    ],
)
async def test_the_search_answers_with_the_solution_that_passes_the_check(name, params):
    task = make_task(question=QUESTION)
    unchecked, _ = await run(name, Policy(confident_in_the_wrong_one), None, task=task, **params)
    assert unchecked.choices[0].text == WRONG  # its own verdicts prefer 21
    result, _ = await run(
        name, Policy(confident_in_the_wrong_one), None, task=task, final_check="game24", return_trace=True, **params
    )
    assert result.choices[0].text == RIGHT
    checked = {n["text"]: n["check"] for n in result.extra["tree"]["nodes"] if "check" in n}
    assert checked == {RIGHT: True, WRONG: False}


async def test_with_no_solution_passing_the_choice_falls_back_to_the_values():
    wrong_only = Policy(lambda prompt, i: " sure" if prompt.endswith(VALUE_PROMPT) else WRONG)
    result, _ = await run(
        "tree_of_thought", wrong_only, None, task=make_task(question=QUESTION), final_check="game24", breadth=2
    )
    assert result.choices[0].text == WRONG


async def test_over_http_a_bad_final_check_is_a_400_before_any_search():
    engine = Policy(confident_in_the_wrong_one)
    async with client_for(engine) as client:
        unreadable = await chat(client, "tree_of_thought", final_check="game24", breadth=2, samples_per_state=2)
        unknown = await chat(client, "mcts", value_source="self", final_check="sudoku")
    assert unreadable.status_code == 400 and "Use the numbers a b c d" in unreadable.json()["error"]["message"]
    assert unknown.status_code == 400 and "final_check must be one of game24" in unknown.json()["error"]["message"]
    assert engine.calls == []  # nothing was generated for either


def liked_dead_end(prompt: str, i: int) -> str:
    """Two first steps: "path A", which the PRM likes, ends in 21; "path B", which it doubts, ends in 24."""
    prefix = prompt[len(PROMPT) :]
    if not prefix:
        return "path A\n\n" + WRONG if i % 2 == 0 else "path B\n\n" + RIGHT
    return WRONG if "path A" in prefix else RIGHT


async def test_mcts_values_a_finished_trajectory_by_the_check_and_stops_at_a_pass():
    scorer = RuleScorer(table={"path A": 0.9, WRONG: 0.95, "path B": 0.2, RIGHT: 0.1})
    params = dict(num_samples=2, num_iterations=4, final_check="game24", return_trace=True)
    task = make_task(question=QUESTION)
    blind, _ = await run("mcts", Policy(liked_dead_end), scorer, task=task, terminal_check=False, **params)
    assert blind.choices[0].text == "path A\n\n" + WRONG  # the PRM's favourite, re-selected until the iterations end
    assert len(blind.extra["rounds"]) == 2 and "passed_check" not in blind.extra["rounds"][-1]

    engine = Policy(liked_dead_end)
    result, ledger = await run("mcts", engine, scorer, task=task, **params)
    assert result.choices[0].text == "path B\n\n" + RIGHT
    nodes = {n["text"]: n for n in result.extra["tree"]["nodes"]}
    assert nodes[WRONG]["check"] is False and nodes[RIGHT]["check"] is True
    rounds = result.extra["rounds"]
    assert [len(r["leaves"]) for r in rounds] == [1, 1, 1]  # root, path A (two 21s: worth 0), then path B
    assert rounds[-1]["passed_check"] and ledger.engine_calls == 3  # stopped there, a round before the last


async def test_without_a_final_check_terminal_check_changes_nothing():
    scorer = RuleScorer(table={"path A": 0.9, WRONG: 0.95, "path B": 0.2, RIGHT: 0.1})
    task = make_task(question=QUESTION)
    texts = []
    for terminal_check in (True, False):
        params = dict(num_samples=2, num_iterations=4, terminal_check=terminal_check)
        result, _ = await run("mcts", Policy(liked_dead_end), scorer, task=task, **params)
        texts.append(result.choices[0].text)
    assert texts == ["path A\n\n" + WRONG] * 2
