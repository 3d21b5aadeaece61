"""Causal-LM PRMs (Math-Shepherd, RLHFlow and likelihood formats) on the real vLLM CPU engine, against a plain
torch forward.

The stand-in is a tiny random ``LlamaForCausalLM`` (:mod:`training.tiny_causal_prm`) whose vocabulary and chat
template hold both causal formats' pieces (Math-Shepherd's ``ки`` tag, RLHFlow's turns): one engine, loaded as
``load_scorer`` loads an RLHFlow PRM, is read in both formats (they differ only in how an item is rendered and where
its label is read; the engine and its two-token head are the same). The likelihood format reads the tiny policy's
engine (tests/conftest.py), as the policy's own likelihood does in a server. The reference scores follow each
model's published recipe literally: Math-Shepherd's card (logits at the ``ки`` tag ids, softmax over [+, -]) and
RLHFlow's (the logits that predict each assistant ``+``, found with a parallel conversation as search-and-learn
does), so the adapter's rendering and position finding are checked too, not only the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from reward_models import load_scorer
from reward_models.causal_prm import CausalLMProcessRewardModel, CausalPRMFormat
from reward_models.layout import STEP_TAG
from reward_models.likelihood import LikelihoodPRM, encode_steps, torch_scores
from server.cli import build_parser
from server.tiny_models import save_tiny_prm
from strategies.base import Scorer
from tests.conftest import KV_CACHE_GIB, eager
from training.tasks.arith import INSTRUCTION
from training.tiny_causal_prm import MATH_SHEPHERD_STEP_TAG, save_tiny_causal_prm

TAG = MATH_SHEPHERD_STEP_TAG
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "default-policy"
ITEMS = [
    ("What is 2+3?", ["2+3=5", "So the answer is 5."]),
    ("Compute 7*6.", ["7*6=42", "42-0=42", "The answer is 42."]),
    ("No steps", []),
    ("One step, with a tag: " + TAG, [f"a step that mentions {TAG} and ends in +", "then -"]),
    ("Multi-line step", ["x = 1\ny = 2", "x + y = 3"]),
]


def session_loop(test):
    """Run an async test on the session loop, where the engines live (pyproject)."""
    return pytest.mark.asyncio(loop_scope="session")(test)


def e2e(test):
    return pytest.mark.e2e(session_loop(test))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints in each layout, for the loader's checks (no engine starts on them)."""
    root = tmp_path_factory.mktemp("tiny-causal-prm")
    return {
        "math_shepherd": save_tiny_causal_prm(root / "ms", "math_shepherd", seed=1),
        "rlhflow": save_tiny_causal_prm(root / "rlhflow", "rlhflow", seed=2),
        "qwen": save_tiny_prm(root / "qwen"),
    }


