"""Tiny, seeded, random-weight models built from configs: a policy, a process reward model and an outcome one.

Nothing is downloaded. All three share one character-level tokenizer (printable ASCII plus ``"\\n"``, the chat
role markers and the ``<extra_0>`` step tag that Qwen2.5-Math-PRM uses), saved beside each model with a chat
template, so vLLM and transformers both load the folders as they would a hub checkpoint. The shapes respect the
vLLM CPU backend's limits (head_dim >= 32, see shared/PLATFORM.md). A build takes well under a second and
writes a few MB.

- policy: ``LlamaForCausalLM``.
- PRM: a Qwen2 body plus the ``score`` head of vLLM's ``Qwen2ForProcessRewardModel`` (Linear -> ReLU -> Linear,
  2 labels, positive class = index 1), the layout of Qwen2.5-Math-PRM (Zhang et al. 2025). transformers has no
  class for it, so the weights are written with safetensors directly.
- ORM: ``Qwen2ForSequenceClassification`` with one label, read through a sigmoid.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen2Model,
)

from reward_models.layout import STEP_TAG, save_tokenizer

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS, STEP_TAG)
CHARACTERS = tuple(string.digits + string.ascii_letters + string.punctuation + " \n")  # printable ASCII + newline

# <s><|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n ... ; HF's apply_chat_template implements
# continue_final_message by cutting the render after the final message's content, which this layout allows.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if not (loop.last and continue_final_message is defined and continue_final_message) %}"
    "{{ eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build_char_tokenizer(extra_tokens: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one id per special token, extra token and character; adds ``<s>`` first."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *extra_tokens, *CHARACTERS):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
    backend.decoder = decoders.Fuse()  # join pieces with no separator
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    if extra_tokens:
        backend.add_tokens(list(extra_tokens))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[*ROLE_TOKENS, STEP_TAG],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )


def _padded_vocab(tokenizer: PreTrainedTokenizerFast) -> int:
    return -(-len(tokenizer) // 32) * 32  # round up to a multiple of 32: friendlier matmul shapes


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _check_head_dim(hidden: int, heads: int) -> None:
    if hidden % heads or hidden // heads < 32:
        raise ValueError(f"hidden/heads = {hidden}/{heads}: the vLLM CPU backend needs a whole head_dim >= 32")


def tiny_config(
    cls: type[LlamaConfig] | type[Qwen2Config],
    tokenizer: PreTrainedTokenizerFast,
    hidden: int,
    layers: int,
    heads: int,
    **extra: object,
) -> LlamaConfig | Qwen2Config:
    """A tiny Llama or Qwen2 config for ``tokenizer`` (head_dim = hidden/heads, at least 32; untied embeddings)."""
    _check_head_dim(hidden, heads)
    return cls(
        vocab_size=_padded_vocab(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
        **extra,
    )


def save_tiny_policy(path: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2, heads: int = 4) -> Path:
    """Write a random ``LlamaForCausalLM`` (head_dim = hidden/heads, at least 32) and its tokenizer to ``path``."""
    path = Path(path)
    tokenizer = build_char_tokenizer()
    config = tiny_config(LlamaConfig, tokenizer, hidden, layers, heads)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_prm(
    path: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2, heads: int = 4, step_tag: str = STEP_TAG
) -> Path:
    """Write a random ``Qwen2ForProcessRewardModel`` checkpoint; ``config.json`` records ``step_tag``/its id."""
    path = Path(path)
    tokenizer = build_char_tokenizer()
    step_tag_id = tokenizer.convert_tokens_to_ids(step_tag)
    if step_tag_id == tokenizer.unk_token_id:
        raise ValueError(f"step tag {step_tag!r} is not one token of the tiny tokenizer")
    config = tiny_config(
        Qwen2Config, tokenizer, hidden, layers, heads, num_labels=2, architectures=["Qwen2ForProcessRewardModel"]
    )
    torch.manual_seed(seed)
    body = Qwen2Model(config)
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    state = {f"model.{k}": v for k, v in body.state_dict().items()}
    state.update({f"score.{k}": v for k, v in head.state_dict().items()})
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict.update(dtype="float32", step_tag=step_tag, step_tag_id=step_tag_id)
    (path / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    save_tokenizer(tokenizer, path)  # a Qwen2 folder: in a subfolder (reward_models.layout.tokenizer_path)
    return path


def save_tiny_orm(path: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2, heads: int = 4) -> Path:
    """Write a random one-label ``Qwen2ForSequenceClassification`` (an outcome reward model) to ``path``."""
    path = Path(path)
    tokenizer = build_char_tokenizer()
    config = tiny_config(
        Qwen2Config, tokenizer, hidden, layers, heads, num_labels=1, architectures=["Qwen2ForSequenceClassification"]
    )
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(config)
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path
