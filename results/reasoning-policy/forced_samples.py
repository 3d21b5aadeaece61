"""A few greedy answers of models/reasoning-policy to held-out arith test problems, plain and budget-forced, with
their full text: what a forced "Wait" does. Writes forced-samples.md next to this file.

    .venv/bin/python results/reasoning-policy/forced_samples.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.engine.vllm_engine import VLLMEngine
from strategies.base import SamplingSpec
from strategies.budget_forcing import BudgetForcing
from training.evaluate_policy import chat_prompt
from training.tasks import get_task

K = {4: 115, 6: 172}  # results/reasoning-policy/thinking-length
PROBLEMS = 4


async def main() -> None:
    arith = get_task("arith")
    engine = await VLLMEngine.create("models/reasoning-policy", kv_cache_gib=0.5, seed=0)
    lines = ["# Greedy answers, plain and budget-forced (first problems of the test split)", ""]
    try:
        for level, k in K.items():
            problems = arith.load("test", limit=PROBLEMS, seed=0, level=level)
            prompts = [chat_prompt(engine.tokenizer, arith, p) for p in problems]
            spec = SamplingSpec(n=1, temperature=0.0, max_tokens=512)
            forced_engine = BudgetForcing(engine, "</think>", k, engine.count_tokens)
            plain = await engine.generate(prompts, spec, f"plain-{level}")
            forced = await forced_engine.generate(prompts, spec, f"forced-{level}")
            for problem, a, b in zip(problems, plain, forced, strict=True):
                lines += [f"## L{level} {problem.id} (K = {k}): {problem.question}", ""]
                for name, sample in (("plain", a[0]), (f"forced, K = {k}", b[0])):
                    ok = arith.grade(problem, sample.text)
                    lines += [f"{name}: {sample.num_tokens} tokens, {'right' if ok else 'wrong'}", "", "```"]
                    lines += [sample.text, "```", ""]
    finally:
        await engine.shutdown()
    (Path(__file__).parent / "forced-samples.md").write_text("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
