"""The shipped checkpoints' quality, each figure against the threshold the test suite once asserted: the tests now
check only that each model loads and answers in its format, and this command measures how well it answers.

    ponder bench check-models [--only game24-policy,game24-prm,default,smollm2] [--output results/check-models]

- ``game24-policy`` (vLLM, ``models/game24-policy``): its greedy verdicts to Tree of Thoughts' value prompt agree with
  the solver's on 24 partial solutions of generated train puzzles (a coin agrees on 12); ToT (b = 5, k = 5) solves
  16 train puzzles on its verdicts alone, and with ToT's final check (32 searches at once, as a server's requests).
- ``game24-prm`` (torch, ``models/game24-prm``): the AUROC of its step score between states that can still make 24
  and states that cannot, at depths 1 / 2 / 3 (60 generated train puzzles, 4 solver paths each).
- ``default`` (torch and vLLM, ``models/default-policy`` and ``models/default-prm``): read as likelihood PRMs, each
  scores a wrong product below 0.5 and the right one above; the policy solves some but not all of 24 level-6 train
  problems greedily on vLLM, and transformers' greedy decode agrees with vLLM's on at least 5 of 6.
- ``smollm2`` (torch, SmolLM2-135M-Instruct converted from the PyPI GGUF): it answers "What is 2+3?" with a 5.

Prints a table and saves ``check-models.json`` and ``check-models.md`` under ``--output``; the exit status is 1 when
any figure misses its threshold, 2 when a model is missing. The vLLM parts take minutes on 2 CPU cores (ToT's 32
searches most of it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parents[1] / "models"
GAME24_POLICY, GAME24_PRM = MODELS / "game24-policy", MODELS / "game24-prm"
DEFAULT_POLICY, DEFAULT_PRM = MODELS / "default-policy", MODELS / "default-prm"
PLANTED = (
    "Start with 12. (1) Add 7. (2) Multiply by 3. What is the result?",
    ["(1) Add 7: 12 + 7 = 19", "(2) Multiply by 3: 19 * 3 = 57", "\\boxed{57}"],
    ["(1) Add 7: 12 + 7 = 19", "(2) Multiply by 3: 19 * 3 = 75", "\\boxed{75}"],
)


@dataclass
class Figure:
    """One measured figure and the threshold it is held to."""

    model: str
    check: str
    value: Any
    threshold: str
    passed: bool
    detail: str = ""


def at_least(model: str, check: str, value: float, floor: float, detail: str = "") -> Figure:
    return Figure(model, check, value, f">= {floor:g}", value >= floor, detail)


# ---- game24-policy (vLLM) -----------------------------------------------------------------------------------------
async def game24_policy_figures() -> list[Figure]:
    from server.accounting import CountingEngine, Ledger
    from server.engine.vllm_engine import VLLMEngine
    from strategies import get as get_strategy
    from strategies.base import SamplingSpec, Task
    from strategies.search import VALUE_TOKENS, self_value, value_query
    from training.evaluate_policy import chat_prompt
    from training.tasks import get_task
    from training.tasks.game24 import file_train_rows

    game24 = get_task("game24")
    engine = await VLLMEngine.create(str(GAME24_POLICY), kv_cache_gib=0.5, dtype="float32", seed=0)
    try:
        # verdicts: 12 generated train puzzles (past the file rows), two partial solutions each, half dead ends
        problems = game24.load("train", limit=file_train_rows() + 12, seed=7)[-12:]
        rng = random.Random(0)
        cases = [(p, *game24.value_example(p, rng)) for p in problems for _ in range(2)]
        prompts = [value_query(chat_prompt(engine.tokenizer, game24, p), partial) for p, partial, _ in cases]
        outputs = await engine.generate(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=VALUE_TOKENS), "v")
        verdicts = [self_value([samples[0].text])[1] for samples in outputs]
        agree = sum(("sure" in v) == sure for v, (_, _, sure) in zip(verdicts, cases, strict=True))
        figures = [
            at_least("game24-policy", "verdicts agreeing with the solver, of 24", agree, 16, "a coin: 12; measured 18")
        ]

        # Tree of Thoughts on 16 train puzzles, on its verdicts alone and with its final check
        puzzles = game24.load("train", limit=16, seed=3)
        spec = get_strategy("tree_of_thought")

        async def solve(check: str | None, k: int) -> bool:
            prompt = chat_prompt(engine.tokenizer, game24, puzzles[k])
            task = Task(
                prompt=prompt,
                question=game24.prompt(puzzles[k]),
                max_tokens=game24.max_tokens,
                temperature=None,
                top_p=1.0,
                request_id=f"tot-{check}-{k}",
            )
            config = spec.config_cls(value_source="self", final_check=check)
            ledger = Ledger(token_budget=20_000)
            result = await spec.fn(task, config, CountingEngine(engine, ledger, task.request_id), None)
            return game24.grade(puzzles[k], result.choices[0].text)

        runs = [(check, k) for check in (None, "game24") for k in range(len(puzzles))]
        found = await asyncio.gather(*(solve(check, k) for check, k in runs))
        solved = {None: 0, "game24": 0}
        for (check, _), right in zip(runs, found, strict=True):
            solved[check] += right
        figures += [
            at_least("game24-policy", "ToT puzzles solved on its verdicts, of 16", solved[None], 1, "measured 3-6"),
            at_least(
                "game24-policy", "ToT puzzles solved with the final check, of 16", solved["game24"], 6, "measured 9-12"
            ),
        ]
    finally:
        await engine.shutdown()
    return figures


# ---- game24-prm (torch) -------------------------------------------------------------------------------------------
def game24_prm_figures() -> list[Figure]:
    from benchmarks.game24_value import depth_aurocs, solver_states
    from reward_models.torch_prm import load_reward_model, score_steps

    model, tokenizer = load_reward_model(GAME24_PRM)
    _, items, labels = solver_states(puzzles=60, paths=4, seed=7, split="train")
    found = depth_aurocs(score_steps(model, tokenizer, items), labels)
    measured = {1: 0.655, 2: 0.831, 3: 0.981}
    return [
        at_least("game24-prm", f"AUROC at depth {d} (states that can still make 24)", round(a, 3), floor, f"was {m}")
        for d, a, floor, m in zip((1, 2, 3), found, (0.6, 0.8, 0.9), measured.values(), strict=True)
    ]


# ---- default policy and verifier ----------------------------------------------------------------------------------
def default_likelihood_figures() -> list[Figure]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from reward_models.likelihood import torch_scores
    from training.tasks.arith import INSTRUCTION

    question, right, wrong = PLANTED
    figures = []
    for name, path in (("default-policy", DEFAULT_POLICY), ("default-prm", DEFAULT_PRM)):
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        good, bad = torch_scores(
            model, tokenizer, [(question + "\n" + INSTRUCTION, right), (question + "\n" + INSTRUCTION, wrong)]
        )
        figures += [
            Figure(
                name, "likelihood score of a wrong product (19 * 3 = 75)", float(f"{bad[1]:.3g}"), "< 0.5", bad[1] < 0.5
            ),
            Figure(
                name,
                "likelihood score of the right product (19 * 3 = 57)",
                float(f"{good[1]:.3g}"),
                "> 0.5",
                good[1] > 0.5,
            ),
        ]
    return figures


async def default_policy_figures() -> list[Figure]:
    """Greedy accuracy on 24 level-6 train problems on vLLM, and transformers' greedy decode of six of them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.engine.vllm_engine import VLLMEngine
    from strategies.base import SamplingSpec
    from training.evaluate_policy import chat_prompt
    from training.tasks import get_task

    task = get_task("arith")
    pool = task.load("train", limit=24, seed=0, level=[6])
    engine = await VLLMEngine.create(str(DEFAULT_POLICY), kv_cache_gib=0.5, dtype="float32", seed=0)
    try:
        prompts = [chat_prompt(engine.tokenizer, task, p) for p in pool]
        outputs = await engine.generate(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=task.max_tokens), "g")
    finally:
        await engine.shutdown()
    right = [task.grade(p, samples[0].text) for p, samples in zip(pool, outputs, strict=True)]
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_POLICY, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_POLICY)
    agree = 0
    for problem, prompt, vllm_right in list(zip(pool, prompts, right, strict=True))[:6]:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=task.max_tokens, do_sample=False)
        agree += task.grade(problem, tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)) == vllm_right
    solved = sum(right)
    return [
        Figure(
            "default-policy",
            "level-6 train problems solved greedily (vLLM), of 24",
            solved,
            "> 0 and < 24",
            0 < solved < 24,
            "about 70%",
        ),
        at_least(
            "default-policy", "transformers' greedy answers graded as vLLM's, of 6", agree, 5, "a near tie may flip one"
        ),
    ]


