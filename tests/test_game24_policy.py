"""The shipped Game of 24 models load and answer in the formats Tree of Thoughts reads: the policy's verdicts to the
value prompt and its solutions, the PRM's step scores.

How good they are (verdicts that agree with the solver, puzzles solved, the PRM's AUROC per depth) is measured by
``ponder bench check-models`` (benchmarks/check_models.py), not asserted here. Train-split puzzles only.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from strategies.search import VALUE_TOKENS, self_value, value_query
from training.evaluate_policy import chat_prompt
from training.tasks import get_task
from training.tasks.game24 import file_train_rows

GAME24_POLICY = Path(__file__).resolve().parents[1] / "models" / "game24-policy"
GAME24_PRM = GAME24_POLICY.parent / "game24-prm"
game24 = get_task("game24")


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def test_the_policy_gives_one_verdict_and_solutions_in_the_steps_format() -> None:
    """To the value prompt that ``tree_of_thought`` and ``mcts`` send, the greedy answer is one of sure / likely /
    impossible; to a puzzle, steps of the form ``a op b = c (left: ...)`` that the task's checker reads, then a
    boxed expression."""
    tokenizer = AutoTokenizer.from_pretrained(GAME24_POLICY)
    model = AutoModelForCausalLM.from_pretrained(GAME24_POLICY, dtype=torch.float32).eval()
    problems = game24.load("train", limit=file_train_rows() + 3, seed=7)[-3:]  # past the file rows: generated
    rng = random.Random(0)
    cases = [(p, *game24.value_example(p, rng)) for p in problems]
    prompts = [value_query(chat_prompt(tokenizer, game24, p), partial) for p, partial, _ in cases]
    verdicts = [self_value([text])[1] for text in greedy(model, tokenizer, prompts, VALUE_TOKENS)]
    assert all(sum(v.values()) == 1 for v in verdicts), verdicts
    solutions = greedy(model, tokenizer, [chat_prompt(tokenizer, game24, problems[0])], game24.max_tokens)
    steps = game24.steps(solutions[0])
    assert len(steps) >= 2 and "(left: " in steps[0] and steps[-1].startswith("\\boxed{"), solutions[0]
    assert len(game24.check_steps(problems[0], solutions[0])) == len(steps)  # one verdict of the checker per step


def test_the_prm_scores_every_step_of_a_solver_path() -> None:
    """The shipped Game of 24 PRM (``make game24-prm``) reads solver paths: one probability per step."""
    from benchmarks.game24_value import solver_states
    from reward_models.torch_prm import load_reward_model, score_steps

    model, tokenizer = load_reward_model(GAME24_PRM)
    _, items, labels = solver_states(puzzles=3, paths=2, seed=7, split="train")
    scores = score_steps(model, tokenizer, items)
    assert [len(s) for s in scores] == [len(steps) for _, steps in items] == [len(lab) for lab in labels]
    assert all(0.0 <= s <= 1.0 for row in scores for s in row) and len({s for row in scores for s in row}) > 1


def test_the_value_benchmark_refuses_what_is_not_a_model(tmp_path: Path, capsys) -> None:
    from benchmarks.game24_value import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(GAME24_PRM), "--puzzles", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "--puzzles" in err and "Traceback" not in err
