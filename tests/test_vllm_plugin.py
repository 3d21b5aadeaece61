"""The vLLM plugin's fix for seeded requests on the CPU (server/engine/vllm_plugin.py), on a stand-in runner whose
bookkeeping rewinds generators as vLLM's does; tests/test_vllm_adapters.py runs it on the real engine."""

from __future__ import annotations

from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest
import torch

from server.engine.vllm_plugin import patch_generator_rewind, register


class Runner:
    """vLLM's loop: every discarded request's generator is rewound by 4 offsets."""

    def __init__(self, generators: dict[int, torch.Generator]) -> None:
        self.input_batch = SimpleNamespace(generators=generators)
        self.discarded = list(generators)

    def _bookkeeping_sync(self, value: int) -> int:
        for i in self.discarded:
            gen = self.input_batch.generators.get(i)
            if gen is not None:
                gen.set_offset(gen.get_offset() - 4)
        return value + 1


def test_cpu_generators_skip_the_rewind_and_stay_seeded() -> None:
    cpu = torch.Generator(device="cpu").manual_seed(7)
    with pytest.raises(RuntimeError, match="does not use offset"):
        Runner({0: cpu})._bookkeeping_sync(1)  # what killed the engine
    patched = type("Patched", (Runner,), {})
    patch_generator_rewind(patched)
    patch_generator_rewind(patched)  # twice: one wrapper
    runner = patched({0: cpu, 3: torch.Generator(device="cpu")})
    assert runner._bookkeeping_sync(1) == 2
    assert runner.input_batch.generators == {0: cpu, 3: runner.input_batch.generators[3]}  # given back
    assert torch.rand(1, generator=cpu).item() == torch.rand(1, generator=torch.Generator().manual_seed(7)).item()


def test_vllm_finds_the_plugin_and_it_patches_the_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    found = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ponder"]
    assert [ep.value for ep in found] == ["server.engine.vllm_plugin:register"]
    register()
    assert getattr(GPUModelRunner._bookkeeping_sync, "_ponder_cpu_generator_rewind", False)
