"""``ponder bench thinking-length``: the thinking of full reference traces, counted in the reasoning policy's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.thinking_length import main, measure, summary, thinking_text

MODEL = Path(__file__).resolve().parents[1] / "models" / "reasoning-policy"


def test_thinking_length_of_a_few_train_problems(tmp_path: Path) -> None:
    assert thinking_text("<think>\n(1) Add 3: 4 + 3 = 7\n\n</think>\n\n\\boxed{7}") == "\n(1) Add 3: 4 + 3 = 7\n\n"
    assert summary([3, 1, 2, 10]) | {"q1": 0, "q3": 0} == {
        "problems": 4,
        "median": 2.5,
        "q1": 0,
        "q3": 0,
        "mean": 4.0,
        "min": 1,
        "max": 10,
        "k": 3,
    }
    if not (MODEL / "tokenizer.json").is_file():
        pytest.skip("models/reasoning-policy is not shipped in this checkout")
    from transformers import AutoTokenizer

    from training.sft_data import reasoning_solution
    from training.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    rows = measure(tokenizer, [2, 4], "train", 5)
    problems = get_task("arith").load("train", limit=5, seed=0, level=4)
    thinking = thinking_text(reasoning_solution(problems[0].solution or "", "full"))
    # a character-level vocabulary: one token per character of the thinking
    assert len(tokenizer(thinking, add_special_tokens=False)["input_ids"]) == len(thinking)
    assert rows[2]["problems"] == rows[4]["problems"] == 5
    assert rows[2]["median"] < rows[4]["median"]  # more steps, longer thinking
    assert rows[4]["q1"] <= rows[4]["median"] <= rows[4]["q3"] and rows[4]["k"] >= rows[4]["median"]
    assert main(["--model", str(MODEL), "--level", "4", "--limit", "3", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "thinking-length.json").is_file() and (tmp_path / "thinking-length.md").is_file()
    assert main(["--model", str(MODEL), "--level", "9"]) == 2
    assert main(["--model", str(MODEL), "--split", "nope"]) == 2
    assert main(["--model", str(tmp_path), "--level", "4"]) == 2
