"""Tiny random-weight stand-ins for the causal-LM process reward models that :mod:`reward_models.causal_prm` serves.

Each is a ``LlamaForCausalLM`` over the character-level tokenizer of :mod:`server.tiny_models`, saved in the layout
of one real PRM so the adapter meets the same input format, vocabulary entries and config keys:

- ``math_shepherd``: peiyi9979/math-shepherd-mistral-7b-prm (Wang et al. 2024, "Math-Shepherd: Verify and Reinforce
  LLMs Step-by-step without Human Annotations"). The vocabulary holds the step tag ``ки``; ``+`` and ``-`` are
  characters.
- ``rlhflow``: RLHFlow/Llama3.1-8B-PRM-Deepseek-Data (Xiong et al. 2024, "An Implementation of Generative PRM",
  RLHFlow). A Llama-3-shaped chat template (header, blank line, content, end-of-turn); the labels are ``+``/``-``.

``config.json`` records ``ponder_prm_format``, which :func:`reward_models.load_scorer` reads when no format is
given. Shapes respect the vLLM CPU backend (head_dim >= 32, shared/PLATFORM.md); a build takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from server.tiny_models import build_char_tokenizer, tiny_config

MATH_SHEPHERD_STEP_TAG = "ки"  # Math-Shepherd's step tag (Cyrillic), one token of the stand-in's vocabulary

# Llama 3's layout, <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>, spelt with the tiny tokenizer's
# role tokens: <s><|user|>\n\nQUESTION STEP</s><|assistant|>\n\n+</s>... The label is predicted at the "\n" before it.
RLHFLOW_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n\\n' }}{% endif %}"
)


def save_tiny_causal_prm(
    path: str | Path,
    format: Literal["math_shepherd", "rlhflow"],
    seed: int = 0,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
) -> Path:
    """Write a random ``LlamaForCausalLM`` PRM stand-in in ``format`` (its tokenizer and chat template) to ``path``."""
    if format not in ("math_shepherd", "rlhflow"):
        raise ValueError(f"unknown causal PRM format {format!r}; known: 'math_shepherd', 'rlhflow'")
    path = Path(path)
    tokenizer = build_char_tokenizer(extra_tokens=(MATH_SHEPHERD_STEP_TAG,))
    if format == "rlhflow":
        tokenizer.chat_template = RLHFLOW_CHAT_TEMPLATE
    config = tiny_config(LlamaConfig, tokenizer, hidden, layers, heads)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    config_path = path / "config.json"
    config_dict = json.loads(config_path.read_text())
    config_dict["ponder_prm_format"] = format
    config_path.write_text(json.dumps(config_dict, indent=2) + "\n")
    return path
