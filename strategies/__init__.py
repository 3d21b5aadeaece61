"""The strategy registry: a name maps to one async function, its config dataclass and what it needs.

Built-in strategies register themselves with ``@register`` when this package is imported. Third-party packages
add theirs through the ``ponder.strategies`` entry-point group: each entry point names a module, and importing it
runs its ``@register`` lines. A duplicate name fails at import; an unknown name fails with the list of known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from strategies.base import Engine, Scorer, StrategyConfig, StrategyResult, Task

StrategyFn = Callable[[Task, Any, Engine, Scorer | None], Awaitable[StrategyResult]]

BUILTIN_MODULES = (
    "none",
    "best_of_n",
    "weighted_best_of_n",
    "self_consistency",
    "beam_search",
    "dvts",
    "tree_of_thought",
    "mcts",
)


@dataclass(frozen=True)
class StrategySpec:
    name: str
    fn: StrategyFn
    config_cls: type[StrategyConfig]
    needs_scorer: bool  # True: refuse the request when no reward model is loaded
    description: str


_REGISTRY: dict[str, StrategySpec] = {}


class UnknownStrategyError(KeyError):
    """Raised for a strategy name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(
    name: str, *, config: type[StrategyConfig], needs_scorer: bool = False
) -> Callable[[StrategyFn], StrategyFn]:
    """Class the decorated async function as strategy ``name``."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = StrategySpec(name, fn, config, needs_scorer, doc[0] if doc else "")
        return fn

    return wrap


def get(name: str) -> StrategySpec:
    """The strategy called ``name``, or :class:`UnknownStrategyError` listing the available ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownStrategyError(f"unknown strategy {name!r}; available: {known}") from None


def available() -> list[StrategySpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _load() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"strategies.{module}")
    for entry in entry_points(group="ponder.strategies"):
        entry.load()


_load()
