"""Every sample's reward-model score and correctness under best_of_n N=16 on arith training problems (levels 1-8,
the first 40 per level, seed 0: the first 40 of the tuning split): what ``stop_score.py`` replays.

    .venv/bin/python results/auto/stop-score/scores.py 40 results/auto/stop-score/bon16-train.jsonl

Resumes: problems already in the output file are skipped.
"""

import asyncio
import json
import sys
from pathlib import Path

from benchmarks.accuracy import InProcessClient, request_seed
from server.protocol import ChatCompletionRequest
from training.tasks import get_task


async def main(limit: int, out_path: Path) -> None:
    task = get_task("arith")
    client = await InProcessClient.start("models/default-policy", "models/default-prm", 0, 2.0)
    done = {json.loads(line)["id"] for line in out_path.read_text().splitlines()} if out_path.exists() else set()
    gate = asyncio.Semaphore(16)
    with out_path.open("a") as out:

        async def one(problem) -> None:
            async with gate:
                request = ChatCompletionRequest(
                    messages=[{"role": "user", "content": task.prompt(problem)}],
                    max_tokens=task.max_tokens,
                    temperature=0.8,
                    seed=request_seed(0, problem.id),
                    strategy="best_of_n",
                    strategy_params={"num_samples": 16},
                )
                result = await client.service.run(client.service.prepare(request))
                rows = [
                    {"score": c.score, "tokens": c.num_tokens, "correct": task.grade(problem, c.text)}
                    for c in result.candidates
                ]
                out.write(json.dumps({"id": problem.id, "samples": rows}) + "\n")
                out.flush()

        problems = [
            p for level in range(1, 9) for p in task.load("train", limit=limit, seed=0, level=level) if p.id not in done
        ]
        await asyncio.gather(*(one(p) for p in problems))
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
