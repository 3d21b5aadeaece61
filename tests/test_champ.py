"""CHAMP's annotated solutions as ProcessBench items (``ponder eval prm --data champ``)."""

from __future__ import annotations

import json

from training.champ import champ_items, first_wrong_paragraph, main, paragraphs
from training.evaluate import load_items


def test_paragraph_offsets_and_the_wrong_one():
    text = "First step.\n\nSecond step,\nstill second.\n\n  \n\nThird."
    parts = paragraphs(text)
    assert [p for _, p in parts] == ["First step.", "Second step,\nstill second.", "Third."]
    assert first_wrong_paragraph(parts, text.index("still")) == 1
    assert first_wrong_paragraph(parts, text.index("Third")) == 2
    assert first_wrong_paragraph(parts, 0) == 0


def test_all_540_solutions_load_with_first_error_labels():
    items = champ_items()
    assert len(items) == 540
    assert all(-1 <= item["label"] < len(item["steps"]) for item in items)
    assert {item["final_answer_correct"] for item in items} == {True, False}
    assert sum(item["label"] == -1 for item in items) == sum(item["final_answer_correct"] for item in items)
    loaded = load_items("champ")
    assert [i["label"] for i in loaded] == [i["label"] for i in items]


def test_writes_processbench_jsonl(tmp_path, capsys):
    out = tmp_path / "champ.jsonl"
    assert main(["--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 540 and set(rows[0]) >= {"problem", "steps", "label"}
    assert "wrote 540 solutions" in capsys.readouterr().out
