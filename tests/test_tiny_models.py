"""The tiny model builders, the default-model cache and the reward-model loader's errors (no vLLM engine)."""

from __future__ import annotations

import logging
import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Qwen2Model,
)

from reward_models import load_scorer
from reward_models.layout import tokenizer_path
from server import default_models
from server.default_models import ensure_default_models
from server.tiny_models import (
    STEP_TAG,
    build_char_tokenizer,
    save_tiny_policy,
    save_tiny_prm,
)

SAMPLE = string.digits + string.ascii_letters + string.punctuation + " \n" + "multi\nline  text"


@pytest.fixture(scope="module")
def tiny(tiny_models: dict) -> dict:
    return tiny_models  # the session's tiny policy, PRM and ORM (tests/conftest.py); read here, never written


def test_tokenizer_round_trips_printable_ascii_one_char_per_token() -> None:
    tokenizer = build_char_tokenizer()
    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    assert len(ids) == len(SAMPLE)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == SAMPLE
    assert tokenizer.encode("ab")[0] == tokenizer.bos_token_id  # BOS only with special tokens


def test_special_tokens_are_single_ids_and_skippable() -> None:
    tokenizer = build_char_tokenizer(extra_tokens=["<think>"])
    for token in ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", STEP_TAG, "<think>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    ids = tokenizer.encode(f"1+1=2{STEP_TAG}ok", add_special_tokens=False)
    assert tokenizer.decode(ids) == f"1+1=2{STEP_TAG}ok"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "1+1=2ok"


def test_chat_template_generation_prompt_and_continuation() -> None:
    tokenizer = build_char_tokenizer()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|system|>\nS</s>\n<|user|>\n2+2?</s>\n<|assistant|>\n"
    partial = messages + [{"role": "assistant", "content": "2+2=4"}]
    continued = tokenizer.apply_chat_template(partial, tokenize=False, continue_final_message=True)
    assert continued == prompt + "2+2=4"
    closed = tokenizer.apply_chat_template(partial, tokenize=False)
    assert closed == prompt + "2+2=4</s>\n"


def test_policy_reloads_with_transformers_and_is_seeded(tiny: dict, tmp_path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny["policy"])
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    assert model.config.vocab_size >= len(tokenizer)
    logits = model(torch.tensor([tokenizer.encode("1+2=")])).logits  # (1, T, V)
    assert logits.shape[:2] == (1, 5)
    same, other = save_tiny_policy(tmp_path / "same"), save_tiny_policy(tmp_path / "other", seed=1)
    reference = load_file(tiny["policy"] / "model.safetensors")
    assert all(torch.equal(reference[k], v) for k, v in load_file(same / "model.safetensors").items())
    assert not all(torch.equal(reference[k], v) for k, v in load_file(other / "model.safetensors").items())
    assert sum(f.stat().st_size for f in tiny["policy"].iterdir()) < 10 * 2**20


def test_prm_checkpoint_has_the_vllm_layout(tiny: dict) -> None:
    config = AutoConfig.from_pretrained(tiny["prm"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(tiny["prm"]))
    assert config.architectures == ["Qwen2ForProcessRewardModel"]
    assert config.step_tag == STEP_TAG and config.step_tag_id == tokenizer.convert_tokens_to_ids(STEP_TAG)
    state = load_file(tiny["prm"] / "model.safetensors")
    hidden = config.hidden_size
    assert state["score.0.weight"].shape == (hidden, hidden) and state["score.0.bias"].shape == (hidden,)
    assert state["score.2.weight"].shape == (2, hidden) and state["score.2.bias"].shape == (2,)
    body = Qwen2Model(config)
    body.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})


def test_orm_reloads_as_a_one_label_classifier(tiny: dict) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny["orm"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(tiny["orm"]))
    assert model.config.num_labels == 1
    assert model(torch.tensor([tokenizer.encode("x=1")])).logits.shape == (1, 1)


def test_head_dim_below_32_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        save_tiny_policy(tmp_path / "p", hidden=64, heads=4)


def test_default_models_are_built_once_and_flagged(
    tmp_path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(default_models, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    with caplog.at_level(logging.WARNING, logger="ponder.models"):
        first = ensure_default_models(tmp_path)
    assert first.random_weights and "RANDOM-WEIGHT" in caplog.text
    assert first.policy == tmp_path / "tiny-v2" / "policy" and (first.prm / "config.json").is_file()
    stamp = (first.policy / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_models(tmp_path) == first
    assert (first.policy / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "tiny-v2").iterdir()) == ["policy", "prm"]  # no staging left


def test_default_models_respect_ponder_cache_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_models, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path))
    assert ensure_default_models().prm == tmp_path / "tiny-v2" / "prm"


def test_shipped_models_are_preferred_to_the_stand_ins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "models"
    save_tiny_policy(shipped / "default-policy")
    save_tiny_prm(shipped / "default-prm")
    monkeypatch.setattr(default_models, "SHIPPED_DIR", shipped)
    chosen = ensure_default_models(tmp_path / "cache")
    assert (chosen.policy, chosen.prm, chosen.random_weights) == (
        shipped / "default-policy",
        shipped / "default-prm",
        False,
    )
    assert not (tmp_path / "cache").exists()  # nothing built


def test_a_shipped_policy_without_a_prm_is_served_alone(
    tmp_path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "models"
    save_tiny_policy(shipped / "default-policy")
    monkeypatch.setattr(default_models, "SHIPPED_DIR", shipped)
    with caplog.at_level(logging.WARNING, logger="ponder.models"):
        chosen = ensure_default_models(tmp_path / "cache")
    assert (chosen.policy, chosen.prm, chosen.random_weights) == (shipped / "default-policy", None, False)
    assert "without a reward model" in caplog.text and not (tmp_path / "cache").exists()
    stand_in = chosen.prm_or_stand_in(tmp_path / "cache")  # what the serving benchmarks score with
    assert stand_in == tmp_path / "cache" / "tiny-v2" / "prm" and (stand_in / "config.json").is_file()


async def test_load_scorer_rejects_bad_paths(tiny: dict, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        await load_scorer(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither a process reward model"):
        await load_scorer(tiny["policy"])
