"""The models ``ponder serve`` uses when none is named: the repo's trained defaults, else tiny random stand-ins.

Trained defaults live in ``models/default-policy`` and ``models/default-prm`` at the repository root. A shipped
policy without a shipped PRM is served alone: the strategies that need a reward model then answer that one is
missing (a warning says so at start). With no shipped policy, the tiny random-weight models of
:mod:`server.tiny_models` are built once (seconds) into ``$PONDER_CACHE_DIR/tiny-v2/`` (default
``~/.cache/ponder/tiny-v2/``) so that the server starts anywhere with no download; they produce noise, which is
logged as a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ponder.models")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIR = REPO_ROOT / "models"
TINY_VERSION = "tiny-v2"  # bump when the tiny builders change, so stale caches are not reused


@dataclass(frozen=True)
class DefaultModels:
    policy: Path
    prm: Path | None  # None: a trained policy is shipped without a PRM
    random_weights: bool = False  # True: tiny random stand-ins, not trained models

    def prm_or_stand_in(self, cache_dir: Path | None = None) -> Path:
        """The PRM, or the tiny random-weight stand-in where none is shipped (benchmarks of the serving path)."""
        return self.prm or stand_in_prm(cache_dir)


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where Ponder caches built models: ``cache_dir``, else ``$PONDER_CACHE_DIR``, else ``~/.cache/ponder``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PONDER_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ponder"


def ensure_default_models(cache_dir: Path | None = None) -> DefaultModels:
    """Paths of the default policy and PRM, building the tiny stand-ins first if the repo ships none."""
    policy, prm = SHIPPED_DIR / "default-policy", SHIPPED_DIR / "default-prm"
    if _is_checkpoint(policy):
        shipped_prm = prm if _is_checkpoint(prm) else None
        if shipped_prm is None:
            log.warning(
                "serving the trained default policy %s without a reward model: none is shipped yet (best_of_n, "
                "weighted_best_of_n and the PRM-guided searches need --prm)",
                policy,
            )
        return DefaultModels(policy, shipped_prm)
    # deferred import: torch/transformers only on this path
    from server.tiny_models import save_tiny_policy

    root = cache_root(cache_dir) / TINY_VERSION
    models = DefaultModels(_build_once(root / "policy", save_tiny_policy), stand_in_prm(cache_dir), random_weights=True)
    log.warning(
        "no trained default models in %s: serving tiny RANDOM-WEIGHT stand-ins from %s (their output is "
        "noise; pass --model/--prm to serve real ones)",
        SHIPPED_DIR,
        root,
    )
    return models


def stand_in_prm(cache_dir: Path | None = None) -> Path:
    """The tiny random-weight PRM, built once into the cache."""
    # deferred import: torch/transformers only on this path
    from server.tiny_models import save_tiny_prm

    return _build_once(cache_root(cache_dir) / TINY_VERSION / "prm", save_tiny_prm)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _build_once(path: Path, build: Callable[[Path], Path]) -> Path:
    """Build into a temporary sibling and rename it into place, so a crash or a concurrent build never leaves
    a half-written folder at ``path``."""
    if _is_checkpoint(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build(staging)
        staging.rename(path)
    except OSError:
        if not _is_checkpoint(path):  # not a lost race with another builder
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
