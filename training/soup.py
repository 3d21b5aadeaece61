"""A uniform model soup: the weights of several fine-tuned copies of one policy, averaged.

Wortsman et al. 2022 ("Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time"): runs fine-tuned from the same start lie in one basin, so their average is a model of
the same size that keeps what the runs share and cancels much of what each learned by chance. Every ingredient must
have the same architecture and tensors (say, Step-DPO runs from the same SFT policy); the soup is written with the
first ingredient's config, tokenizer and chat template, in its dtype, and serves like any policy::

    ponder train soup runs/sdpo-g24 runs/sdpo-g24c runs/sdpo-g24d runs/sdpo-g24e --output runs/soup-g24
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def average(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of same-shaped state dicts, computed in float32, in the first one's dtypes.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    >>> average([a, b])["w"].tolist()
    [2.0, 4.0]
    """
    first = state_dicts[0]
    for i, other in enumerate(state_dicts[1:], start=2):
        if other.keys() != first.keys():
            raise ValueError(f"ingredient {i} has other tensors than the first: not fine-tuned copies of one model")
        if bad := next((k for k in first if other[k].shape != first[k].shape), None):
            raise ValueError(
                f"ingredient {i}: tensor {bad} is {tuple(other[bad].shape)}, not {tuple(first[bad].shape)}"
            )
    return {
        k: (sum(sd[k].float() for sd in state_dicts) / len(state_dicts)).to(first[k].dtype).contiguous() for k in first
    }


def make_soup(ingredients: Sequence[str | Path], output: str | Path) -> Path:
    """Average the ``model.safetensors`` of ``ingredients`` into ``output`` (the first one's other files copied)."""
    if len(ingredients) < 2:
        raise ValueError("a soup needs at least two ingredients")
    paths = [Path(p) for p in ingredients]
    if missing := next((p for p in paths if not (p / WEIGHTS).is_file()), None):
        raise ValueError(f"{str(missing)!r} has no {WEIGHTS}")
    soup = average([load_file(str(p / WEIGHTS)) for p in paths])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for item in paths[0].iterdir():
        if item.is_file() and item.name != WEIGHTS and not item.name.startswith(("README", "metrics", "loss")):
            shutil.copy2(item, out / item.name)
    save_file(soup, str(out / WEIGHTS), metadata={"format": "pt"})
    card = {"method": "uniform model soup", "paper": "Wortsman et al. 2022", "ingredients": [str(p) for p in paths]}
    (out / "soup.json").write_text(json.dumps(card, indent=2) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder train soup", description=__doc__.split("\n\n")[0])
    p.add_argument("ingredients", nargs="+", help="policy folders fine-tuned from the same model")
    p.add_argument("--output", required=True, help="folder for the soup")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = make_soup(args.ingredients, args.output)
    except ValueError as exc:
        print(f"soup: error: {exc}", file=sys.stderr)
        return 2
    print(f"soup of {len(args.ingredients)} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