@pytest.fixture(scope="module")
def causal_path(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["causal_prm"]  # tests/conftest.py


@pytest.fixture(scope="module")  # on the session loop (pyproject)
async def rlhflow(causal_path: Path):
    # the format from its config.json (ponder_prm_format: rlhflow), as `ponder serve --prm` reads it
    scorer = await load_scorer(causal_path, kv_cache_gib=KV_CACHE_GIB, dtype="float32", **eager(load_scorer))
    yield scorer
    await scorer.shutdown()


@pytest.fixture(scope="module")
def math_shepherd(rlhflow: CausalLMProcessRewardModel, causal_path: Path) -> CausalLMProcessRewardModel:
    """The same engine read in Math-Shepherd's format (the scorer that owns the engine stops it)."""
    return CausalLMProcessRewardModel(rlhflow._llm, str(causal_path), CausalPRMFormat("math_shepherd"))


@pytest.fixture(scope="module")
def likelihood(tiny_engine, tiny_models: dict[str, Path]) -> LikelihoodPRM:
    """The tiny policy read as a likelihood PRM on its own engine (tests/conftest.py; never shut down here)."""
    return LikelihoodPRM(tiny_engine.llm, str(tiny_models["policy"]))


def label_probabilities(path: Path, ids: list[int]) -> torch.Tensor:
    """P(+) / (P(+) + P(-)) of the next token at every position of ``ids``, from a plain transformers forward."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    candidates = [tokenizer.convert_tokens_to_ids("+"), tokenizer.convert_tokens_to_ids("-")]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    return logits[:, candidates].softmax(dim=-1)[:, 0]  # (T,)


def reference_math_shepherd(path: Path, question: str, steps: list[str]) -> tuple[str, list[float]]:
    """The Math-Shepherd card's recipe: f"{question} {output}", steps closed by " ки", read at the tag ids."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = f"{question} " + "\n".join(f"{step} {TAG}" for step in steps)
    ids = tokenizer.encode(text)  # with BOS, as the card encodes
    probs = label_probabilities(path, ids)
    return text, probs[torch.tensor(ids) == tokenizer.convert_tokens_to_ids(TAG)].tolist()


def reference_rlhflow(path: Path, question: str, steps: list[str]) -> tuple[str, list[float]]:
    """RLHFlow's recipe: user turns answered "+", read where each "+" is predicted (a parallel conversation with a
    marker token as the answers locates them, as search-and-learn's batched RLHFlow scorer does)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    conversation, marked = [], []
    for i, step in enumerate(steps):
        user = {"role": "user", "content": f"{question} {step}" if i == 0 else step}
        conversation += [user, {"role": "assistant", "content": "+"}]
        marked += [user, {"role": "assistant", "content": STEP_TAG}]  # a special token, in no step
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    marked_ids = tokenizer.apply_chat_template(marked, tokenize=True, return_dict=False)
    assert len(ids) == len(marked_ids)
    probs = label_probabilities(path, ids)
    return text, probs[:-1][torch.tensor(marked_ids[1:]) == tokenizer.convert_tokens_to_ids(STEP_TAG)].tolist()


REFERENCES = {"math_shepherd": reference_math_shepherd, "rlhflow": reference_rlhflow}


async def check_against_torch(scorer: CausalLMProcessRewardModel, path: Path, fmt: str) -> None:
    assert isinstance(scorer, CausalLMProcessRewardModel) and isinstance(scorer, Scorer) and scorer.kind == "prm"
    assert scorer.format.name == fmt
    submitted: list[int] = []  # prompt lengths of the engine requests one score() call makes
    encode = scorer._llm.encode

    def spy(prompt, params, request_id, *args, **kwargs):
        submitted.append(len(prompt["prompt_token_ids"]))
        return encode(prompt, params, request_id, *args, **kwargs)

    scorer._llm.encode = spy
    try:
        scores = await scorer.score(ITEMS, fmt)
    finally:
        scorer._llm.encode = encode
    assert [len(s) for s in scores] == [len(steps) for _, steps in ITEMS]
    expected_lengths = []
    for (question, steps), got in zip(ITEMS, scores, strict=True):
        if not steps:
            continue
        clean_question = question.replace(TAG, "") if fmt == "math_shepherd" else question
        clean_steps = [step.replace(TAG, "") for step in steps] if fmt == "math_shepherd" else steps
        text, expected = REFERENCES[fmt](path, clean_question, clean_steps)
        assert scorer.render(question, steps)[0] == text
        expected_lengths.append(len(scorer.encode(question, steps)[0]))
        assert len(expected) == len(steps)
        assert all(0.0 <= p <= 1.0 for p in got)
        assert got == pytest.approx(expected, abs=1e-3)
    assert sorted(submitted) == sorted(expected_lengths)  # one request (one forward) per solution, not per step
    assert scorer.num_running() == 0 and scorer.healthy()


@e2e
async def test_math_shepherd_scores_equal_a_torch_forward(math_shepherd, causal_path: Path) -> None:
    await check_against_torch(math_shepherd, causal_path, "math_shepherd")


@e2e
async def test_rlhflow_scores_equal_a_torch_forward(rlhflow, causal_path: Path) -> None:
    await check_against_torch(rlhflow, causal_path, "rlhflow")


@e2e
async def test_no_steps_and_no_items_cost_nothing(math_shepherd) -> None:
    assert await math_shepherd.score([("q", []), ("r", [])], "empty") == [[], []]
    assert await math_shepherd.score([], "none") == []


@e2e
async def test_likelihood_scores_equal_a_torch_forward(likelihood, tiny_models: dict) -> None:
    """The served likelihood PRM: per step, the lowest probability the LM gives any token of the step and of the
    delimiter after it, from vLLM's prompt log-probabilities, equal to a transformers forward."""
    assert isinstance(likelihood, LikelihoodPRM) and isinstance(likelihood, Scorer) and likelihood.kind == "prm"
    path = tiny_models["policy"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    got = await likelihood.score(ITEMS, "likelihood")
    assert [len(s) for s in got] == [len(steps) for _, steps in ITEMS]
    expected = torch_scores(model, tokenizer, ITEMS)
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-3) and all(0.0 < p <= 1.0 for p in a)
    assert likelihood.num_running() == 0 and likelihood.healthy()


@e2e
async def test_likelihood_scores_through_the_prefix_cache_equal_fresh_ones(
    likelihood, tiny_models: dict, monkeypatch
) -> None:
    """A search scores a prefix, then its extensions: vLLM serves the scored steps from its prefix cache and leaves
    their log-probabilities out; they take the scores read before, and where none is known the item is read again
    without the cache. Either way the scores are a transformers forward's."""
    path = tiny_models["policy"]
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    question = "Start with 31. (1) Add 6. (2) Multiply by 2. (3) Subtract 9. What is the result?"
    steps = [
        "(1) Add 6: 31 + 6 = 37\n\n",
        "(2) Multiply by 2: 37 * 2 = 74\n\n",
        "(3) Subtract 9: 74 - 9 = 65\n\n",
        "\\boxed{65}",
    ]
    reads: list[tuple[bool, int]] = []  # (fresh, tokens served from the cache) per engine request
    pool_one = likelihood._pool_one

    async def recorded(ids, request_id, *, fresh=False):
        probs = await pool_one(ids, request_id, fresh=fresh)
        reads.append((fresh, int(probs.isnan().sum())))
        return probs

    monkeypatch.setattr(likelihood, "_pool_one", recorded)
    rounds = [[(question, steps[:k])] * 2 for k in range(1, len(steps) + 1)]  # each round one step deeper
    for items in rounds:
        got = await likelihood.score(items, "cached")
        assert got[0] == pytest.approx(torch_scores(model, tokenizer, items[:1])[0], abs=1e-3) and got[0] == got[1]
    assert not any(fresh for fresh, _ in reads) and sum(cached > 0 for _, cached in reads) >= len(rounds)
    likelihood._known.clear()  # every step cached in vLLM, none known: read again without the cache
    reads.clear()
    deepest = rounds[-1][:1]
    assert (await likelihood.score(deepest, "unknown"))[0] == pytest.approx(
        torch_scores(model, tokenizer, deepest)[0], abs=1e-3
    )
    assert reads[0][1] > 0 and reads[1] == (True, 0)


def test_likelihood_steps_cover_the_answer_once() -> None:
    """Every answer token belongs to exactly one step (its text or the delimiter after it); the prompt to none."""
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_POLICY)
    steps = ["(1) Add 7: 12 + 7 = 19", "(2) Add 5: 19 + 5 = 24", "\\boxed{24}"]
    ids, positions = encode_steps(tokenizer, "Start with 12. (1) Add 7. (2) Add 5. What is the result?", steps)
    flat = [i for span in positions for i in span]
    assert flat == list(range(len(ids) - len("\n\n".join(steps)), len(ids)))
    assert [len(span) for span in positions] == [len(steps[0]) + 2, len(steps[1]) + 2, len(steps[2])]


