"""One way to configure: ``ponder serve``'s flags come from the config dataclasses (and read the same names from a
``--config`` YAML file), the backends come from a registry, the ``python -m`` tools are ``ponder`` verbs, and the
shipped models' recipes parse and name only flags their commands accept. Nothing here loads a model."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import shlex
from pathlib import Path

import pytest
import yaml

import reward_models
from server import cli
from server.config import EngineConfig, ServeConfig, ServerConfig, flag_of, flat_fields, has_flag
from server.engine import BACKENDS, Backend, get_backend
from training import recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PONDER_API_KEYS", raising=False)
    monkeypatch.delenv("PONDER_REMOTE_API_KEY", raising=False)


def serve_actions() -> dict[str, argparse.Action]:
    """``ponder serve``'s flags by dest."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["serve"]._actions if a.option_strings}


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


# ---- flags from fields -------------------------------------------------------------------------------------------
def test_every_setting_has_a_flag_named_after_it_and_only_derived_fields_have_none() -> None:
    actions = serve_actions()
    settings = [(owner, f) for owner, f in flat_fields(ServeConfig) if has_flag(f)]
    assert {f.name for _, f in settings} == set(actions) - {"help", "config"}
    for owner, f in settings:
        flag = "--api-key" if f.name == "api_keys" else "--" + f.name.replace("_", "-")
        both_ways = (
            [flag, "--no-" + flag[2:]] if f.default is None and isinstance(f.type, str) and "bool" in f.type else [flag]
        )
        assert flag_of(owner, f.name) == flag and actions[f.name].option_strings == both_ways
        assert actions[f.name].help.startswith(f.metadata["help"].replace("%", "%%"))
    derived = {f.name for _, f in flat_fields(ServeConfig) if not has_flag(f)}
    assert derived == {"model_name", "reward_model_name"}  # set by ponder serve from --served-model-name and --prm


def test_flag_defaults_are_the_config_defaults() -> None:
    args = cli.parse_args(["serve"])
    assert cli.serve_config(args) == ServeConfig()
    for name, value in ServeConfig().flat().items():
        if name not in ("model_name", "reward_model_name"):
            assert getattr(args, name) == value, name


def test_flag_kinds_follow_the_field_types_and_choices_come_from_the_registries() -> None:
    actions = serve_actions()
    assert isinstance(actions["enforce_eager"], argparse.BooleanOptionalAction)  # bool | None: --no-enforce-eager too
    assert [cli.parse_args(["serve", *a]).enforce_eager for a in ([], ["--enforce-eager"], ["--no-enforce-eager"])] == [
        None,
        True,
        False,
    ]
    assert isinstance(actions["no_prm"], argparse._StoreTrueAction)
    assert actions["port"].type is int and actions["memory_fraction"].type is float
    assert actions["max_model_len"].type is int  # int | None
    assert tuple(actions["prm_format"].choices) == reward_models.PRM_FORMATS
    assert tuple(actions["backend"].choices) == tuple(BACKENDS)
    assert tuple(actions["log_level"].choices) == ("debug", "info", "warning", "error")
    config = cli.serve_config(cli.parse_args(["serve", "--api-key", "a", "--api-key", "b", "--enforce-eager"]))
    assert config.server.api_keys == ("a", "b") and config.engine.enforce_eager is True


def test_every_flag_reaches_its_field() -> None:
    argv = ["serve", "--model", "/m", "--prm-format", "rlhflow", "--memory-fraction", "0.5", "--max-model-len", "512"]
    argv += ["--max-num-samples", "8", "--request-timeout", "30", "--log-prompts", "--port", "9001"]
    argv += ["--log-level", "debug", "--scorer-cpus", "shared", "--shutdown-grace", "2"]
    config = cli.serve_config(cli.parse_args(argv))
    assert config.engine == EngineConfig(
        model="/m", prm_format="rlhflow", memory_fraction=0.5, max_model_len=512, scorer_cpus="shared"
    )
    assert config.server == ServerConfig(max_num_samples=8, request_timeout=30.0, log_prompts=True)
    assert (config.port, config.log_level, config.shutdown_grace) == (9001, "debug", 2.0)


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_API_KEYS", "k2, k3")
    monkeypatch.setenv("PONDER_REMOTE_API_KEY", "remote")
    config = cli.serve_config(cli.parse_args(["serve", "--api-key", "k1"]))
    assert config.server.api_keys == ("k1", "k2", "k3") and config.engine.remote_api_key == "remote"


def test_flat_round_trip_and_nested_parts() -> None:
    config = ServeConfig(engine=EngineConfig(seed=3), server=ServerConfig(max_messages=7), port=9002)
    derived = ("model_name", "reward_model_name")
    assert ServeConfig.from_flat({k: v for k, v in config.flat().items() if k not in derived}) == config
    names = [f.name for _, f in flat_fields(ServeConfig)]
    assert len(names) == len(set(names))  # one flat namespace: YAML keys and flags


