"""The engine settings chosen for the hardware: bf16 only where it is native; eager mode on request; the reward
model's engine on its own CPU cores."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from reward_models import hardware


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


@pytest.mark.parametrize(
    ("value", "eager"),
    [(None, hardware.DEFAULT_ENFORCE_EAGER), ("0", False), ("no", False), ("1", True), ("true", True)],
)
def test_enforce_eager_comes_from_the_environment_unless_given(monkeypatch, tmp_path, value, eager):
    from reward_models.vllm_runtime import engine_args

    if value is None:
        monkeypatch.delenv(hardware.EAGER_ENV, raising=False)
    else:
        monkeypatch.setenv(hardware.EAGER_ENV, value)
    common = dict(kv_cache_gib=0.5, memory_fraction=0.1, max_model_len=None, seed=0, tensor_parallel_size=1)
    model = str(tmp_path)  # a local folder: vLLM looks nothing up on a hub
    assert engine_args(model, dtype="float32", **common).enforce_eager is eager
    assert engine_args(model, dtype="float32", enforce_eager=not eager, **common).enforce_eager is (not eager)


async def test_serve_enforce_eager_flag_reaches_both_engines(monkeypatch):
    import server.cli
    import server.engine.vllm_engine as vllm_engine
    from server.cli import _loader, build_parser

    seen: list[tuple[str, object]] = []

    async def fake_create(model: str, **kwargs: object) -> str:
        seen.append(("policy", kwargs.get("enforce_eager")))
        return "engine"

    async def fake_scorer(engine: object, policy: object, prm: object, **kwargs: object) -> str:
        seen.append(("scorer", kwargs.get("enforce_eager")))
        return "scorer"

    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", fake_create)
    monkeypatch.setattr(server.cli, "load_scorer_beside", fake_scorer)
    monkeypatch.delenv(hardware.EAGER_ENV, raising=False)
    for argv, eager in ((["serve", "--model", "/p"], None), (["serve", "--enforce-eager"], True)):
        seen.clear()
        args = build_parser().parse_args(argv)
        assert await _loader(args, Path("/p"), Path("/prm"))() == ("engine", "scorer")
        assert seen == [("policy", eager), ("scorer", eager)]  # passed as an argument, None: the engines' default
        assert hardware.EAGER_ENV not in os.environ  # not through the environment


async def test_serve_scorer_cpus_flag_reaches_the_reward_model_engine(monkeypatch):
    import server.cli
    import server.engine.vllm_engine as vllm_engine
    from server.cli import _loader, build_parser

    seen: list[str | None] = []

    async def fake_create(model: str, **kwargs: object) -> str:
        return "engine"

    async def fake_scorer(engine: object, policy: object, prm: object, **kwargs: object) -> str:
        seen.append(hardware.scorer_cpu_bind({0, 1}, requested=kwargs.get("scorer_cpus")))
        return "scorer"

    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", fake_create)
    monkeypatch.setattr(server.cli, "load_scorer_beside", fake_scorer)
    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    monkeypatch.delenv(hardware.VLLM_BIND_ENV, raising=False)
    monkeypatch.delenv(hardware.SCORER_CPUS_ENV, raising=False)
    for argv, bind in (
        (["serve"], "1"),
        (["serve", "--scorer-cpus", "0"], "0"),
        (["serve", "--scorer-cpus", "shared"], None),
    ):
        args = build_parser().parse_args(argv)
        assert await _loader(args, Path("/p"), Path("/prm"))() == ("engine", "scorer")
        assert seen[-1] == bind
        assert hardware.SCORER_CPUS_ENV not in os.environ  # not through the environment


def test_vllm_own_server_runs_as_ponder_does(monkeypatch):
    from benchmarks.servers import vllm_cmd

    monkeypatch.setenv(hardware.EAGER_ENV, "1")
    assert "--enforce-eager" in vllm_cmd("m", 0.1)
    monkeypatch.setenv(hardware.EAGER_ENV, "0")
    assert "--enforce-eager" not in vllm_cmd("m", 0.1)
    for flags, dtype in (({"avx2"}, "float32"), ({"avx2", "avx512_bf16"}, "auto")):  # the dtype Ponder's engine takes
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: frozenset(flags))
        monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
        cmd = vllm_cmd("m", 0.1)
        assert cmd[cmd.index("--dtype") + 1] == dtype


@pytest.mark.parametrize(
    ("allowed", "env", "expected"),
    [
        ({0, 1}, {}, "1"),  # the 2-core machine: the reward model on core 1, the policy on core 0 (vLLM's own)
        (set(range(16)), {}, "15"),  # the core vLLM leaves out of the policy's binding
        (set(range(16)), {hardware.SCORER_CPUS_ENV: "12-15"}, "12-15"),  # named: several
        ({0, 1}, {hardware.SCORER_CPUS_ENV: "1", hardware.VLLM_BIND_ENV: "0"}, "1"),  # named beats the user's vLLM list
        ({3}, {}, None),  # one core: nothing to split
        ({0, 1}, {hardware.SCORER_CPUS_ENV: "0"}, "0"),  # named
        ({0, 1}, {hardware.SCORER_CPUS_ENV: "shared"}, None),  # vLLM's binding, as before
        ({0, 1}, {hardware.VLLM_BIND_ENV: "0-1"}, None),  # the user's vLLM binding wins
    ],
)
def test_reward_model_engine_cores(monkeypatch, allowed, env, expected):
    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    monkeypatch.delenv(hardware.SCORER_CPUS_ENV, raising=False)
    monkeypatch.delenv(hardware.VLLM_BIND_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hardware.scorer_cpu_bind(allowed) == expected
    monkeypatch.setattr(hardware, "accelerator_available", lambda: True)
    gpu = expected if hardware.SCORER_CPUS_ENV in env else None  # a GPU: no binding, unless one is named
    assert hardware.scorer_cpu_bind(allowed) == gpu


@pytest.mark.parametrize("value", ["foo", "Shared", "1|2", "5", "0-7", ""])
def test_a_core_list_that_cannot_be_used_is_refused_in_one_line(monkeypatch, value):
    monkeypatch.setenv(hardware.SCORER_CPUS_ENV, value or ",")
    with pytest.raises(ValueError, match=r"^PONDER_SCORER_CPUS=.*expected core ids"):
        hardware.scorer_cpu_bind({0, 1})


@pytest.mark.parametrize("before", [None, "0-1"])
def test_binding_reaches_the_engine_process_and_the_environment_is_restored(monkeypatch, before):
    import reward_models.vllm_runtime as vllm_runtime

    seen: list[str | None] = []
    monkeypatch.setattr(
        vllm_runtime.AsyncLLM,
        "from_vllm_config",
        lambda config, **kwargs: seen.append(os.environ.get(hardware.VLLM_BIND_ENV)),
    )
    args = SimpleNamespace(
        create_engine_config=lambda usage_context: "config", enable_log_requests=False, disable_log_stats=True
    )
    if before is None:
        monkeypatch.delenv(hardware.VLLM_BIND_ENV, raising=False)
    else:
        monkeypatch.setenv(hardware.VLLM_BIND_ENV, before)
    vllm_runtime._from_engine_args(args, "1")
    vllm_runtime._from_engine_args(args, None)
    assert seen == ["1", before]  # set while the engine starts (its processes inherit it); untouched without one
    assert os.environ.get(hardware.VLLM_BIND_ENV) == before