@pytest.mark.parametrize("path", [DEFAULT_POLICY, DEFAULT_POLICY.parent / "default-prm"], ids=["policy", "prm"])
def test_the_shipped_lms_read_as_likelihood_prms(path: Path) -> None:
    """The shipped policy, and the shipped verifier, load and read as a PRM: one probability per step, and a step's
    score depends only on what precedes it (two solutions that share a first step score it alike). How well they
    flag errors is measured by ``ponder bench check-models``."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    question = "Start with 12. (1) Add 7. (2) Multiply by 3. What is the result?\n" + INSTRUCTION  # the user turn
    right = ["(1) Add 7: 12 + 7 = 19", "(2) Multiply by 3: 19 * 3 = 57", "\\boxed{57}"]
    wrong = ["(1) Add 7: 12 + 7 = 19", "(2) Multiply by 3: 19 * 3 = 75", "\\boxed{75}"]
    (good, bad) = torch_scores(model, tokenizer, [(question, right), (question, wrong)])
    assert len(good) == len(bad) == 3 and all(0.0 < p <= 1.0 for p in good + bad)
    assert good[0] == pytest.approx(bad[0]) and good[1] != pytest.approx(bad[1])


def test_an_exported_likelihood_prm_is_evaluated_by_its_config(tmp_path: Path, capsys) -> None:
    """``ponder convert likelihood-prm`` marks a copy of the policy; ``ponder eval prm`` then reads it as the
    likelihood PRM without a flag, and refuses what is not a causal LM with one line."""
    from reward_models.likelihood import main as export_main
    from training.evaluate import load_items, predicted_first_error, processbench_f1
    from training.evaluate import main as eval_main

    out = tmp_path / "prm"
    assert export_main(["--policy", str(DEFAULT_POLICY), "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["ponder_prm_format"] == "likelihood"
    data = Path(__file__).parent / "fixtures" / "processbench_tiny.jsonl"
    assert eval_main(["prm", "--model", str(out), "--data", str(data), "--output", str(tmp_path / "m.json")]) == 0
    items = load_items(data)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    scores = torch_scores(model, AutoTokenizer.from_pretrained(out), [(i["problem"], i["steps"]) for i in items])
    expected = processbench_f1([predicted_first_error(s) for s in scores], [i["label"] for i in items])
    assert json.loads((tmp_path / "m.json").read_text())["f1"] == pytest.approx(expected["f1"], nan_ok=True)
    assert export_main(["--policy", str(tmp_path / "none"), "--output", str(tmp_path / "x")]) == 2
    assert "not a causal LM checkpoint" in capsys.readouterr().err


def test_math_shepherd_render_marks_the_label_after_each_tag() -> None:
    scorer = CausalLMProcessRewardModel.__new__(CausalLMProcessRewardModel)  # rendering needs no engine
    scorer.format = CausalPRMFormat("math_shepherd")
    text, anchors = scorer.render("Q?", ["a", "b"])
    assert text == f"Q? a {TAG}\nb {TAG}"
    assert [text[:a] for a in anchors] == [f"Q? a {TAG}", text]


def test_format_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown causal PRM format 'qwen'"):
        CausalPRMFormat("qwen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different"):
        CausalPRMFormat("rlhflow", good_token="+", bad_token="+")


@session_loop
async def test_load_scorer_dispatch_errors(tiny: dict, tmp_path: Path) -> None:
    """Every wrong pairing of checkpoint and format fails before any engine starts."""
    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((tiny["math_shepherd"] / "config.json").read_text())
    del config["ponder_prm_format"]
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is a causal LM.*format='math_shepherd' or 'rlhflow'"):
        await load_scorer(bare)
    with pytest.raises(ValueError, match="PRM format 'qwen' needs a \\*ForProcessRewardModel"):
        await load_scorer(tiny["math_shepherd"], format="qwen")
    with pytest.raises(ValueError, match="PRM format 'rlhflow' needs a causal LM"):
        await load_scorer(tiny["qwen"], format="rlhflow")
    with pytest.raises(ValueError, match="PRM format 'likelihood' needs a causal LM"):
        await load_scorer(tiny["qwen"], format="likelihood")
    with pytest.raises(ValueError, match="unknown PRM format 'shepherd'"):
        await load_scorer(tiny["math_shepherd"], format="shepherd")
    config["architectures"] = ["GPT2LMHeadModel"]
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs a causal LM"):
        await load_scorer(bare, format="math_shepherd")


def test_serve_parses_prm_format() -> None:
    args = build_parser().parse_args(["serve", "--prm", "/some/prm", "--prm-format", "math_shepherd"])
    assert args.prm_format == "math_shepherd"
    assert build_parser().parse_args(["serve", "--prm", "/p", "--prm-format", "likelihood"]).prm_format == "likelihood"
    assert build_parser().parse_args(["serve"]).prm_format is None  # auto: from the checkpoint


def ponder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_serve_rejects_a_bad_prm_format() -> None:
    result = ponder("serve", "--prm-format", "shepherd")
    assert result.returncode == 2 and "argument --prm-format: invalid choice: 'shepherd'" in result.stderr
    result = ponder("serve", "--no-prm", "--prm-format", "rlhflow")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ponder: error: --prm-format names how to read a reward model; it cannot go with --no-prm"
    )


@session_loop
async def test_serve_threads_prm_format_to_load_scorer(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import reward_models
    import server.engine.vllm_engine as vllm_engine
    from server.cli import _loader

    calls: list[tuple[str, dict]] = []

    async def fake_load_scorer(path: str, **kwargs: object) -> str:
        calls.append((path, kwargs))
        return "scorer"

    async def fake_create(model: str, **kwargs: object) -> str:
        return "engine"

    monkeypatch.setattr(reward_models, "load_scorer", fake_load_scorer)
    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", fake_create)
    argv = ["serve", "--model", "/p", "--prm", str(tiny["rlhflow"]), "--prm-format", "rlhflow"]
    args = build_parser().parse_args(argv)
    assert isinstance(args, argparse.Namespace)
    assert await _loader(args, Path("/p"), tiny["rlhflow"])() == ("engine", "scorer")
    expected = {"memory_fraction": 0.1, "format": "rlhflow", "enforce_eager": None, "scorer_cpus": None}
    assert calls == [(str(tiny["rlhflow"]), expected)]