# ---- validation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"max_num_samples": 0}, "--max-num-samples must be at least 1"),
        ({"request_timeout": 0.5}, "--request-timeout must be at least 1"),
        ({"max_queued_requests": -1}, "--max-queued-requests must not be negative"),
        ({"shutdown_grace": -1.0}, "--shutdown-grace must not be negative"),
        ({"memory_fraction": 1.0}, "between 0 and 1"),
        ({"port": 0}, "--port 0 is not a valid port"),
        ({"tensor_parallel_size": 0}, "--tensor-parallel-size must be at least 1"),
        ({"prm_format": "qwen", "no_prm": True}, "it cannot go with --no-prm"),
        ({"backend": "openai"}, "--backend openai needs --base-url URL and --remote-model NAME"),
        ({"backend": "openai", "base_url": "http://x/v1", "remote_model": "m"}, "needs --tokenizer PATH"),
        ({"backend": "nope"}, "backend: 'nope' is not one of vllm, openai"),
        ({"port": "80"}, "port: expected an integer, got '80'"),
        ({"enforce_eager": "yes"}, "enforce_eager: expected true or false"),
        ({"max_model_len": 1.5}, "max_model_len: expected an integer or null"),
        ({"api_keys": [1, 2]}, "api_keys: expected a list of strings"),
        ({"prot": 80}, "unknown key prot"),
        ({"model_name": "x"}, "unknown key model_name"),  # derived: --served-model-name sets it
    ],
)
def test_bad_values_are_one_line_value_errors(values: dict, says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        ServeConfig.from_flat(values)
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_the_dataclasses_check_themselves() -> None:
    assert ServerConfig(request_timeout=1).request_timeout == 1.0  # an int where a float goes
    assert ServerConfig(api_keys=["a"]).api_keys == ("a",)  # type: ignore[arg-type]
    assert ServerConfig(max_messages=0, max_queued_requests=0).max_messages == 0  # meaningful outside ponder serve
    with pytest.raises(ValueError, match="--max-concurrent-requests must be at least 1"):
        ServerConfig(max_concurrent_requests=0)
    with pytest.raises(ValueError, match="max_num_samples: expected an integer"):
        ServerConfig(max_num_samples="64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--max-messages must be at least 1"):
        ServeConfig(server=ServerConfig(max_messages=0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        EngineConfig(prm_memory_fraction=0.0)


# ---- --config FILE.yaml --------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_reads_the_field_names_and_flags_override_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "port: 9100\nmax_num_samples: 8\napi_keys: [a, b]\nenforce_eager: true\nprm_format: likelihood\n"
        "memory_fraction: 0.4\nrequest_timeout: 60\n",
    )
    from_file = cli.serve_config(cli.parse_args(["serve", "--config", path]))
    assert (from_file.port, from_file.server.max_num_samples, from_file.server.api_keys) == (9100, 8, ("a", "b"))
    assert from_file.engine.enforce_eager and from_file.engine.prm_format == "likelihood"
    assert from_file.engine.memory_fraction == 0.4 and from_file.server.request_timeout == 60.0
    assert from_file.server.max_tree_nodes == ServerConfig().max_tree_nodes  # not in the file: the default
    flags = ["serve", "--port", "9200", "--config", path, "--api-key", "c", "--prm-format", "rlhflow"]
    both = cli.serve_config(cli.parse_args(flags))
    assert (both.port, both.server.max_num_samples, both.server.api_keys) == (9200, 8, ("c",))
    assert both.engine.prm_format == "rlhflow" and both.engine.enforce_eager


def test_yaml_settings_combine_with_flags_before_they_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: openai\nremote_model: m\ntokenizer: /tok\n")
    config = cli.serve_config(cli.parse_args(["serve", "--config", path, "--base-url", "http://h/v1"]))
    assert (config.engine.backend, config.engine.base_url, config.engine.tokenizer) == ("openai", "http://h/v1", "/tok")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prot: 80\n", "unknown key prot"),
        ("port: many\n", "port: expected an integer, got 'many'"),
        ("backend: grpc\n", "backend: 'grpc' is not one of vllm, openai"),
        ("max_num_samples: 0\n", "--max-num-samples must be at least 1"),
        ("[1, 2]\n", "must hold a mapping of settings"),
        ("port: [\n", "is not valid YAML"),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text, says) -> None:
    code, err = run_main(["serve", "--config", write(tmp_path, text)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ponder: error: ") and says in lines[0]


def test_a_missing_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["serve", "--config", "/no/such/serve.yaml"], capsys)
    assert code == 2 and err.strip() == "ponder: error: --config '/no/such/serve.yaml': no such file"


# ---- backends ------------------------------------------------------------------------------------------------------
def test_backends_are_registered_lazily_and_build_from_the_config() -> None:
    assert set(BACKENDS) == {"vllm", "openai"}
    for name, backend in BACKENDS.items():
        module, _, cls = backend.target.partition(":")
        assert module.startswith("server.engine.") and cls
        if name == "openai":  # the vLLM one imports vLLM: it is loaded by the tests that start it
            assert inspect.iscoroutinefunction(backend.load().from_config)
    with pytest.raises(ValueError, match="unknown backend 'grpc'; backends: vllm, openai"):
        get_backend("grpc")


class FakeBackend:
    """A backend of this module's own: one file (this one) and one registry line."""

    seen: list[EngineConfig] = []

    @classmethod
    async def from_config(cls, config: EngineConfig) -> str:
        cls.seen.append(config)
        return "engine"


async def test_a_new_backend_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "fake", Backend(f"{__name__}:FakeBackend", "a fake"))
    assert "fake" in serve_actions()["backend"].choices  # --backend's choices are the registry's
    config = cli.serve_config(cli.parse_args(["serve", "--backend", "fake", "--model", "/p", "--no-prm"]))
    FakeBackend.seen.clear()
    assert await cli._loader(config, Path("/policy"), None)() == ("engine", None)
    assert FakeBackend.seen == [dataclasses.replace(config.engine, model="/policy")]  # the folder it resolved


# ---- subcommands -------------------------------------------------------------------------------------------------
NEW_VERBS = [
    ["bench", "combine"],
    ["bench", "paired"],
    ["bench", "game24-lost"],
    ["bench", "game24-value"],
    ["bench", "optillm-prompt"],
    ["eval", "policy"],
    ["eval", "compare"],
    ["eval", "champ"],
    ["train", "soup"],
    ["convert", "gguf"],
    ["convert", "likelihood-prm"],
    ["recipe", "run"],
]


@pytest.mark.parametrize("verb", NEW_VERBS + [["train", t] for t in ("sft", "prm", "orm", "dpo", "grpo")], ids=" ".join)
def test_help_works_and_names_the_ponder_command(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*verb, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith(f"usage: ponder {' '.join(verb)} ")


@pytest.mark.parametrize("group", ["bench", "eval", "train", "convert"])
def test_each_group_lists_its_new_verbs(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main([group, "--help"])
    except SystemExit as exc:  # argparse's help
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and all(verb in out for g, verb in NEW_VERBS if g == group)


# ---- recipes -------------------------------------------------------------------------------------------------------
def test_the_shipped_recipes_are_there() -> None:
    names = {path.stem for path in RECIPES}
    assert {"default-policy", "default-prm", "game24-policy", "game24-prm"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_dry_run_prints_commands_their_parsers_accept(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data["description"], str) and data["stages"]
    assert cli.main(["recipe", "run", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(data["stages"])
    for line, stage in zip(lines, data["stages"], strict=True):
        words = shlex.split(line)
        if "copy" in stage:
            assert words[:2] == ["rm", "-rf"] and words[-2:] == [stage["copy"]["from"], stage["copy"]["to"]]
            continue
        assert words[0] == "ponder" and " ".join(words[1:3]).startswith(stage["ponder"])
        parsed = recipe.check(words[1:])  # the command's own parser, which does not run it
        for name, value in (stage.get("args") or {}).items():
            assert same(getattr(parsed, name), value), name


def same(parsed: object, given: object) -> bool:
    """Whether a parsed value is the one a recipe gives (``1e-3`` and 0.001 are; ``[4, 6]`` and (4, 6) are)."""
    if isinstance(given, list):
        return isinstance(parsed, list | tuple) and len(parsed) == len(given) and all(map(same, parsed, given))
    try:
        return float(parsed) == float(given)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(parsed) == str(given)


def test_a_misspelt_flag_fails_the_recipe_before_any_stage_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    stages = [
        {"copy": {"from": str(tmp_path / "none"), "to": str(tmp_path / "out")}},
        {"ponder": "train soup", "positional": ["runs/a", "runs/b"], "args": {"output": "runs/soup", "outptu": "x"}},
    ]
    path.write_text(yaml.safe_dump({"description": "bad", "stages": stages}))
    assert cli.main(["recipe", "run", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unrecognized arguments: --outptu" in captured.err  # nothing printed, nothing run
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("recipe_text", "says"),
    [
        ("stages: []\n", "non-empty list of stages"),
        ("stages: [{ponder: train sft}]\nsteps: 1\n", "unknown key steps"),
        ("stages: [{make: models}]\n", "expected ponder"),
        ("stages: [{copy: {from: a}}]\n", "copy takes a mapping of from and to"),
        ("stages: [{ponder: serve}]\n", "not a command a recipe runs"),
    ],
)
def test_a_bad_recipe_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe_text: str, says: str
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text)
    assert cli.main(["recipe", "run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ponder recipe: error: ") and says in err and "\n" not in err


def test_a_copy_stage_replaces_its_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "weights").write_text("new")
    (tmp_path / "models" / "policy").mkdir(parents=True)
    (tmp_path / "models" / "policy" / "stale").write_text("old")
    stage = recipe.Stage(copy=(str(tmp_path / "run"), str(tmp_path / "models" / "policy")))
    assert recipe.run([stage]) == 0
    assert sorted(p.name for p in (tmp_path / "models" / "policy").iterdir()) == ["weights"]
    assert capsys.readouterr().out.startswith("rm -rf ")
