"""A ``ponder`` command group whose verbs live with their code: ``ponder GROUP VERB ...`` hands the rest of the line
to the verb's module's ``main(argv)``, imported only for that verb (a registry of module names, as vLLM registers
its parsers lazily). ``ponder bench`` and ``ponder convert`` are such groups.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class VerbGroup:
    """``prog`` (e.g. ``ponder bench``), what a verb is called in its usage line, and verb -> (module, help)."""

    prog: str
    noun: str
    verbs: dict[str, tuple[str, str]]

    def usage(self) -> str:
        """The group's help: one line per verb."""
        noun = self.noun.upper()
        lines = [f"usage: {self.prog} {noun} [options]   ({self.prog} {noun} --help for its options)", ""]
        lines.append(f"{self.noun}s:")
        width = max(map(len, self.verbs))
        lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in self.verbs.items()]
        return "\n".join(lines)

    def main(self, argv: list[str] | None = None) -> int:
        """Run the verb that ``argv`` names; its usage for none or ``--help``; an unknown verb is one line and 2."""
        argv = sys.argv[1:] if argv is None else list(argv)
        if not argv or argv[0] in ("-h", "--help"):
            print(self.usage())
            return 0
        if argv[0] not in self.verbs:
            known = ", ".join(self.verbs)
            print(f"{self.prog}: error: unknown {self.noun} {argv[0]!r}; {self.noun}s: {known}", file=sys.stderr)
            return 2
        return int(importlib.import_module(self.verbs[argv[0]][0]).main(argv[1:]) or 0)
