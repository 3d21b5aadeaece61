"""GRPO: the verifier and format rewards, the prompt rows, two real TRL steps on a tiny policy, the saved folder.

Offline and CPU-only (generation through transformers). A random tiny policy never answers right, so every group
would score the same and GRPO's advantages, hence its gradient, would be zero: the training test adds a reward
that differs within every group (the completion's length) beside the real ones, and checks through TRL's logs that
the verifier's reward was computed on every completion.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.tiny_models import save_tiny_policy
from tests.fakes import arith_script, fake_vllm_engines
from training import cli, grpo
from training.grpo import PolicyGRPOConfig, VerifierReward, completion_text, format_reward, prompt_rows
from training.tasks import get_task


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), hidden=64, layers=1, heads=2)


def test_doctests():
    failures, tried = doctest.testmod(grpo)
    assert tried > 0 and failures == 0


def test_verifier_reward_is_one_for_a_right_final_answer_and_zero_otherwise():
    task = get_task("arith")
    problems = task.load("train", limit=2, level=3)
    reward = VerifierReward(task, problems)
    first, second = problems
    completions = [
        [{"role": "assistant", "content": first.solution}],  # TRL's conversational completion
        first.solution.rsplit("\\boxed", 1)[0] + f"\\boxed{{{int(first.answer) + 1}}}",  # right steps, wrong answer
        second.solution,
        "",
        "no answer at all",
    ]
    ids = [first.id, first.id, second.id, second.id, second.id]
    assert reward(completions, problem_id=ids, trainer_state=None) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert reward.__name__ == "correct"


def test_format_reward_wants_a_boxed_answer_at_the_end():
    texts = ["1 + 2 = 3\n\n\\boxed{3}\n", "\\boxed{}", "3", "\\boxed{3}\n\nmore", "\\boxed{-4}"]
    assert format_reward([[{"role": "assistant", "content": t}] for t in texts]) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert completion_text("plain") == "plain"


def test_prompt_rows_are_the_servers_user_message_with_the_problem_id():
    task = get_task("arith")
    problems = task.load("train", limit=2, level=1)
    rows = prompt_rows(task, problems)
    assert rows == [{"prompt": [{"role": "user", "content": task.prompt(p)}], "problem_id": p.id} for p in problems]


def test_format_reward_weight_sets_trls_reward_weights(tiny_policy, tmp_path):
    task = get_task("arith")
    config = PolicyGRPOConfig.from_preset("tiny", policy=str(tiny_policy), output_dir=str(tmp_path))
    assert config.reward_weights is None and len(grpo.reward_functions(task, [], 0.0)) == 1
    weighted = PolicyGRPOConfig.from_preset(
        "tiny", policy=str(tiny_policy), output_dir=str(tmp_path), format_reward_weight=0.2
    )
    assert weighted.reward_weights == [1.0, 0.2] and grpo.reward_functions(task, [], 0.2)[1] is format_reward


def test_grpo_trains_the_policy_and_saves_a_servable_folder(tiny_policy, tmp_path, monkeypatch):
    seen: list[str] = []

    def length_reward(completions, problem_id, **_):  # differs within every group: a gradient from a random policy
        seen.extend(problem_id)
        return [len(completion_text(c)) / 24 for c in completions]

    real = grpo.reward_functions
    monkeypatch.setattr(grpo, "reward_functions", lambda *args: [*real(*args), length_reward])
    out = tmp_path / "grpo"
    argv = ["grpo", "--preset", "tiny", "--policy", str(tiny_policy), "--output_dir", str(out)]
    assert cli.main([*argv, "--save_dtype", "float32"]) == 0
    initial = load_file(str(tiny_policy / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    changed = [k for k in initial if not torch.equal(initial[k], saved[k])]
    assert changed == list(initial)  # every tensor moved, by the gradient alone (no weight decay)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 2 and metrics["num_train_problems"] == 4
    problems = get_task("arith").load("train", limit=4, seed=42, level=1)
    assert len(seen) == 2 * 8 and set(seen) <= {p.id for p in problems}  # 2 steps x (2 prompts x 4 completions)
    assert metrics["last_log"]["rewards/correct/mean"] == 0.0 and metrics["last_log"]["reward_std"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("<s><|user|>\nhi</s>\n<|assistant|>\n", add_special_tokens=False, return_tensors="pt").input_ids
    assert model(ids).logits.shape[:2] == ids.shape and tokenizer.chat_template
    card = (out / "README.md").read_text()
    assert "ponder train grpo --preset tiny" in card and "Shao et al. 2024" in card
    assert (out / "loss.png").is_file() and not list(out.glob("checkpoint-*"))


def test_a_task_without_levels_trains_on_all_of_its_problems(tiny_policy, tmp_path):
    """game24 has no levels: the arith default levels give way to one pseudo-level, and its train problems load."""
    config = PolicyGRPOConfig.from_preset("tiny", task="game24", policy=str(tiny_policy), output_dir=str(tmp_path))
    assert config.levels == config.eval_levels == [0]
    problems = grpo.load_train_problems(config)
    assert len(problems) == config.num_train_problems and all(p.id.startswith("game24-") for p in problems)


@pytest.mark.parametrize(("task", "levels"), [("game24", [0]), ("arith", [2, 3])])
def test_skip_train_problems_draws_the_next_ones_of_each_level(tiny_policy, tmp_path, task, levels):
    """A second round (``--skip_train_problems K``) trains on the problems after the first K of each level."""
    make = lambda **kw: PolicyGRPOConfig.from_preset(  # noqa: E731
        "tiny", task=task, levels=levels, policy=str(tiny_policy), output_dir=str(tmp_path), **kw
    )
    first, wider = (
        grpo.load_train_problems(make(num_train_problems=4)),
        grpo.load_train_problems(make(num_train_problems=8)),
    )
    second = grpo.load_train_problems(make(num_train_problems=4, skip_train_problems=4 // len(levels)))
    assert len(second) == 4 and not {p.id for p in first} & {p.id for p in second}
    assert {p.id for p in second} <= {p.id for p in wider}
    assert [p.meta.get("level", 0) for p in second].count(levels[0]) == 4 // len(levels)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["grpo", "--use_vllm", "true"], "use_vllm"),
        (["grpo", "--format_reward_weight", "-1"], "must not be negative"),
        (["grpo", "--hard_fraction", "1.5"], "hard_fraction must be in [0, 1]"),
        (["grpo", "--skip_train_problems", "-1"], "skip_train_problems must not be negative"),
        (["grpo", "--task", "nope"], "unknown task 'nope'"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(argv, says, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_presets_and_defaults():
    tiny = cli.parse_config("grpo", ["--preset", "tiny"])
    assert (tiny.num_generations, tiny.per_device_train_batch_size, tiny.eval_after_training) == (4, 8, False)
    default = cli.parse_config("grpo", [])
    assert (default.num_generations, default.num_train_problems, default.beta) == (8, 320, 0.0)
    assert default.policy.endswith("models/default-policy") and not default.gradient_checkpointing


def test_accuracy_before_and_after_on_the_same_test_problems(tiny_policy, tmp_path, monkeypatch):
    """The whole command with its evaluation: the SFT policy and the tuned one measured on the same test problems,
    each on its own engine. Scripted engines: the SFT policy misses every level-2 problem, the tuned one none."""
    output = tmp_path / "tuned"
    started = fake_vllm_engines(
        monkeypatch,
        by_model=lambda model: arith_script(lambda q, i: model == str(tiny_policy) and q.count("(") == 2),
    )
    config = PolicyGRPOConfig.from_preset(
        "tiny",
        policy=str(tiny_policy),
        output_dir=str(output),
        eval_after_training=True,
        eval_levels=[1, 2],
        eval_problems_per_level=3,
        eval_kv_cache_gib=0.25,
    )
    metrics = grpo.train(config, command="ponder train grpo --preset tiny")
    assert [model for model, _, _ in started] == [str(tiny_policy), str(output)]
    assert all(engine.shut_down for _, _, engine in started)
    before, after = metrics["before"]["levels"], metrics["after"]["levels"]
    assert set(before) == set(after) == {"1", "2"} and before["1"]["num_problems"] == 3
    assert [before[lv]["greedy"] for lv in "12"] == [1.0, 0.0] and [after[lv]["greedy"] for lv in "12"] == [1.0, 1.0]
    assert metrics["gain"]["levels"] == {"1": 0.0, "2": 1.0}
    assert "| level | problems | SFT policy | after | gain |" in (output / "README.md").read_text()


def test_hard_prompts_are_the_policys_greedy_mistakes(tiny_policy, tmp_path, monkeypatch):
    """``hard_fraction``: the policy decodes a pool greedily on one engine; the chosen hard prompts are the ones it
    got wrong (here: a scripted policy that misses every problem whose start value is odd)."""

    def odd_start(question: str) -> bool:
        return int(question.split()[2].rstrip(".")) % 2 == 1

    started = fake_vllm_engines(monkeypatch, arith_script(lambda question, i: odd_start(question)))
    config = PolicyGRPOConfig(
        policy=str(tiny_policy),
        output_dir=str(tmp_path),
        levels=[6],
        num_train_problems=8,
        hard_pool_factor=3,
        hard_fraction=0.5,
        eval_kv_cache_gib=0.25,
    )
    task = get_task("arith")
    pool = task.load("train", limit=24, seed=config.seed, level=[6])
    wrong = asyncio.run(grpo.greedy_wrong(config, task, pool))
    assert wrong == [odd_start(p.question) for p in pool] and 0 < sum(wrong) < len(pool)
    ((_, _, engine),) = started
    assert engine.shut_down and [spec.temperature for _, spec in engine.calls] == [0.0]  # one greedy call
    chosen = grpo.choose_problems(config, task)
    hard = {p.id for p, w in zip(pool, wrong, strict=True) if w}
    assert len(chosen) == 8 and sum(p.id in hard for p in chosen) == min(4, len(hard))
