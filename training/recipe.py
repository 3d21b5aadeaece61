"""``ponder recipe run FILE.yaml [--dry-run]``: the stages that build a model, from a recipe file (``recipes/``).

A recipe is a YAML mapping with a ``description`` and a list of ``stages``, each one of

- ``ponder: train sft`` with ``args:``, a mapping of flag names without their dashes to values (``output_dir:
  runs/policy-sft`` is ``--output_dir runs/policy-sft``; a list is the flag's several values, ``levels: [3, 4]`` is
  ``--levels 3 4``; ``true`` is the bare flag, ``false`` is ``--flag false``), and optionally ``positional:``, a list
  of arguments before the flags;
- ``copy: {from: runs/policy-sft2, to: models/default-policy}``: the folder copied into place, replacing what was
  there (``rm -rf TO && mkdir -p PARENT && cp -r FROM TO``).

``run`` first parses every ``ponder`` stage's arguments with the command's own parser, without running it (a
misspelt flag in the last stage fails before the first stage's hour of training), then prints each stage's command
line and runs it, stopping at the first that fails, with its exit status. ``--dry-run`` checks and prints only.

Each ``ponder`` stage runs as a child process (``python -m server.cli``, the interpreter running this one), not in
this process: a stage that trains holds gigabytes of tensors and threads, and one that labels starts vLLM engines in
processes of their own; a fresh process per stage gives each the memory, the seeds and the global state (torch's
threads, logging, vLLM's environment) that it has when run by hand, so a recipe builds what its printed commands
build, and a stage's crash cannot leave the next one a half-torn-down engine. The cost, a second or two of start-up
per stage, is nothing beside stages of minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training import cli as train_cli
from training.convert import CONVERTERS

PROG = "ponder recipe"


class RecipeError(Exception):
    """A mistake in a recipe file or in a stage's arguments: one line, exit status 2."""


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: a ``ponder`` command line (``argv``, without ``ponder``), or a folder copied."""

    argv: tuple[str, ...] = ()
    copy: tuple[str, str] | None = None  # (from, to)

    def command_line(self) -> str:
        """What the stage runs, as a shell line."""
        if self.copy is not None:
            source, target, parent = (shlex.quote(p) for p in (*self.copy, str(Path(self.copy[1]).parent)))
            return f"rm -rf {target} && mkdir -p {parent} && cp -r {source} {target}"
        return shlex.join(["ponder", *self.argv])


def load(path: str | Path) -> list[Stage]:
    """The stages of the recipe at ``path``; RecipeError for a file that is not one."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        recipe = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise RecipeError(f"{path}: expected a mapping with a non-empty list of stages")
    unknown = sorted(set(recipe) - {"description", "stages"})
    if unknown:
        raise RecipeError(f"{path}: unknown key {', '.join(unknown)} (keys: description, stages)")
    return [_stage(stage, f"{path}: stage {i}") for i, stage in enumerate(recipe["stages"], start=1)]


def _stage(stage: Any, where: str) -> Stage:
    if isinstance(stage, dict) and set(stage) == {"copy"}:
        copy = stage["copy"]
        if (
            not isinstance(copy, dict)
            or set(copy) != {"from", "to"}
            or not all(isinstance(v, str) for v in copy.values())
        ):
            raise RecipeError(f"{where}: copy takes a mapping of from and to, two folders")
        return Stage(copy=(copy["from"], copy["to"]))
    if not isinstance(stage, dict) or "ponder" not in stage or not set(stage) <= {"ponder", "args", "positional"}:
        raise RecipeError(f"{where}: expected ponder (a command, with args and positional) or copy")
    command, args, positional = stage["ponder"], stage.get("args") or {}, stage.get("positional") or []
    if not isinstance(command, str) or not command.split():
        raise RecipeError(f"{where}: ponder names a command, such as 'train sft'")
    if not isinstance(args, dict) or not isinstance(positional, list):
        raise RecipeError(f"{where}: args is a mapping of flag names to values, positional a list")
    argv = [*command.split(), *map(str, positional)]
    for name, value in args.items():
        argv += _flag(str(name), value)
    return Stage(argv=tuple(argv))


def _flag(name: str, value: Any) -> list[str]:
    """One flag's words: ``--name`` and its value (a list: its values; true: none; false: ``false``)."""
    if value is True:
        return [f"--{name}"]
    if isinstance(value, list):
        return [f"--{name}", *map(_word, value)]
    return [f"--{name}", _word(value)]


def _word(value: Any) -> str:
    return "false" if value is False else str(value)


def check(argv: list[str] | tuple[str, ...]) -> Any:
    """Parse a ``ponder`` command line (without ``ponder``) with that command's own parser, without running it:
    the parsed config or namespace; RecipeError with the parser's complaint."""
    argv = list(argv)
    command, verb, rest = argv[0], (argv[1] if len(argv) > 1 else ""), argv[2:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if command == "train" and verb in train_cli.TRAINERS:
                return train_cli.parse_config(verb, rest)
            if command == "train" and verb in train_cli.DELEGATED:
                return _module(train_cli.DELEGATED[verb][0]).build_parser().parse_args(rest)
            if command == "convert" and verb in CONVERTERS:
                return _module(CONVERTERS[verb][0]).build_parser().parse_args(rest)
            if command == "label":
                return _module("training.label").parse_config(argv[1:])
    except SystemExit:  # argparse's error(): the last line it printed says what is wrong
        lines = err.getvalue().strip().splitlines()
        raise RecipeError(f"{shlex.join(['ponder', *argv])}: {lines[-1] if lines else 'bad arguments'}") from None
    except (train_cli.ConfigError, ValueError) as exc:
        raise RecipeError(f"{shlex.join(['ponder', *argv])}: {' '.join(str(exc).split())}") from None
    raise RecipeError(f"ponder {command} {verb}: not a command a recipe runs (train, label, convert)")


def _module(name: str) -> Any:
    return importlib.import_module(name)


def run(stages: list[Stage], dry_run: bool = False) -> int:
    """Check every stage, then print and (unless ``dry_run``) run each in turn; the first failure's exit status."""
    for stage in stages:
        if stage.copy is None:
            check(stage.argv)
    for number, stage in enumerate(stages, start=1):
        print(stage.command_line(), flush=True)
        if dry_run:
            continue
        if stage.copy is not None:
            source, target = map(Path, stage.copy)
            if not source.is_dir():
                print(f"{PROG}: error: stage {number}: {source} is not a folder", file=sys.stderr)
                return 2
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target)
            continue
        code = subprocess.call([sys.executable, "-m", "server.cli", *stage.argv])
        if code != 0:
            print(f"{PROG}: error: stage {number} exited with status {code}: {stage.command_line()}", file=sys.stderr)
            return code
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser(
        "run",
        help="check, print and run a recipe's stages",
        description="\n\n".join(__doc__.split("\n\n")[1:4]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="a recipe file, e.g. recipes/default-policy.yaml")
    p.add_argument("--dry-run", action="store_true", help="check the stages and print their command lines only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return run(load(args.recipe), dry_run=args.dry_run)
    except RecipeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