# ---- SmolLM2 (torch) ----------------------------------------------------------------------------------------------
def smollm2_figures() -> list[Figure]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.convert_gguf import ensure_smollm2

    folder = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    question = [{"role": "user", "content": "What is 2+3?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return [Figure("smollm2", "greedy answer to 'What is 2+3?' contains 5", text, "contains '5'", "5" in text)]


CHECKS: dict[str, tuple[list[Path], Callable[[], Any]]] = {
    "game24-policy": ([GAME24_POLICY], game24_policy_figures),
    "game24-prm": ([GAME24_PRM], game24_prm_figures),
    "default": (
        [DEFAULT_POLICY, DEFAULT_PRM],
        lambda: [*default_likelihood_figures(), *asyncio.run(default_policy_figures())],
    ),
    "smollm2": ([], smollm2_figures),
}


def run(name: str) -> list[Figure]:
    """One check's figures (an async check runs on its own event loop); an error is one failed figure."""
    _, check = CHECKS[name]
    try:
        result = check()
        return asyncio.run(result) if asyncio.iscoroutine(result) else result
    except Exception as exc:  # a check that cannot run fails, with its reason, and the others still run
        return [Figure(name, "the check ran", f"{type(exc).__name__}: {exc}", "no error", False)]


def markdown(figures: list[Figure], seconds: float) -> str:
    lines = [
        "# Shipped checkpoints against the thresholds the tests asserted",
        "",
        f"`ponder bench check-models`, {seconds:.0f} s. {sum(f.passed for f in figures)} of {len(figures)} pass.",
        "",
        "| model | figure | value | threshold | pass | note |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.model} | {f.check} | {f.value} | {f.threshold} | {'yes' if f.passed else 'NO'} | {f.detail} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench check-models", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help=f"comma-separated checks to run (default: all of {', '.join(CHECKS)})", default=",".join(CHECKS)
    )
    parser.add_argument("--output", default="results/check-models", help="folder for the JSON and Markdown report")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        print(
            f"ponder bench check-models: error: unknown check {unknown[0] if unknown else ''!r}; "
            f"known: {', '.join(CHECKS)}",
            file=sys.stderr,
        )
        return 2
    missing = [p for n in names for p in CHECKS[n][0] if not (p / "config.json").is_file()]
    if missing:
        print(f"ponder bench check-models: error: not a model folder: {missing[0]}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    figures: list[Figure] = []
    for name in names:
        print(f"checking {name} ...", flush=True)
        figures += run(name)
    text = markdown(figures, time.perf_counter() - started)
    print(text, end="")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "check-models.json").write_text(
        json.dumps({"checks": names, "figures": [asdict(f) for f in figures]}, indent=2, default=str) + "\n"
    )
    (output / "check-models.md").write_text(text)
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
