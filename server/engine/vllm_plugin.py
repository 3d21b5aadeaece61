"""A vLLM general plugin (``vllm.general_plugins`` in pyproject.toml): fixes vLLM runs in every engine process.

vLLM loads general plugins in the engine core and in each worker, which is where the fixed code runs; a patch made
in the server's own process would not reach them.

``seeded_partial_prefill``: on the CPU backend a request with a ``seed`` kills the engine when its prefill is split
across scheduler steps (a long prompt, or many prompts at once). The model runner then drops the token sampled for
the unfinished prompt and rewinds the request's generator by 4 offsets (``GPUModelRunner._bookkeeping_sync``); that
rewind assumes CUDA's Philox generator, and a CPU ``torch.Generator`` raises ``CPU Generator does not use offset``,
which kills the engine core with every request in flight. It fires the first time a client sends the OpenAI
``seed`` field with enough work queued (seen here with 32 samples of a 69-token prompt; the same fix as
RBLN-SW/vllm-rbln#1025). The patch skips the rewind for CPU generators: the request's sampling stays seeded, and
its draws shift by the dropped token's, so a seed reproduces a run under the same scheduling rather than under any.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("ponder.vllm_plugin")
PATCHED = "_ponder_cpu_generator_rewind"


def register() -> None:
    """vLLM's entry point: apply every fix that this process needs (idempotent)."""
    try:
        # deferred import: vLLM (an optional extra, seconds to import) only where an engine is used
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:  # a vLLM without this runner has its own code path: nothing to fix
        return
    patch_generator_rewind(GPUModelRunner)


def patch_generator_rewind(runner_cls: type) -> None:
    """Make ``runner_cls._bookkeeping_sync`` skip the generator rewind of CPU generators."""
    original = runner_cls._bookkeeping_sync
    if getattr(original, PATCHED, False):
        return

    @functools.wraps(original)
    def bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        generators: dict[int, Any] = self.input_batch.generators
        held = {i: g for i, g in generators.items() if getattr(getattr(g, "device", None), "type", None) == "cpu"}
        for i in held:  # out of the rewind's sight; no other use of them in this method
            del generators[i]
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)

    setattr(bookkeeping_sync, PATCHED, True)
    runner_cls._bookkeeping_sync = bookkeeping_sync
