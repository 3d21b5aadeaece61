"""``ponder train TRAINER [--config FILE.yaml] [--flags ...]``: the training command line (and ``ponder train soup``,
which averages trained policies: :data:`DELEGATED`).

Every trainer's options are one config dataclass (a TRL config subclass), parsed by ``HfArgumentParser``, so each
field is a ``--flag`` and a YAML key. Values are resolved in this order, later winning: the dataclass defaults,
the named ``--preset``, the ``--config`` YAML file, the flags. ``ponder train sft --help`` lists every field.

Mistakes (an unknown flag or YAML key, a bad value, a missing file) end in one line on stderr and exit status 2,
before any data or model is built.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.config import one_line, read_yaml_mapping
from training.tasks.base import UnknownTaskError

PROG = "ponder train"
BARE_PERCENT = re.compile(r"(?<!%)%(?![%(])")  # a % that is neither %% nor a %(name)s specifier


class ConfigError(Exception):
    """A mistake in the flags or the config file: one line, exit status 2."""


@dataclass(frozen=True)
class Trainer:
    """A trainer the command line offers: its config class, presets and entry point, imported on demand."""

    help: str
    load: Callable[[], tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]]


def _sft() -> tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]:
    # deferred import: torch and TRL only for the command that trains
    from training import sft

    return sft.PolicySFTConfig, sft.PRESETS, sft.train


def _prm() -> tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]:
    # deferred import: torch and TRL only for the command that trains
    from training import prm

    return prm.RewardModelConfig, prm.PRESETS, prm.train


def _orm() -> tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]:
    # deferred import: torch and TRL only for the command that trains
    from training import prm

    return prm.OutcomeRewardModelConfig, prm.PRESETS, prm.train


def _dpo() -> tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]:
    # deferred import: torch and TRL only for the command that trains
    from training import dpo

    return dpo.PolicyDPOConfig, dpo.PRESETS, dpo.train


def _grpo() -> tuple[type, dict[str, dict[str, Any]], Callable[[Any], Any]]:
    # deferred import: torch and TRL only for the command that trains
    from training import grpo

    return grpo.PolicyGRPOConfig, grpo.PRESETS, grpo.train


TRAINERS: dict[str, Trainer] = {
    "sft": Trainer("supervised fine-tuning of a policy from scratch on a task's reference solutions", _sft),
    "prm": Trainer("process reward model (token classification at each step tag) on stepwise labels", _prm),
    "orm": Trainer("outcome reward model (one score per solution) on the same labels", _orm),
    "dpo": Trainer("DPO of an SFT policy on (right, wrong) pairs of its own verified samples", _dpo),
    "grpo": Trainer("GRPO of an SFT policy, rewarded by the task's verifier", _grpo),
}


# ``ponder train NAME`` for what is not a TRL config trainer: the rest of the line goes to MODULE.main(argv).
DELEGATED = {
    "soup": ("training.soup", "a uniform model soup: the weights of several fine-tuned copies of one policy, averaged"),
}


def parse_config(trainer: str, argv: list[str]) -> Any:
    """The trainer's config from ``argv`` (flags, ``--config FILE``, ``--preset NAME``); ConfigError on mistakes."""
    # deferred import: torch/transformers only on this path
    from transformers import HfArgumentParser

    config_class, presets, _ = TRAINERS[trainer].load()
    early = _Parser(add_help=False)
    early.add_argument("--config")
    early.add_argument("--preset")
    known, _ = early.parse_known_args(argv)
    from_file = _read_yaml(known.config) if known.config else {}
    preset = known.preset or from_file.get("preset") or "default"
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(presets)}")
    names = {f.name for f in config_class.__dataclass_fields__.values() if f.init}
    unknown = sorted(set(from_file) - names)
    if unknown:
        raise ConfigError(f"{known.config}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)}")

    class Parser(_Parser, HfArgumentParser):
        pass

    parser = Parser(config_class, prog=f"{PROG} {trainer}", description=TRAINERS[trainer].help)
    for action in parser._actions:  # a field's help is prose ("nearest 50%)"); argparse reads it as a format string
        action.help = action.help and BARE_PERCENT.sub("%%", action.help)
    parser.add_argument("--config", help="YAML file of field values (flags override it)")
    parser.set_defaults(**{**presets[preset], **from_file, "preset": preset})

    try:
        config, _extra, unused = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except (ValueError, TypeError, UnknownTaskError) as exc:  # from the config's __post_init__ (or TRL's): a bad value
        raise ConfigError(one_line(exc)) from None
    if unused:
        raise ConfigError(f"unrecognized arguments: {' '.join(unused)}")
    return config


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        return read_yaml_mapping(path, "field names")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train a policy or a reward model.")
    sub = parser.add_subparsers(dest="trainer", metavar="TRAINER", required=True)
    for name, trainer in TRAINERS.items():
        sub.add_parser(name, help=trainer.help, add_help=False)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return int(importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0)
    try:
        if not argv or argv[0] not in TRAINERS:
            build_parser().parse_args(argv[:1])  # prints help for -h, else raises ConfigError
            return 0
        config = parse_config(argv[0], argv[1:])
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _, _, run = TRAINERS[argv[0]].load()
    try:
        run(config, command=shlex.join(["ponder", "train", *argv]))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
