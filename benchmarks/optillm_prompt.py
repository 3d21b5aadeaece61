"""How much of a policy's accuracy survives optillm's rewrite of the request: per-sample accuracy on ``arith`` test
problems with the prompt as a client sends it and as optillm 0.4.0 forwards it to the model.

optillm (``server.parse_conversation``, read from its 0.4.0 source) turns the conversation into one string,
``"User: " + content`` per user turn, and its approaches send that back as the user message after a system turn
with the request's system prompt (empty when there is none). A chat model trained with such turns barely notices;
a small policy trained on one exact prompt layout can. ``ponder bench serve --workload arith`` reports each target's
accuracy; this check tells how much of optillm's figure is the rewrite rather than its selection.

    ponder bench optillm-prompt --model models/default-policy --level 6 \\
        --output results/serve-arith-l6/optillm-prompt.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks import save_json
from training.tasks import get_task

LAYOUTS = ("as sent", "optillm 0.4.0")


def messages(layout: str, content: str) -> list[dict[str, str]]:
    """The chat messages the model gets for one user message under ``layout``.

    >>> messages("optillm 0.4.0", "2 + 2?")
    [{'role': 'system', 'content': ''}, {'role': 'user', 'content': 'User: 2 + 2?'}]
    >>> messages("as sent", "2 + 2?")
    [{'role': 'user', 'content': '2 + 2?'}]
    """
    if layout == "as sent":
        return [{"role": "user", "content": content}]
    return [{"role": "system", "content": ""}, {"role": "user", "content": f"User: {content}"}]


def measure(model: str, level: int, problems: int, samples: int, temperatures: list[float]) -> dict[str, Any]:
    """Per-sample accuracy for every layout and temperature, on one vLLM engine (seeded)."""
    # deferred import: vLLM and transformers (seconds to import) only where an engine is used
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    task = get_task("arith")
    chosen = task.load("test", limit=problems, seed=0, level=level)
    tokenizer = AutoTokenizer.from_pretrained(model)
    llm = LLM(model, max_model_len=1024, seed=0)
    rows = []
    for layout in LAYOUTS:
        prompts = [
            {
                "prompt_token_ids": tokenizer.apply_chat_template(
                    messages(layout, task.prompt(p)), add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            }
            for p in chosen
        ]
        for temperature in temperatures:
            params = SamplingParams(n=samples, temperature=temperature, max_tokens=task.max_tokens, seed=1)
            outputs = llm.generate(prompts, params, use_tqdm=False)
            right = sum(task.grade(p, c.text) for p, o in zip(chosen, outputs, strict=True) for c in o.outputs)
            rows.append({"layout": layout, "temperature": temperature, "accuracy": right / (samples * len(chosen))})
            print(f"{layout:>14}  temperature {temperature}: per-sample accuracy {rows[-1]['accuracy']:.1%}")
    return {"model": model, "level": level, "problems": len(chosen), "samples": samples, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponder bench optillm-prompt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default-policy", help="policy checkpoint folder")
    parser.add_argument("--level", type=int, default=6, help="arith level (default: 6)")
    parser.add_argument("--problems", type=int, default=64, help="test problems (default: 64, seed 0)")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem (default: 8)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir() or not 1 <= args.level <= 8 or min(args.problems, args.samples) < 1:
        print(
            f"{parser.prog}: error: --model must be a folder, --level 1-8, --problems and --samples at least 1",
            file=sys.stderr,
        )
        return 2
    report = measure(args.model, args.level, args.problems, args.samples, args.temperature)
    save_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
