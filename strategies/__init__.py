"""The strategy registry: a name maps to one async function, its config dataclass and what it needs.

Built-in strategies register themselves with ``@register`` when this package is imported. Third-party packages
add theirs through the ``ponder.strategies`` entry-point group: each entry point names a module, and importing it
runs its ``@register`` lines. A duplicate name fails at import; an unknown name fails with the list of known ones.

A strategy may register presets: named parameter sets of it (``none`` has ``greedy``, at temperature 0 with one
sample), which ``ponder bench accuracy`` takes in place of a strategy name (:func:`resolve`). What the server and the
benchmarks need to know of a strategy beyond that, its config class says (:class:`~strategies.base.StrategyConfig`).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
    "deepconf",
    "auto",
    "adaptive_consistency",
    "particle_filtering",
)


@dataclass(frozen=True)
class StrategySpec:
    name: str
    fn: StrategyFn
    config_cls: type[StrategyConfig]
    needs_scorer: bool  # True: refuse the request when no reward model is loaded
    description: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # preset name -> its fixed params


_REGISTRY: dict[str, StrategySpec] = {}
_PRESETS: dict[str, str] = {}  # preset name -> the strategy that registered it


class UnknownStrategyError(KeyError):
    """Raised for a strategy name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(
    name: str,
    *,
    config: type[StrategyConfig],
    needs_scorer: bool = False,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[StrategyFn], StrategyFn]:
    """Class the decorated async function as strategy ``name``, with its ``presets`` (name -> fixed params)."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        names = [name, *(presets or {})]
        for new in names:
            if new in _REGISTRY or new in _PRESETS or names.count(new) > 1:
                raise ValueError(f"strategy or preset {new!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        fixed = {preset: dict(params) for preset, params in (presets or {}).items()}
        _REGISTRY[name] = StrategySpec(name, fn, config, needs_scorer, doc[0] if doc else "", fixed)
        _PRESETS.update(dict.fromkeys(fixed, name))
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


def resolve(name: str) -> tuple[StrategySpec, dict[str, Any]]:
    """The strategy called ``name`` with no fixed params, or the strategy of preset ``name`` with the preset's;
    :class:`UnknownStrategyError` listing both otherwise."""
    if name in _PRESETS:
        spec = _REGISTRY[_PRESETS[name]]
        return spec, dict(spec.presets[name])
    if name in _REGISTRY:
        return _REGISTRY[name], {}
    known = ", ".join(sorted([*_REGISTRY, *_PRESETS]))
    raise UnknownStrategyError(f"unknown strategy {name!r}; available: {known}")


def _load() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"strategies.{module}")
    for entry in entry_points(group="ponder.strategies"):
        entry.load()


_load()
