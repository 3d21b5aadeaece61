"""PRM and ORM training: label placement, the trainer on tiny models, the saved checkpoint, eval.

The vLLM side of a trained checkpoint (both step readings, against the training-time scores) is in
tests/test_vllm_adapters.py, on tiny checkpoints of the same layout.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from reward_models.layout import STEP_TAG, tokenizer_path
from reward_models.torch_prm import PadCollator, encode, load_reward_model, prm_renderer, score_outcomes, score_steps
from server.tiny_models import build_char_tokenizer
from training.evaluate import load_items, predicted_first_error, processbench_f1
from training.evaluate import main as eval_main
from training.label import exact_rows, save_rows
from training.prm import (
    OutcomeRewardModelConfig,
    RewardModelConfig,
    build_model,
    layout_of,
    tokenize_rows,
    train,
)
from training.tasks import first_error, get_task

TASK = get_task("arith")
FIXTURES = Path(__file__).parent / "fixtures"
F1_FLOOR = 0.9  # the planted errors are visible: measured 1.0 (every first error found, no false alarm)


def plant_overflow(problem, rng: random.Random) -> tuple[str, int]:
    """A solution whose step ``at`` overshoots its result by 100, carried to the end: wrong from ``at`` on.

    All arith values at levels 1-6 stay under 100, so the error is visible in a step without arithmetic: a
    tiny PRM learns it in a few hundred steps, which is what the test needs (does training move scores right?).
    """
    lines = problem.solution.split("\n\n")
    at = rng.randrange(len(lines) - 1)
    left, right = lines[at].split(" = ")
    wrong = int(right) + 100
    lines[at] = f"{left} = {wrong}"
    for k in range(at + 1, len(lines) - 1):
        said, equation = lines[k].split(": ")  # "(2) Multiply by 3", "19 * 3 = 57"
        _, op, operand, _, _ = equation.split(" ")
        value = {"+": wrong + int(operand), "-": wrong - int(operand), "*": wrong * int(operand)}.get(op, wrong)
        lines[k], wrong = f"{said}: {wrong} {op} {operand} = {value}", value
    lines[-1] = f"\\boxed{{{wrong}}}"
    return "\n\n".join(lines), at


def planted_rows(split: str, count: int, seed: int) -> tuple[list[dict], list[tuple[str, list[str], list[str], int]]]:
    """Stepwise rows (half with a planted error) and, for each problem, (question, right steps, wrong steps, at)."""
    rng = random.Random(seed)
    problems = TASK.load(split, limit=count, seed=seed, level=[2, 3])
    pairs = [(p, *plant_overflow(p, rng)) for p in problems]
    solutions = [[p.solution if i % 2 else wrong] for i, (p, wrong, _) in enumerate(pairs)]
    rows = exact_rows(TASK, problems, solutions, dedup=True)
    for row in rows:  # a short prompt (the question alone) keeps the test fast
        row["prompt"] = row["prompt"].split("\n")[0]
    triples = [(p.question, TASK.steps(p.solution), TASK.steps(wrong), at) for p, wrong, at in pairs]
    return rows, triples


# ---- label placement ----------------------------------------------------------------------------------------------
def test_labels_sit_on_the_step_tags_and_nowhere_else() -> None:
    tokenizer = build_char_tokenizer()
    config = RewardModelConfig.from_preset("tiny", output_dir="unused")
    row = {"prompt": "Start with 5. Add 3. What is the result?", "completions": ["5 + 3 = 8", "\\boxed{8}"]}
    row["labels"] = [True, False]
    (tokenized,), too_long = tokenize_rows([row], config, tokenizer)
    ids, labels = tokenized["input_ids"], tokenized["labels"]
    text = prm_renderer(tokenizer, layout=layout_of(config))(row["prompt"], row["completions"])
    assert ids == encode(tokenizer, text) and too_long == 0
    assert text.count(STEP_TAG) == 2 and text.index("5 + 3 = 8\n" + STEP_TAG) < text.index("\\boxed{8}\n" + STEP_TAG)
    assert "<|system|>" not in text  # the policy's own layout: no system prompt, a newline and the tag per step
    qwen = RewardModelConfig.from_preset("tiny", output_dir="unused", policy_layout=False)
    qwen_text = prm_renderer(tokenizer, layout=layout_of(qwen))(row["prompt"], row["completions"])
    assert "5 + 3 = 8" + STEP_TAG in qwen_text and "step by step" in qwen_text
    tag_id = tokenizer.convert_tokens_to_ids(STEP_TAG)
    assert [i for i, x in enumerate(labels) if x != -100] == [i for i, t in enumerate(ids) if t == tag_id]
    assert [x for x in labels if x != -100] == [1.0, 0.0]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_a_step_tag_inside_a_step_is_removed_and_long_rows_dropped() -> None:
    tokenizer = build_char_tokenizer()
    config = RewardModelConfig.from_preset("tiny", output_dir="unused", max_length=200)
    rows = [
        {"prompt": "q", "completions": [f"a {STEP_TAG} b", "c"], "labels": [True, True]},
        {"prompt": "q" * 300, "completions": ["c"], "labels": [True]},
    ]
    tokenized, too_long = tokenize_rows(rows, config, tokenizer)
    assert too_long == 1 and sum(x != -100 for x in tokenized[0]["labels"]) == 2


def test_dense_labels_mark_every_step_character_up_to_the_first_error() -> None:
    tokenizer = build_char_tokenizer()
    config = RewardModelConfig.from_preset("tiny", output_dir="unused", dense_labels="arith")
    prompt = "Start with 4. (1) Add 3. (2) Multiply by 2. What is the result?"
    steps = ["(1) Add 3: 4 + 3 = 7", "(2) Multiply by 2: 7 * 2 = 15", "\\boxed{15}"]
    wrong_at = len("(2) Multiply by 2: 7 * 2 = 1")  # the 5 of 15
    assert TASK.error_offsets(prompt, steps) == [-1, wrong_at, 0]
    assert TASK.error_offsets("not an arith question", steps) is None
    row = {"prompt": prompt, "completions": steps, "labels": [True, False, False]}
    (tokenized,), _ = tokenize_rows([row], config, tokenizer)
    ids, labels = tokenized["input_ids"], tokenized["labels"]
    tags = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids(STEP_TAG)]
    # each step is rendered as its text, a newline and the tag (the policy's own layout)
    spans = [
        "".join("-" if x == -100 else str(int(x)) for x in labels[t - len(s) - 1 : t + 1])
        for t, s in zip(tags, steps, strict=True)
    ]
    # right characters 1, the first wrong one and the rest of its step 0, nothing after it; tags keep the step labels
    assert spans == ["1" * (len(steps[0]) + 2), "1" * wrong_at + "000", "-" * (len(steps[2]) + 1) + "0"]
    assert all(x == -100 for x in labels[: tags[0] - len(steps[0]) - 1] + labels[tags[-1] + 1 :])  # prompt, template
    weights = tokenized["label_weights"]  # a tag weighs 1, a right character 0.25, the first wrong one 25, the rest 1
    assert [weights[i] for i in tags] == [1.0, 1.0, 1.0]
    assert sorted({weights[i] for i, x in enumerate(labels) if x != -100 and i not in tags}) == [0.25, 1.0, 25.0]
    assert weights[tags[1] - 2] == 25.0 and weights[tags[1] - 1] == 1.0  # the 5 of 15, then the step's newline
    assert all(w == 0.0 for w, x in zip(weights, labels, strict=True) if x == -100)
    plain = RewardModelConfig.from_preset("tiny", output_dir="unused")
    assert sum(x != -100 for x in tokenize_rows([row], plain, tokenizer)[0][0]["labels"]) == 3  # tags only


def test_a_policy_start_freezes_its_layers_and_reads_the_tag_as_a_newline(tmp_path: Path) -> None:
    from server.tiny_models import save_tiny_policy

    policy = save_tiny_policy(tmp_path / "policy", hidden=64, layers=1, heads=2)
    tokenizer = build_char_tokenizer()
    config = RewardModelConfig.from_preset("tiny", output_dir="u", num_hidden_layers=2, init_from=str(policy))
    model = build_model(config, tokenizer)
    trains = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith(("model.layers.1.", "model.norm.", "score.")) for n in trains)
    table = model.model.embed_tokens.weight
    assert torch.equal(table[tokenizer.convert_tokens_to_ids(STEP_TAG)], table[tokenizer.convert_tokens_to_ids("\n")])
    loose = build_model(
        RewardModelConfig.from_preset("tiny", output_dir="u", init_from=str(policy), freeze_init_layers=False),
        tokenizer,
    )
    assert all(p.requires_grad for p in loose.parameters())


def test_collator_pads_right_with_minus_100_and_orm_labels_are_a_column() -> None:
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100.0, 1.0, 0.0]}, {"input_ids": [5], "labels": [1.0]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100.0, 1.0, 0.0], [1.0, -100.0, -100.0]]
    weighted = PadCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6], "labels": [1.0, 0.0], "label_weights": [0.5, 2.0]},
            {"input_ids": [5], "labels": [1.0], "label_weights": [1.0]},
        ]
    )
    assert weighted["label_weights"].tolist() == [[0.5, 2.0], [1.0, 0.0]]
    assert "label_weights" not in batch
    orm = PadCollator(pad_token_id=0)([{"input_ids": [5, 6], "labels": 1.0}, {"input_ids": [5], "labels": 0.0}])
    assert orm["labels"].tolist() == [[1.0], [0.0]]


def test_step_loss_weights_positions_and_ignores_minus_100() -> None:
    from reward_models.torch_prm import step_loss

    logits = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.5, 0.5]]])  # (B=1, T=3, 2)
    labels = torch.tensor([[1.0, 0.0, -100.0]])
    each = [-torch.log_softmax(logits[0, 0], -1)[1], -torch.log_softmax(logits[0, 1], -1)[0]]
    assert step_loss(logits, labels) == pytest.approx(float(sum(each) / 2))
    weighted = step_loss(logits, labels, torch.tensor([[1.0, 3.0, 5.0]]))
    assert weighted == pytest.approx(float((each[0] + 3 * each[1]) / 4))


def test_config_refuses_a_head_dim_vllm_cannot_serve() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        RewardModelConfig(output_dir="unused", hidden_size=64, num_attention_heads=4)


# ---- training ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    train_rows, _ = planted_rows("train", 600, seed=1)
    test_rows, triples = planted_rows("test", 60, seed=2)
    return {
        "train": save_rows(train_rows, root / "train"),
        "test": save_rows(test_rows, root / "test.jsonl"),
        "triples": triples,
        "root": root,
    }


@pytest.fixture(scope="module")
def trained_prm(planted: dict) -> dict:
    output = planted["root"] / "prm"
    config = RewardModelConfig.from_preset(
        "tiny",
        train_data=str(planted["train"]),
        eval_data=str(planted["test"]),
        output_dir=str(output),
        max_steps=200,
        learning_rate=3e-3,
        policy_layout=False,  # Qwen2.5-Math-PRM's layout; the policy layout is tested on the shipped default PRM
        logging_steps=20,
        eval_steps=100,
        save_steps=100,
        disable_tqdm=True,
    )
    before = build_model(config, build_char_tokenizer()).state_dict()
    return {"path": output, "metrics": train(config, command="pytest"), "before": before, "config": config}


def test_trained_prm_scores_a_right_step_above_a_planted_wrong_one(trained_prm: dict, planted: dict) -> None:
    model, tokenizer = load_reward_model(trained_prm["path"])
    items = [(q, steps) for q, right, wrong, _ in planted["triples"] for steps in (right, wrong)]
    scores = score_steps(model, tokenizer, items)
    wins = [scores[2 * i][at] > scores[2 * i + 1][at] for i, (*_, at) in enumerate(planted["triples"])]
    assert sum(wins) / len(wins) >= 0.8, wins
    # ProcessBench F1 after training, on the held-out rows: the first step each scores below 0.5 against the
    # planted first errors (half the rows have none), as the same scores read here give it
    evaluated = trained_prm["metrics"]["eval"]
    items = load_items(planted["test"])
    held_out = score_steps(model, tokenizer, [(item["problem"], item["steps"]) for item in items])
    expected = processbench_f1([predicted_first_error(s) for s in held_out], [item["label"] for item in items])
    assert (evaluated["num_error"], evaluated["num_correct"]) == (expected["num_error"], expected["num_correct"])
    assert evaluated["num_error"] + evaluated["num_correct"] == len(planted["triples"])
    assert evaluated["f1"] == pytest.approx(expected["f1"], abs=1e-6) and evaluated["f1"] >= F1_FLOOR, expected
    assert evaluated["outcome_auroc"]["min"] >= 0.8  # its lowest step score tells the planted wrong answers apart


def test_training_changed_the_weights_and_the_checkpoint_is_servable(trained_prm: dict) -> None:
    path = trained_prm["path"]
    config = json.loads((path / "config.json").read_text())
    assert (
        config["architectures"] == ["Qwen2ForProcessRewardModel"] and AutoConfig.from_pretrained(path).num_labels == 2
    )
    assert config["ponder_prm_step_read"] == "tag"  # the default reading, recorded for the server
    # The tokenizer the server and `ponder eval` load reads spaces and newlines as training did (a qwen2 folder's
    # own tokenizer files would load as Qwen2Tokenizer and drop them).
    served = AutoTokenizer.from_pretrained(tokenizer_path(path))
    text = "(1) Add 3: 4 + 3 = 7\n<extra_0>"
    assert served(text)["input_ids"] == build_char_tokenizer()(text)["input_ids"]
    assert not (path / "tokenizer_config.json").exists()
    assert config["step_tag"] == STEP_TAG and config["step_tag_id"] == build_char_tokenizer().convert_tokens_to_ids(
        STEP_TAG
    )
    weights = load_file(str(path / "model.safetensors"))
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= set(weights)
    assert all(k.startswith(("model.", "score.")) for k in weights)
    before = trained_prm["before"]
    assert not torch.equal(weights["score.2.weight"], before["score.2.weight"])
    assert not torch.equal(
        weights["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )
    assert (path / "loss.png").stat().st_size > 0 and not list(path.glob("checkpoint-*"))
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 200 and "Held-out evaluation" in (path / "README.md").read_text()


def test_training_resumes_from_the_last_checkpoint(planted: dict, tmp_path: Path) -> None:
    common = dict(train_data=str(planted["train"]), output_dir=str(tmp_path), save_steps=3, disable_tqdm=True)
    train(RewardModelConfig.from_preset("tiny", max_steps=3, keep_checkpoints=True, **common))
    assert (tmp_path / "checkpoint-3").is_dir()
    metrics = train(RewardModelConfig.from_preset("tiny", max_steps=5, resume_from_checkpoint="last", **common))
    assert metrics["optimizer_steps"] == 5


def test_orm_learns_a_visible_outcome_and_reloads(planted: dict, tmp_path: Path) -> None:
    """80 steps on the planted rows, whose wrong answers overshoot by 100 (three digits where right ones have two):
    the held-out wrong solutions score below the right ones. That the trainer can learn an outcome at all is what
    separates "the ORM pipeline is broken" from "the task's outcome is too hard to read" (README, Training)."""
    config = OutcomeRewardModelConfig.from_preset(
        "tiny",
        train_data=str(planted["train"]),
        eval_data=str(planted["test"]),
        output_dir=str(tmp_path),
        max_steps=80,
        learning_rate=3e-3,
        disable_tqdm=True,
    )
    before = build_model(config, build_char_tokenizer()).state_dict()
    metrics = train(config)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (
        saved["architectures"] == ["Qwen2ForSequenceClassification"]
        and AutoConfig.from_pretrained(tmp_path).num_labels == 1
    )
    assert saved["problem_type"] == "multi_label_classification"  # sigmoid in vLLM, BCE in training
    model, tokenizer = load_reward_model(tmp_path)
    assert not torch.equal(model.score.weight, before["score.weight"])
    (p,) = score_outcomes(model, tokenizer, [("q", ["1 + 1 = 2", "\\boxed{2}"])])
    assert 0.0 < p < 1.0 and metrics["eval"]["num_right"] > 0 and metrics["eval"]["num_wrong"] > 0
    assert metrics["eval"]["auroc"] >= 0.9, metrics["eval"]


# ---- evaluation ----------------------------------------------------------------------------------------------------
def test_processbench_metric_by_hand() -> None:
    assert predicted_first_error([0.9, 0.8, 0.2]) == 2 and predicted_first_error([0.9], threshold=0.95) == 0
    result = processbench_f1(predicted=[0, 2, -1, -1, 1], gold=[0, 1, -1, -1, -1])
    assert result["error_accuracy"] == 0.5 and result["correct_accuracy"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_eval_prm_cli_on_a_processbench_fixture(trained_prm: dict, tmp_path: Path, capsys) -> None:
    data = FIXTURES / "processbench_tiny.jsonl"
    items = load_items(data)
    assert [item["label"] for item in items] == [json.loads(line)["label"] for line in data.read_text().splitlines()]
    out = tmp_path / "eval.json"
    assert eval_main(["prm", "--model", str(trained_prm["path"]), "--data", str(data), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    model, tokenizer = load_reward_model(trained_prm["path"])
    scores = score_steps(model, tokenizer, [(item["problem"], item["steps"]) for item in items])
    expected = processbench_f1([predicted_first_error(s) for s in scores], [item["label"] for item in items])
    assert result["f1"] == pytest.approx(expected["f1"], nan_ok=True)
    assert result["num_error"] + result["num_correct"] == len(items)
    assert "| all (" in capsys.readouterr().out
    assert eval_main(["orm", "--model", str(trained_prm["path"]), "--data", str(data)]) == 2  # not an ORM
    assert eval_main(["prm", "--model", str(tmp_path / "nothing"), "--data", str(data)]) == 2
    assert eval_main(["prm", "--model", str(trained_prm["path"]), "--data", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one line each, naming what is missing (the model folder, then the data file), and no traceback
    assert err[-2].startswith("ponder eval prm: ") and str(tmp_path / "nothing") in err[-2]
    assert "none.jsonl" in err[-1] and "Traceback" not in "".join(err)


def test_eval_reads_our_stepwise_labels(planted: dict) -> None:
    items = load_items(planted["test"])
    rows = [json.loads(line) for line in Path(planted["test"]).read_text().splitlines()]
    assert [item["label"] for item in items] == [first_error(row["labels"]) for row in rows]
    assert {item["level"] for item in items} == {2, 3}


def test_init_from_a_policy_copies_its_body_and_leaves_the_head_random(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from server.tiny_models import save_tiny_policy

    policy = save_tiny_policy(tmp_path / "policy", hidden=64, layers=1, heads=2)
    config = RewardModelConfig.from_preset("tiny", output_dir="unused", init_from=str(policy))
    model = build_model(config, build_char_tokenizer()).eval()
    llama = LlamaForCausalLM.from_pretrained(str(policy)).eval()
    ids = torch.randint(8, 90, (2, 30))
    with torch.no_grad():
        assert torch.allclose(
            model.model(input_ids=ids).last_hidden_state, llama.model(input_ids=ids).last_hidden_state
        )
    with pytest.raises(ValueError, match="shape"):
        build_model(
            RewardModelConfig.from_preset("tiny", output_dir="u", hidden_size=128, init_from=str(policy)),
            build_char_tokenizer(),
        )
    deeper = build_model(
        RewardModelConfig.from_preset("tiny", output_dir="u", num_hidden_layers=3, init_from=str(policy)),
        build_char_tokenizer(),
    )
    own, fresh = (
        deeper.state_dict(),
        build_model(
            RewardModelConfig.from_preset("tiny", output_dir="u", num_hidden_layers=3), build_char_tokenizer()
        ).state_dict(),
    )
    key = "model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(own[key.format(0)], llama.state_dict()[key.format(0)])
    assert torch.equal(own[key.format(2)], fresh[key.format(2)])  # the layers on top stay fresh
