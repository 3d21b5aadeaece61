r"""Final-answer extraction and equivalence, shared by the voting strategies and the graders.

Extraction tries, in order: the last ``\boxed{...}`` (balanced braces), "the answer is X", the last number.
Equivalence goes through math-verify (``parse`` + ``verify``), with a cheap exact-string check first. A sampled
answer can be anything, and sympy can spend minutes on some (solving a quartic a model wrote as its answer, say),
holding up the server's event loop: on the main thread, where the server and the benchmarks run, each parse and
each comparison gets math-verify's own timeout (``SYMPY_TIMEOUT_S``, a SIGALRM), and a timed-out pair is simply not
equal. Signals work only on the main thread, so elsewhere the timeouts are off; there, and everywhere, answers longer
than ``MAX_SYMBOLIC_CHARS`` are compared as strings only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.$|$|\n)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
SYMPY_TIMEOUT_S = 1  # per parse and per comparison (math-verify's signal-based timeout: whole seconds)
MAX_SYMBOLIC_CHARS = 200  # longer answers are compared as normalised strings only


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` in ``text``, braces balanced.

    >>> last_boxed(r"so \boxed{\frac{1}{2}} and \boxed{3}")
    '3'
    >>> last_boxed(r"\boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a solution states, or None when it states none.

    >>> extract_answer("3 + 4 = 7\\n\\nThe answer is 7.")
    '7'
    >>> extract_answer("I get 1,200 apples")
    '1200'
    """
    boxed = last_boxed(text)
    if boxed:
        return boxed
    said = _ANSWER_IS.findall(text)
    if said:
        return said[-1].strip().rstrip(".")
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def _normalise(answer: str) -> str:
    return answer.strip().strip("$").replace(" ", "").replace(",", "").rstrip(".")


def _timeout() -> int | None:
    """math-verify's timeout: ``SYMPY_TIMEOUT_S`` on the main thread (SIGALRM is delivered there only), else none."""
    return SYMPY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple:
    # deferred import: math-verify (sympy, slow to import) only for answers that need it
    from math_verify import parse

    return tuple(parse(f"${answer}$", parsing_timeout=_timeout()))


@lru_cache(maxsize=16384)
def equivalent(a: str, b: str) -> bool:
    """Whether two extracted answers are the same mathematical object.

    >>> equivalent("0.5", "\\\\frac{1}{2}")
    True
    >>> equivalent("7", "8")
    False
    """
    if _normalise(a) == _normalise(b):
        return True
    if max(len(a), len(b)) > MAX_SYMBOLIC_CHARS:
        return False
    # deferred import: math-verify (sympy, slow to import) only for answers that need it
    from math_verify import verify

    pa, pb = _parsed(a), _parsed(b)
    if not pa or not pb:
        return False
    try:
        return bool(verify(list(pa), list(pb), timeout_seconds=_timeout()))
    except Exception:  # math-verify raises on exotic sympy objects; they are simply not equal
        return False


def cluster(answers: Sequence[str | None], same: Callable[[str, str], bool] = equivalent) -> list[list[int]]:
    """Group indices of answers that are ``same`` (None answers are left out), largest group first, ties by first
    seen."""
    groups: list[tuple[str, list[int]]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for representative, members in groups:
            if same(representative, answer):
                members.append(i)
                break
        else:
            groups.append((answer, [i]))
    return [members for _, members in sorted(groups, key=lambda g: -len(g[1]))]
