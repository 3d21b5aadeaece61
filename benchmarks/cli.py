"""``ponder bench BENCHMARK [options]``: the benchmark suite's command line.

- ``accuracy``: accuracy against generated tokens per strategy and budget (:mod:`benchmarks.accuracy`)
- ``load``: bounded load and soak against a running or spawned server (:mod:`benchmarks.load`)
- ``overhead``: Ponder's latency against vLLM's own server on the same model (:mod:`benchmarks.overhead`)
- ``serve``: latency and throughput by concurrency for Ponder, vLLM's own server and optillm (:mod:`benchmarks.serve`)
"""

from __future__ import annotations

import sys

from server.verbs import VerbGroup

BENCHMARKS = {
    "accuracy": ("benchmarks.accuracy", "accuracy against generated tokens, per strategy and budget N"),
    "load": ("benchmarks.load", "bounded load and soak: latency percentiles, errors, memory"),
    "overhead": ("benchmarks.overhead", "Ponder's latency against vLLM's own server (none, best_of_n)"),
    "serve": ("benchmarks.serve", "serving speed by concurrency: Ponder, vLLM's own server, optillm on it"),
    "startup": ("benchmarks.startup", "engine start-up (compiled vs eager, one by one vs at once) and time to /health"),
    "combine": ("benchmarks.combine", "one accuracy table and plot from several accuracy runs' strategies"),
    "paired": ("benchmarks.paired", "paired bootstrap difference of two configurations of one accuracy run"),
    "game24-lost": ("benchmarks.game24_lost", "where a Game of 24 tree search loses the way to 24"),
    "game24-value": ("benchmarks.game24_value", "how well Game of 24 PRMs value search states (AUROC per depth)"),
    "optillm-prompt": ("benchmarks.optillm_prompt", "a policy's accuracy with optillm's rewrite of the prompt"),
    "check-models": ("benchmarks.check_models", "the shipped checkpoints' quality against the tests' old thresholds"),
    "thinking-length": ("benchmarks.thinking_length", "reference thinking length per arith level: budget forcing's K"),
}


GROUP = VerbGroup("ponder bench", "benchmark", BENCHMARKS)
main = GROUP.main


if __name__ == "__main__":
    sys.exit(main())
