"""Benchmark scripts: each prints its numbers and saves them (JSON + Markdown) under an output folder."""

import json
from pathlib import Path
from typing import Any


def save_json(path: Path | None, report: Any) -> None:
    """Write ``report`` as indented JSON to ``path`` (its folder made first); nothing when ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
