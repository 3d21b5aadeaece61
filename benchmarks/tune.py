"""``ponder tune TUNER [options]``: fit a strategy's settings on a development split.

- ``auto``: the ``auto`` strategy's policy file, for a policy and reward-model pair (:mod:`benchmarks.tune_auto`)
"""

from __future__ import annotations

import sys

from server.verbs import VerbGroup

TUNERS = {
    "auto": ("benchmarks.tune_auto", "fit auto's policy file (difficulty bin x token budget -> strategy and N)"),
}

GROUP = VerbGroup("ponder tune", "tuner", TUNERS)
main = GROUP.main


if __name__ == "__main__":
    sys.exit(main())
