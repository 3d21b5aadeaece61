"""The reasoning format of ``ponder train sft --format reasoning`` and the shipped ``models/reasoning-policy``.

The data (full, premature and Wait traces inside ``<think>``...``</think>``), the token additions, the config's
checks, and vLLM's own ``deepseek_r1`` reasoning parser on the shipped tokenizer. Fast: no training, no engine.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoTokenizer

from server.tiny_models import build_char_tokenizer
from training.sft import PolicySFTConfig, add_reasoning_tokens, build_policy, model_card
from training.sft_data import (
    REASONING_PARSER,
    THINK_END,
    THINK_START,
    WAIT,
    add_think_tokens,
    displaced_characters,
    plan_reasoning,
    reasoning_rows,
    reasoning_solution,
    tokenized_rows,
)
from training.tasks import get_task
from training.tasks.arith import parse_question, results

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "reasoning-policy"
SOLUTION = "(1) Add 3: 4 + 3 = 7\n\n(2) Multiply by 2: 7 * 2 = 14\n\n(3) Subtract 5: 14 - 5 = 9\n\n\\boxed{9}"
SAMPLE = "<think>\n(1) Add 3: 4 + 3 = 7\n\nWait\n\n(2) Multiply by 2: 7 * 2 = 14\n\n</think>\n\n\\boxed{14}"


def test_think_tags_are_appended_single_tokens_kept_by_skip_special_tokens():
    tokenizer = build_char_tokenizer()
    before = dict(tokenizer.get_vocab())
    start, end = add_think_tokens(tokenizer)
    assert (start, end) == (len(before), len(before) + 1) == (104, 105)
    assert {k: v for k, v in tokenizer.get_vocab().items() if k in before} == before  # no id moved
    assert add_think_tokens(tokenizer) == (start, end) and len(tokenizer) == len(before) + 2  # idempotent
    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert ids[0] == start and ids.count(start) == 1 and ids.count(end) == 1
    assert len(ids) == len(SAMPLE) - len(THINK_START) - len(THINK_END) + 2  # every other character one token
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE  # vLLM's default decoding keeps the tags
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""


def test_full_premature_and_wait_traces():
    full = reasoning_solution(SOLUTION)
    assert full == (
        "<think>\n(1) Add 3: 4 + 3 = 7\n\n(2) Multiply by 2: 7 * 2 = 14\n\n(3) Subtract 5: 14 - 5 = 9\n\n"
        "</think>\n\n\\boxed{9}"
    )
    # </think> where the plain format's \boxed was: after the last step's blank line
    assert full.replace("<think>\n", "").replace("</think>\n\n", "") == SOLUTION
    premature = reasoning_solution(SOLUTION, "premature", 2)
    assert premature == "<think>\n(1) Add 3: 4 + 3 = 7\n\n(2) Multiply by 2: 7 * 2 = 14\n\n</think>\n\n\\boxed{14}"
    wait = reasoning_solution(SOLUTION, "wait", 2)
    assert wait == (
        "<think>\n(1) Add 3: 4 + 3 = 7\n\n(2) Multiply by 2: 7 * 2 = 14\n\nWait\n\n(3) Subtract 5: 14 - 5 = 9\n\n"
        "</think>\n\n\\boxed{9}"
    )
    # budget forcing's cut: the premature trace up to </think>, plus "Wait", is the start of the Wait trace
    assert wait.startswith(premature[: premature.index(THINK_END)] + WAIT)
    for kind, stop_after in [("premature", 0), ("premature", 3), ("wait", 3), ("nope", 1)]:
        with pytest.raises(ValueError):
            reasoning_solution(SOLUTION, kind, stop_after)
    with pytest.raises(ValueError, match="boxed"):
        reasoning_solution("(1) Add 3: 4 + 3 = 7")


def test_rows_grade_as_intended_on_arith():
    task = get_task("arith")
    problems = task.load("train", limit=300, level=[2, 3, 4, 5, 6], seed=3)
    rows, mix = reasoning_rows(task, problems, 0.25, 0.2, seed=3)
    plan = plan_reasoning(problems, 0.25, 0.2, seed=3)
    assert sum(mix.values()) == len(rows) == len(problems)
    premature_right = 0
    for problem, row, (kind, stop_after) in zip(problems, rows, plan, strict=True):
        assert row["prompt"] == [{"role": "user", "content": task.prompt(problem)}]
        text = row["completion"][0]["content"]
        assert text.startswith(THINK_START + "\n") and text.count(THINK_END) == 1
        thinking, answer = text.split(THINK_END)
        assert "\\boxed" not in thinking and answer.startswith("\n\n\\boxed{")
        assert (WAIT in thinking) == (kind == "wait")
        start, ops = parse_question(problem.question)
        if kind == "premature":
            assert answer == f"\n\n\\boxed{{{results(start, ops)[stop_after - 1]}}}"
            premature_right += task.grade(problem, text)
        else:  # full and wait: every step, the right answer
            assert task.grade(problem, text)
            assert len(re.findall(r"^\(\d+\) ", thinking, re.M)) == len(ops)
    assert premature_right < mix["premature"] / 4  # premature answers are usually wrong


def test_the_mix_follows_the_shares_is_seeded_and_one_step_problems_are_full():
    task = get_task("arith")
    problems = task.load("train", limit=2000, level=[2, 3, 4, 5, 6])
    plan = plan_reasoning(problems, 0.25, 0.2, seed=0)
    shares = {kind: sum(k == kind for k, _ in plan) / len(plan) for kind in ("full", "premature", "wait")}
    assert abs(shares["premature"] - 0.25) < 0.04 and abs(shares["wait"] - 0.2) < 0.04
    assert plan == plan_reasoning(problems, 0.25, 0.2, seed=0) != plan_reasoning(problems, 0.25, 0.2, seed=1)
    assert plan != plan_reasoning(problems, 0.25, 0.2, seed=0, salt="val")
    for problem, (kind, stop_after) in zip(problems, plan, strict=True):
        steps = problem.meta["level"]
        assert (kind == "full" and stop_after == 0) or 1 <= stop_after < steps
    stops = [k for kind, k in plan if kind != "full"]
    assert min(stops) == 1 and max(stops) == 5  # k uniform in 1..n-1
    one_step = task.load("train", limit=50, level=1)
    assert {kind for kind, _ in plan_reasoning(one_step, 0.5, 0.5, seed=0)} == {"full"}
    assert {kind for kind, _ in plan_reasoning(problems[:50], 0.0, 0.0, seed=0)} == {"full"}


def test_tokenized_completions_carry_the_tags_as_single_ids_with_the_loss():
    tokenizer = build_char_tokenizer()
    start, end = add_think_tokens(tokenizer)
    task = get_task("arith")
    rows, _ = reasoning_rows(task, task.load("train", limit=8, level=3), 0.25, 0.2)
    for row in tokenized_rows(tokenizer, rows):
        completion = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        assert completion[0] == start and completion.count(end) == 1
        assert tokenizer.eos_token_id in completion
        prompt = row["input_ids"][: len(row["input_ids"]) - len(completion)]
        assert start not in prompt and tokenizer.decode(prompt).endswith("<|assistant|>\n")  # the model opens <think>


def test_config_checks_the_format_and_shares(tmp_path):
    def config(**kw):
        return PolicySFTConfig.from_preset("tiny", output_dir=str(tmp_path), **kw)

    assert config().format == "plain"
    assert (config(format="reasoning").premature_share, config().wait_share) == (0.1, 0.1)
    for bad in [{"format": "r1"}, {"format": "reasoning", "premature_share": 0.7, "wait_share": 0.4}]:
        with pytest.raises(ValueError):
            config(**bad)
    with pytest.raises(ValueError, match="value examples"):
        config(format="reasoning", task="game24", value_examples_per_problem=1)


def test_adding_the_tokens_keeps_the_padded_vocab_and_starts_new_rows_at_the_mean(tmp_path):
    tokenizer = build_char_tokenizer()
    model = build_policy(PolicySFTConfig.from_preset("tiny", output_dir=str(tmp_path)), tokenizer)
    old = model.get_input_embeddings().weight[:104].clone()
    ids = add_reasoning_tokens(model, tokenizer)
    assert ids == (104, 105) and model.config.vocab_size == 128 and model.config.hidden_size // 2 == 32
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert torch.allclose(matrix[104], matrix[:104].mean(0)) and torch.equal(matrix[104], matrix[105])
    assert torch.equal(model.get_input_embeddings().weight[:104], old)
    assert model.config.ponder_reasoning_parser == REASONING_PARSER == "deepseek_r1"
    assert "ponder_reasoning_parser" in model.config.to_dict()
    before = model.get_output_embeddings().weight[:106].clone()
    assert add_reasoning_tokens(model, tokenizer) == ids  # a reasoning policy trained further: rows untouched
    assert torch.equal(model.get_output_embeddings().weight[:106], before)


def test_output_rows_start_from_the_characters_the_tags_displace(tmp_path):
    tokenizer = build_char_tokenizer()
    model = build_policy(PolicySFTConfig.from_preset("tiny", output_dir=str(tmp_path)), tokenizer)
    like = displaced_characters(get_task("arith").load("train", limit=20, level=[1, 4]))
    assert like == {THINK_START: "(", THINK_END: "\\"}
    add_reasoning_tokens(model, tokenizer, like=like)
    out, inputs = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert torch.equal(out[104], out[tokenizer.convert_tokens_to_ids("(")])
    assert torch.equal(out[105], out[tokenizer.convert_tokens_to_ids("\\")])
    assert torch.allclose(inputs[104], inputs[:104].mean(0))  # what follows a tag is new: no copied input row


def test_the_card_describes_the_mix_and_the_tags():
    config = {"save_dtype": "bfloat16", "num_train_epochs": 1.0, "per_device_train_batch_size": 32}
    metrics = {
        "task": "arith", "preset": "default", "seed": 44, "num_hidden_layers": 4, "hidden_size": 256,
        "num_parameters": 1, "head_dim": 32, "model_bytes": 1e6, "init_from": "models/default-policy",
        "num_train_problems": 100, "train_problems_per_level": {"2": 100}, "optimizer_steps": 4,
        "tokens_seen": 10, "completion_tokens_per_epoch": 5, "tokens_per_s": 1, "train_time_s": 60,
        "total_time_s": 120, "final_loss": 0.1, "format": "reasoning", "reasoning_parser": "deepseek_r1",
        "think_token_ids": {"<think>": 104, "</think>": 105},
        "reasoning_mix": {"full": 55, "premature": 25, "wait": 20},
        "config": {**config, "premature_share": 0.25, "wait_share": 0.2},
        "displaced_characters": {"<think>": "(", "</think>": "\\"},
    }  # fmt: skip
    card = model_card(metrics)
    assert "thinking length matters" in card and "token 104" in card and "token 105" in card
    assert "(`(` for `<think>`, `\\` for `</think>`)" in card
    assert "**premature** (25, 25%)" in card and "**wait** (20, 20%)" in card and "deepseek_r1" in card


# ---- the shipped checkpoint ---------------------------------------------------------------------------------------
def test_shipped_checkpoint_names_its_parser_and_has_single_token_tags():
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["ponder_reasoning_parser"] == "deepseek_r1"
    assert config["hidden_size"] // config["num_attention_heads"] == 32
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    assert tokenizer.convert_tokens_to_ids([THINK_START, THINK_END]) == [104, 105] and len(tokenizer) <= 128
    assert tokenizer.encode(THINK_END, add_special_tokens=False) == [105]
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    assert metrics["format"] == "reasoning" and metrics["think_token_ids"] == {"<think>": 104, "</think>": 105}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True)
    assert tokenizer.decode(prompt).endswith("<|assistant|>\n")
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 10_000_000  # a few MB


def test_vllms_deepseek_r1_parser_splits_the_shipped_tokenizers_output():
    import vllm.reasoning as reasoning

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    parser = reasoning.ReasoningParserManager.get_reasoning_parser("deepseek_r1")(tokenizer)
    assert (parser.start_token_id, parser.end_token_id) == (104, 105)
    thinking, content = parser.extract_reasoning(SAMPLE, request=None)
    assert thinking == "\n(1) Add 3: 4 + 3 = 7\n\nWait\n\n(2) Multiply by 2: 7 * 2 = 14\n\n"
    assert content == "\n\n\\boxed{14}"
    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert parser.is_reasoning_end(ids) and not parser.is_reasoning_end(ids[: ids.index(105)])
    assert tokenizer.decode(parser.extract_content_ids(ids)) == content
    assert parser.count_reasoning_tokens(ids) == len(thinking)  # one token per character inside the tags
    still_thinking = SAMPLE[: SAMPLE.index(THINK_END)]  # stopped (length) before </think>: all reasoning
    assert parser.extract_reasoning(still_thinking, request=None) == (still_thinking[len(THINK_START) :], None)
