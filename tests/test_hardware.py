"""The number-format choice: bf16 only where the hardware computes it natively."""

import pytest

from server.engine import hardware


@pytest.mark.parametrize(
    ("flags", "accelerator", "expected"),
    [
        ({"avx2", "fma"}, False, "float32"),  # AVX2-only CPU (AMD Zen 3): bf16 is emulated
        ({"avx2", "avx512f", "avx512_bf16"}, False, "auto"),
        ({"avx2", "amx_bf16"}, False, "auto"),
        ({"avx2"}, True, "auto"),  # a GPU
    ],
)
def test_engine_dtype_follows_native_bf16(monkeypatch, flags, accelerator, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "accelerator_available", lambda: accelerator)
    assert hardware.engine_dtype("auto") == expected
    assert hardware.engine_dtype("bfloat16") == "bfloat16"  # an explicit choice is kept


def test_training_bf16_default_is_resolved(monkeypatch):
    from training.prm import RewardModelConfig

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    assert RewardModelConfig(output_dir="unused").bf16 is False
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert RewardModelConfig(output_dir="unused").bf16 is True
    assert RewardModelConfig(output_dir="unused", bf16=False).bf16 is False
