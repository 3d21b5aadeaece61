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
    wrapper = patched._bookkeeping_sync
    patch_generator_rewind(patched)
    assert patched._bookkeeping_sync is wrapper  # twice: one wrapper
    other = torch.Generator(device="cpu").manual_seed(11)
    generators = {0: cpu, 3: other}
    runner = patched(generators)
    assert runner._bookkeeping_sync(1) == 2  # the wrapped method ran and its result came back
    assert runner.input_batch.generators is generators and list(generators.items()) == [(0, cpu), (3, other)]
    # both given back untouched: each draws what a fresh generator with its seed draws
    assert torch.rand(1, generator=cpu).item() == torch.rand(1, generator=torch.Generator().manual_seed(7)).item()
    assert torch.rand(1, generator=other).item() == torch.rand(1, generator=torch.Generator().manual_seed(11)).item()


def test_generators_that_are_not_on_the_cpu_are_still_rewound() -> None:
    """The rewind is right for CUDA's Philox generators: the patch leaves them in place for it."""

    class Offset:  # a stand-in for a CUDA generator (none on this machine): it has an offset
        device = torch.device("meta")

        def __init__(self) -> None:
            self.offset = 12

        def get_offset(self) -> int:
            return self.offset

        def set_offset(self, offset: int) -> None:
            self.offset = offset

    patched = type("Patched", (Runner,), {})
    patch_generator_rewind(patched)
    cuda_like, cpu = Offset(), torch.Generator(device="cpu").manual_seed(7)
    runner = patched({0: cuda_like, 1: cpu})
    runner._bookkeeping_sync(1)
    assert cuda_like.offset == 8 and runner.input_batch.generators == {0: cuda_like, 1: cpu}


def test_vllm_finds_the_plugin_and_it_patches_the_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    found = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ponder"]
    assert [ep.value for ep in found] == ["server.engine.vllm_plugin:register"]
    register()
    assert getattr(GPUModelRunner._bookkeeping_sync, "_ponder_cpu_generator_rewind", False)
