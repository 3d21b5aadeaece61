"""The one place a request's fields become the engine's sampling options, and the fields Ponder refuses.

Ponder's requests are vLLM's own request models (:mod:`server.protocol`), so every field keeps vLLM's meaning. A
strategy owns ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` and ``logprobs`` of each engine
call it makes; every other sampling field the client sets is collected here by :func:`engine_options`, under vLLM's
``SamplingParams`` names, and applied to every sample of every strategy (:class:`strategies.base.SamplingSpec`
``options``). A field that cannot mean anything for Ponder, or for one strategy, is a 400 that says why
(:func:`refusals`); a field nobody defines is a 400 from the request model itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Sampling fields passed to the engine unchanged, for every sample (vLLM's request and SamplingParams share names).
PASSED: dict[str, Any] = {  # name -> the value that means "not set"
    "top_k": None,
    "min_p": None,
    "repetition_penalty": None,
    "presence_penalty": None,
    "frequency_penalty": None,
    "min_tokens": 0,
    "stop_token_ids": [],
    "bad_words": [],
    "logit_bias": None,
    "allowed_token_ids": None,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "watermarking": None,
    "thinking_token_budget": None,
    "repetition_detection": None,
}

# vLLM fields Ponder does not act on, with the reason; refused when set to anything but their default.
REFUSED: dict[str, tuple[Any, str]] = {
    "use_beam_search": (False, "vLLM's token-level beam search: use strategy 'beam_search' (step-level, PRM-guided)"),
    "length_penalty": (1.0, "only vLLM's use_beam_search reads it"),
    "echo": (False, "Ponder returns the generated text only"),
    "prompt_logprobs": (None, "Ponder returns the chosen answer's logprobs only"),
    "logprob_token_ids": (None, "logprobs of chosen token ids are not returned by Ponder"),
    "return_tokens_as_token_ids": (None, "Ponder returns tokens as text"),
    "return_token_ids": (None, "a strategy's answer may join several engine calls: its token ids are not returned"),
    "return_token_offsets": (None, "token offsets are not returned by Ponder"),
    "return_prompt_text": (None, "the prompt text is not returned by Ponder"),
    "truncate_prompt_tokens": (None, "Ponder does not truncate prompts; a prompt too long is a 400"),
    "add_special_tokens": (False, "the prompt's special tokens are the chat template's, else the tokenizer's BOS"),
    "kv_transfer_params": (None, "disaggregated prefill is not used by Ponder"),
    "ec_transfer_params": (None, "disaggregated encoding is not used by Ponder"),
    "mm_processor_kwargs": (None, "Ponder serves text models"),
    "media_io_kwargs": (None, "Ponder serves text models"),
    "return_mm_kwargs": (None, "Ponder serves text models"),
    "cache_salt": (None, "prefix-cache salting is not supported by Ponder"),
    "priority": (0, "Ponder's engine schedules first come, first served"),
    "session_id": (None, "Ponder keeps no sessions"),
    "stream_interval": (None, "Ponder streams each delta as the engine gives it"),
    "routed_experts_prompt_start": (0, "expert routing is not returned by Ponder"),
    "suffix": (None, "no Ponder model supports insertion (suffix)"),
    "prompt_embeds": (None, "Ponder takes text prompts"),
}

# Constraints on a whole sample: a strategy that draws its solutions in steps cannot honour them.
WHOLE_SAMPLE = {
    "structured_outputs": "a grammar constrains one whole sample, and this strategy draws each solution in steps",
    "min_tokens": "min_tokens would hold for every step, not the solution, as this strategy draws it in steps",
}


def engine_options(request: Any, structured_outputs: Any = None) -> dict[str, Any]:
    """The request's sampling fields under vLLM's ``SamplingParams`` names, only those the client set.

    ``structured_outputs``: the request's constraint as vLLM normalises it (``response_format``, ``structured_outputs``
    or a forced tool call: :func:`server.output.structured_outputs_of`)."""
    options = {
        name: value
        for name, unset in PASSED.items()
        if (value := vars(request).get(name, unset)) != unset and value is not None
    }
    if structured_outputs is not None:
        options["structured_outputs"] = structured_outputs
    extra = getattr(request, "vllm_xargs", None)
    if extra:
        options["extra_args"] = dict(extra)
    return options


def refusals(request: Any) -> tuple[str, str] | None:
    """The first field the request sets that Ponder does not act on, with the reason; None when there is none.

    A field is "set" when it differs from its default in the request's own model (vLLM's chat request does not
    add special tokens by default, its completions request does: either default is what Ponder does)."""
    fields = getattr(type(request), "model_fields", {})
    for name, (default, why) in REFUSED.items():
        if name in fields and fields[name].default is not None:
            default = fields[name].default
        value = vars(request).get(name, default)  # vars: no deprecation warning from reading a field
        if value is not None and value is not False and value != default or (value is False and default is True):
            return name, why
    return None


def whole_sample_refusal(options: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first option that only a strategy drawing whole samples can honour, with the reason; None if none."""
    for name, why in WHOLE_SAMPLE.items():
        if options.get(name):
            return name, why
    return None


def json_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as JSON request fields of vLLM's OpenAI server (the remote backend sends them on)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name == "extra_args":
            out["vllm_xargs"] = value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[name] = {
                k: v for k, v in dataclasses.asdict(value).items() if v is not None and v is not False and k[0] != "_"
            }
        else:
            out[name] = value
    return out
