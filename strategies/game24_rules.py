r"""The rules of the Game of 24 that a request can be checked against: exact arithmetic on an expression and the
numbers a question names. :mod:`strategies.checks` binds them to a question (``final_check="game24"``);
:mod:`training.tasks.game24` builds its solver, grader and step labels on them.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

TARGET = 24
_QUESTION = re.compile(r"Use the numbers ([\d ]+) and ")
_LATEX = {"\\times": "*", "\\cdot": "*", "×": "*", "\\div": "/", "÷": "/", "−": "-", "\\left": "", "\\right": ""}
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def combine(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """``a op b``, or None for a division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b else None


def evaluate(expression: str) -> tuple[Fraction, list[Fraction]] | None:
    """The exact value of an arithmetic expression and the numbers it uses, or None if it is not one.

    >>> evaluate("(4 + 8) * (6 - 4)")
    (Fraction(24, 1), [Fraction(4, 1), Fraction(8, 1), Fraction(6, 1), Fraction(4, 1)])
    """
    for written, op in _LATEX.items():
        expression = expression.replace(written, op)
    expression = expression.split("=")[0]
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return None
    numbers: list[Fraction] = []

    def walk(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(Fraction(node.value))
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if left is None or right is None:
                return None
            return combine(left, _BINOPS[type(node.op)], right)
        return None

    value = walk(tree)
    return None if value is None else (value, numbers)


def expression_solves(expression: str, numbers: Sequence[int]) -> bool:
    """Whether ``expression`` uses exactly ``numbers`` (each once) and equals 24."""
    result = evaluate(expression)
    return result is not None and result[0] == TARGET and Counter(result[1]) == Counter(Fraction(n) for n in numbers)


def numbers_in(text: str) -> list[int] | None:
    """The numbers of the first "Use the numbers ... and" in ``text`` (a question, or a prompt that holds one)."""
    found = _QUESTION.search(text)
    return None if found is None else [int(x) for x in found.group(1).split()]
