"""CHAMP's 540 annotated model solutions as ProcessBench items: real first-error-step data for ``ponder eval prm``.

CHAMP (Mao et al. 2024, "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs' Mathematical
Reasoning Capabilities") ships 270 competition problems with model solutions annotated at their first wrong
step (``fws_annotations``: the solution text and the character span of the first wrong step, ``None`` when the
solution is right). The PyPI package ``champ-dataset`` holds them (``make install`` adds it); we read its JSON file
without importing the package (its import needs ``natsort``).

Each solution becomes ``{"id", "problem", "steps", "label", "final_answer_correct"}``: steps are the solution's
paragraphs (split on blank lines), ``label`` the index of the paragraph where the first wrong span starts, -1 when
the annotators found no error. ``ponder eval prm --data champ`` reads them directly;
``ponder eval champ --output FILE.jsonl`` writes them as ProcessBench JSONL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

PARAGRAPH = re.compile(r"\n\s*\n")


def champ_file() -> Path:
    """The package's ``v0.json``; FileNotFoundError with the install command when it is missing."""
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("champ-dataset is not installed (pip install --no-deps champ-dataset==1.0.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_files" / "v0.json"


def paragraphs(text: str) -> list[tuple[int, str]]:
    """(start offset, paragraph) for every non-empty paragraph of ``text``."""
    out, start = [], 0
    for cut in [*PARAGRAPH.finditer(text), None]:
        end = cut.start() if cut else len(text)
        if text[start:end].strip():
            out.append((start, text[start:end].strip()))
        start = cut.end() if cut else end
    return out


def first_wrong_paragraph(parts: list[tuple[int, str]], start_idx: int) -> int:
    """Index of the paragraph holding character ``start_idx``."""
    index = 0
    for i, (offset, _) in enumerate(parts):
        if offset <= start_idx:
            index = i
    return index


def champ_items() -> list[dict[str, Any]]:
    """Every annotated solution as a ProcessBench item (see the module docstring)."""
    data = json.loads(champ_file().read_text())
    items = []
    for pid, problem in data["problems"].items():
        for who, annotation in problem["fws_annotations"].items():
            parts = paragraphs(annotation["text"])
            start = annotation.get("start_idx")
            wrong = start not in (None, "None")
            label = first_wrong_paragraph(parts, int(start)) if wrong else -1
            items.append(
                {
                    "id": f"{pid}|{who}",
                    "problem": problem["_text"],
                    "steps": [p for _, p in parts],
                    "label": label,
                    "final_answer_correct": not wrong,
                }
            )
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder eval champ", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="ProcessBench JSONL file to write")
    args = parser.parse_args(argv)
    try:
        items = champ_items()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"wrote {len(items)} solutions ({sum(i['label'] >= 0 for i in items)} with an error) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
