"""The real Qwen3 chat template and vLLM's Qwen3 parsers on the real tokenizer (tests/qwen3.py), without an engine.

What a Qwen3 served by vLLM goes through around the model: the template renders thinking on and off, tools into the
system prompt, a tool call and its result; vLLM's ``qwen3`` reasoning parser splits ``<think>`` from the answer and
its ``hermes`` tool parser reads ``<tool_call>`` blocks, here on fixed strings and on what the template itself wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager

from tests import qwen3
from tests.qwen3 import build_tiny_qwen3, load_qwen3_tokenizer

USER = [{"role": "user", "content": "What is 2+2?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_CALL = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen3_tokenizer()


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def request(**kwargs) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="qwen3", messages=USER, **kwargs)


def test_a_missing_tokenizer_fails_and_names_make_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qwen3, "QWEN3_TOKENIZER", tmp_path / "nowhere")
    with pytest.raises(pytest.fail.Exception, match="make install") as failure:
        qwen3.require_qwen3_tokenizer()
    assert "tokenizer.json" in str(failure.value) and "PONDER_QWEN3_TOKENIZER" in str(failure.value)


def test_the_folder_holds_the_real_qwen3_tokenizer(tokenizer) -> None:
    assert len(tokenizer) == 151_669  # Qwen3's 151,643 base tokens and its 26 added ones
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<tool_call>", "<think>", "</think>"])
    assert ids == [151643, 151645, 151657, 151667, 151668]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.encode("<think>a</think>b") == [151667, 64, 151668, 65]  # tags are one token each


def test_thinking_off_renders_an_empty_think_block(tokenizer) -> None:
    prompt = render(tokenizer, USER, add_generation_prompt=True, enable_thinking=False)
    assert prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_thinking_on_leaves_the_assistant_turn_open(tokenizer) -> None:
    expected = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert render(tokenizer, USER, add_generation_prompt=True, enable_thinking=True) == expected
    assert render(tokenizer, USER, add_generation_prompt=True) == expected  # thinking is the default


def test_reasoning_is_kept_on_the_last_turn_and_dropped_from_earlier_ones(tokenizer) -> None:
    answered = [*USER, {"role": "assistant", "content": "4", "reasoning_content": "2 and 2 make 4"}]
    assert render(tokenizer, answered).endswith(
        "<|im_start|>assistant\n<think>\n2 and 2 make 4\n</think>\n\n4<|im_end|>\n"
    )
    history = [
        *USER,
        {"role": "assistant", "content": "<think>\n2 and 2\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ]
    prompt = render(tokenizer, history, add_generation_prompt=True)
    assert "<think>" not in prompt and "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?" in prompt


def test_tools_render_into_the_system_prompt(tokenizer) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    prompt = render(tokenizer, messages, tools=[WEATHER], add_generation_prompt=True)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n")
    listed = system.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(listed) == WEATHER
    assert "within <tool_call></tool_call> XML tags" in system
    assert render(tokenizer, messages, add_generation_prompt=True).count("<tools>") == 0  # no tools, no block


def test_a_tool_call_and_its_result_render(tokenizer) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call-1", "content": '{"temp": 21}'},
    ]
    prompt = render(tokenizer, messages, tools=[WEATHER], add_generation_prompt=True)
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n"
        '{"temp": 21}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_qwen3_reasoning_parser_splits_the_think_block(tokenizer) -> None:
    parser_class = ReasoningParserManager.get_reasoning_parser("qwen3")
    parser = parser_class(tokenizer)
    assert parser.extract_reasoning("<think>a</think>b", request()) == ("a", "b")
    assert parser.extract_reasoning("a</think>b", request()) == ("a", "b")  # the template opened <think> itself
    ids = tokenizer.encode("<think>a</think>b")
    assert parser.is_reasoning_end(ids) and not parser.is_reasoning_end(ids[:2])
    assert parser.extract_content_ids(ids) == tokenizer.encode("b")
    # with thinking off (the server passes the request's chat_template_kwargs) everything is the answer
    off = parser_class(tokenizer, chat_template_kwargs={"enable_thinking": False})
    assert off.extract_reasoning("b", request(chat_template_kwargs={"enable_thinking": False})) == (None, "b")


def test_the_hermes_tool_parser_reads_a_tool_call(tokenizer) -> None:
    tools_request = request(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    parser = ToolParserManager.get_tool_parser("hermes")(tokenizer, tools=tools_request.tools)
    parsed = parser.extract_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', tools_request)
    assert parsed.tools_called and parsed.content is None
    [call] = parsed.tool_calls
    assert call.type == "function" and call.function.name == "f" and json.loads(call.function.arguments) == {"x": 1}
    plain = parser.extract_tool_calls("no call here", tools_request)
    assert not plain.tools_called and plain.tool_calls == [] and plain.content == "no call here"


def test_a_tool_call_the_template_wrote_parses_back(tokenizer) -> None:
    """The assistant turn as the model would write it, in the template's own words, through the hermes parser."""
    prompt = render(tokenizer, USER, tools=[WEATHER], add_generation_prompt=True, enable_thinking=False)
    turn = render(tokenizer, [*USER, {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}], tools=[WEATHER])
    assert turn.startswith(prompt)
    completion = turn[len(prompt) :].removesuffix("<|im_end|>\n")
    tools_request = request(tools=[WEATHER])
    parsed = ToolParserManager.get_tool_parser("hermes")(tokenizer, tools=tools_request.tools).extract_tool_calls(
        completion, tools_request
    )
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_build_tiny_qwen3_writes_a_loadable_model_with_the_real_template(tokenizer, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_qwen3(tmp_path / "tiny-qwen3")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["vocab_size"] == len(tokenizer)
    assert config["head_dim"] >= 32  # vLLM's CPU attention needs it
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        embedding = weights.get_tensor("model.embed_tokens.weight")
    assert embedding.shape == (len(tokenizer), config["hidden_size"]) and embedding.dtype == torch.bfloat16
    saved = AutoTokenizer.from_pretrained(str(folder))
    assert saved.chat_template == tokenizer.chat_template and len(saved) == len(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode(render(tokenizer, USER, add_generation_prompt=True))])
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, vocab)
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    again = build_tiny_qwen3(tmp_path / "again")  # the same seed writes the same weights
    with safe_open(str(again / "model.safetensors"), "pt") as weights:
        assert torch.equal(weights.get_tensor("model.embed_tokens.weight"), embedding)
