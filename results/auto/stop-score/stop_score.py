"""Adaptive stopping replayed on best_of_n N=16's samples (``scores.py``): rounds of ``round_size`` samples (sample k
of a seeded draw is the same sample whatever the round, so stopping after k samples is best-of-k on the first k),
stopping once the best score so far reaches ``stop_score``. Prints accuracy and mean tokens per setting, against
best-of-N at 4, 8 and 16. Training problems only: this is how ``stop_score`` 0.4 was chosen (the smallest value at
which best-of-16's accuracy held with rounds of 4).

    .venv/bin/python results/auto/stop-score/stop_score.py results/auto/stop-score/bon16-train.jsonl \
        > results/auto/stop-score/stop_score.txt
"""

import json
import sys
from pathlib import Path


def replay(rows, stop_score: float, round_size: int = 4, n: int = 16) -> tuple[float, float]:
    correct = tokens = 0
    for row in rows:
        samples = row["samples"]
        k = min(round_size, n)
        while k < n and max(s["score"] for s in samples[:k]) < stop_score:
            k = min(k + round_size, n)
        correct += max(samples[:k], key=lambda s: s["score"])["correct"]  # max keeps the first of equal scores
        tokens += sum(s["tokens"] for s in samples[:k])
    return correct / len(rows), tokens / len(rows)


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    full_accuracy, full_tokens = replay(rows, float("inf"))
    print(f"{len(rows)} training problems; best_of_n N=16: {full_accuracy:.1%}, {full_tokens:,.0f} tokens")
    for n in (4, 8):
        accuracy, tokens = replay(rows, float("inf"), n=n)
        print(f"best_of_n N={n}: {accuracy:.1%}, {tokens:,.0f} tokens ({tokens / full_tokens:.2f})")
    print("round_size stop_score accuracy tokens share")
    for round_size in (1, 2, 4):
        for stop in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            accuracy, tokens = replay(rows, stop, round_size)
            print(f"{round_size} {stop:.1f} {accuracy:.1%} {tokens:,.0f} {tokens / full_tokens:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
