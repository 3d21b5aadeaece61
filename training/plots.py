"""Loss curves from a ``transformers.Trainer`` run, as a PNG: one figure per run, reusable by every trainer.

The trainer's ``state.log_history`` is a list of dicts, one per logging step (``{"step", "loss", "learning_rate",
...}``) plus evaluation rows (``"eval_loss"``) and a final summary row (``"train_loss"``, the run's mean). This
module plots every ``*loss`` key it finds against the step, so a DPO or PRM trainer that logs other losses gets
them drawn with no change here. matplotlib runs headless (the Agg backend); nothing is shown on screen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_KEYS = frozenset({"train_loss"})  # the run's mean loss, logged once at the end: not a curve


def loss_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Every logged ``*loss`` key as (steps, values), in logging order.

    >>> loss_curves([{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5, "eval_loss": 1.7}, {"train_loss": 1.8}])
    {'loss': ([10, 20], [2.0, 1.5]), 'eval_loss': ([20], [1.7])}
    """
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for row in log_history:
        if "step" not in row:
            continue
        for key, value in row.items():
            if key.endswith("loss") and key not in SUMMARY_KEYS and isinstance(value, int | float):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(int(row["step"]))
                values.append(float(value))
    return curves


def plot_loss(log_history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "training loss") -> Path:
    """Draw :func:`loss_curves` to ``path`` (PNG, log-scale y when the loss spans a decade); returns ``path``."""
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred import: matplotlib only when a plot is drawn
    import matplotlib.pyplot as plt

    curves = loss_curves(log_history)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        for key, (steps, values) in curves.items():
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        values = [v for _, vs in curves.values() for v in vs if v > 0]
        if values and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats per completion token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no loss was logged", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
