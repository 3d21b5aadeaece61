"""Policy SFT: data rows and loss masks, real TRL steps on a tiny model (it learns), the saved folder, resume, the
CLI, the evaluation of a trained folder (on a scripted engine).

Everything here is offline and CPU-only; no vLLM engine starts.
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from server.tiny_models import build_char_tokenizer
from strategies.base import Sample
from tests.fakes import arith_script, fake_vllm_engines
from training import cli, compare_policies, evaluate_policy, plots, sft, sft_data
from training.sft import PolicySFTConfig, build_policy
from training.sft_data import sft_rows, training_problems
from training.tasks import get_task

TINY = {"levels": [1, 2], "level_weights": None, "num_train_problems": 32, "num_val_problems": 8}


@pytest.mark.parametrize("module", [sft_data, evaluate_policy, plots, compare_policies])
def test_doctests(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def tiny_config(tmp_path: Path, **overrides) -> PolicySFTConfig:
    return PolicySFTConfig.from_preset("tiny", output_dir=str(tmp_path), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A tiny policy trained for 8 steps with checkpoints kept; its initial weights for comparison."""
    out = tmp_path_factory.mktemp("sft")
    config = tiny_config(out, keep_checkpoints=True)
    initial = {k: v.clone() for k, v in build_policy(config, build_char_tokenizer()).state_dict().items()}
    metrics = sft.train(config, command="ponder train sft --preset tiny")
    return out, initial, metrics


def test_rows_are_prompt_completion_with_the_reference_solution():
    task = get_task("arith")
    problems = task.load("train", limit=3, level=2)
    rows = sft_rows(task, problems)
    assert [r["prompt"] for r in rows] == [[{"role": "user", "content": task.prompt(p)}] for p in problems]
    assert [r["completion"] for r in rows] == [[{"role": "assistant", "content": p.solution}] for p in problems]


def test_problems_follow_the_level_weights_and_splits(tmp_path):
    train, val = training_problems(tiny_config(tmp_path, levels=[1, 3], level_weights=[1.0, 3.0]))
    assert [sum(p.meta["level"] == lv for p in train) for lv in (1, 3)] == [8, 24]
    assert {p.id.split("-")[1] for p in train} == {"train"} and {p.id.split("-")[1] for p in val} == {"val"}
    assert not {p.question for p in train} & {p.question for p in val}


def test_loss_is_on_the_completion_only(tmp_path):
    """TRL's tokenized rows and its collator: labels are -100 on the prompt and padding, the ids elsewhere."""
    task = get_task("arith")
    tokenizer = build_char_tokenizer()
    config = tiny_config(tmp_path, num_val_problems=0)
    problems = task.load("train", limit=2, level=[1, 2])
    trainer = SFTTrainer(
        model=build_policy(config, tokenizer),
        args=config,
        train_dataset=Dataset.from_list(sft_rows(task, problems)),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, problem in enumerate(problems):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt(problem)}], add_generation_prompt=True, tokenize=False
        )
        n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)  # no BOS added twice
        assert tokenizer.decode(ids[:n_prompt]).startswith("<s><|user|>")
        assert tokenizer.decode(ids[:n_prompt]) == prompt
        assert (labels[:n_prompt] == -100).all()
        trained = labels[labels != -100]
        assert tokenizer.decode(trained) == problem.solution + "</s>\n"  # the chat template's turn end
        assert (labels[mask == 0] == -100).all()
    assert (batch["attention_mask"] == 0).any()  # the two rows differ in length: padding was masked


def test_tokenized_rows_match_trls_own_tokenization(tmp_path):
    """The value-example path tokenizes the solution rows itself: exactly as TRL does conversational rows."""
    task = get_task("arith")
    tokenizer = build_char_tokenizer()
    problems = task.load("train", limit=2, level=[1, 2])
    trainer = SFTTrainer(
        model=build_policy(tiny_config(tmp_path), tokenizer),
        args=tiny_config(tmp_path, num_val_problems=0),
        train_dataset=Dataset.from_list(sft_rows(task, problems)),
        processing_class=tokenizer,
    )
    ours = sft_data.tokenized_rows(tokenizer, sft_rows(task, problems))
    assert [row["input_ids"] for row in ours] == trainer.train_dataset["input_ids"]
    assert [row["labels"] for row in ours] == trainer.train_dataset["labels"]


def test_value_rows_teach_the_verdict_after_the_strategys_value_prompt():
    from strategies.search import VALUE_PROMPT

    task = get_task("game24")
    tokenizer = build_char_tokenizer()
    problems = task.load("train", limit=20)
    rows = sft_data.value_rows(task, tokenizer, problems, per_problem=3, seed=0)
    assert len(rows) == 60
    verdicts = set()
    for row, problem in zip(rows, [p for p in problems for _ in range(3)], strict=True):
        n_prompt = row["labels"].count(-100)
        assert row["labels"][:n_prompt] == [-100] * n_prompt and -100 not in row["labels"][n_prompt:]
        prompt, verdict = tokenizer.decode(row["input_ids"][:n_prompt]), tokenizer.decode(row["input_ids"][n_prompt:])
        head = evaluate_policy.chat_prompt(tokenizer, task, problem)  # what tree_of_thought sends, up to the steps
        partial = prompt[len(head) : -len("\n\n" + VALUE_PROMPT)]
        assert prompt.startswith(head) and prompt.endswith("\n\n" + VALUE_PROMPT) and "(left:" in partial
        assert verdict in (" sure</s>", " impossible</s>")
        assert (verdict == " sure</s>") == all(task.check_steps(problem, partial))  # the solver's verdict
        verdicts.add(verdict)
    assert len(verdicts) == 2
    with pytest.raises(ValueError, match="no value examples"):
        sft_data.value_rows(get_task("arith"), tokenizer, task.load("train", limit=1), per_problem=1, seed=0)


def test_labelled_value_rows_judge_every_prefix_by_its_labels(tmp_path):
    """`ponder label` rows -> value-prompt rows: sure until the first false label, impossible from it on, each
    distinct prefix once (a second sample sharing a first step adds only its new prefixes)."""
    from strategies.search import VALUE_PROMPT

    task = get_task("game24")
    tokenizer = build_char_tokenizer()
    problem = task.load("train", limit=1)[0]
    steps = [
        "4 + 8 = 12 (left: 4 6 12)",
        "6 - 4 = 2 (left: 2 12)",
        "12 * 2 = 24 (left: 24)",
        "\\boxed{(4 + 8) * (6 - 4)}",
    ]
    rows = [
        {"prompt": task.prompt(problem), "completions": steps, "labels": [True, False, False, False]},
        {
            "prompt": task.prompt(problem),
            "completions": steps[:1] + ["6 * 4 = 24 (left: 12 24)"],
            "labels": [True, True],
        },
    ]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    got = sft_data.labelled_value_rows(tokenizer, str(data))
    head = evaluate_policy.chat_prompt(tokenizer, task, problem)
    seen = []
    for row in got:
        n_prompt = row["labels"].count(-100)
        prompt, verdict = tokenizer.decode(row["input_ids"][:n_prompt]), tokenizer.decode(row["input_ids"][n_prompt:])
        assert prompt.startswith(head) and prompt.endswith("\n\n" + VALUE_PROMPT)
        seen.append((prompt[len(head) : -len("\n\n" + VALUE_PROMPT)].count("\n\n") + 1, verdict))
    assert seen == [
        (1, " sure</s>"),
        (2, " impossible</s>"),
        (3, " impossible</s>"),
        (4, " impossible</s>"),
        (2, " sure</s>"),
    ]
    with pytest.raises(ValueError, match="value_data: no label data at"):
        PolicySFTConfig.from_preset("tiny", output_dir=str(tmp_path), value_data=str(tmp_path / "none"))


def test_a_task_without_levels_trains_with_value_examples(tmp_path):
    config = PolicySFTConfig.from_preset(
        "tiny",
        output_dir=str(tmp_path),
        task="game24",
        num_train_problems=12,
        reseed_every=6,
        value_examples_per_problem=1,
    )
    assert config.levels == [0] and config.num_val_problems == 0  # game24 has neither levels nor a val split
    train, val = training_problems(config)
    assert len(train) == 12 and not val
    task = get_task("game24")  # each chunk of 6 is a draw with the next seed
    assert train == task.load("train", limit=6, seed=config.seed) + task.load("train", limit=6, seed=config.seed + 1)
    metrics = sft.train(config)
    assert metrics["train_problems_per_level"] == {"0": 12} and metrics["optimizer_steps"] == 3  # 24 rows of 8
    assert (tmp_path / "model.safetensors").is_file()


def test_training_changes_the_weights_and_saves_a_servable_folder(trained):
    out, initial, metrics = trained
    saved = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    changed = [k for k, v in initial.items() if not torch.equal(v.to(torch.bfloat16), saved[k])]
    assert len(changed) == len(initial)  # every tensor moved
    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["LlamaForCausalLM"] and config.hidden_size // config.num_attention_heads >= 32
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "</s>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], config.vocab_size)
    assert metrics["optimizer_steps"] == 4 and isinstance(metrics["final_loss"], float)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["tokens_seen"] > 0 and on_disk["config"]["preset"] == "tiny"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ponder train sft --preset tiny" in (out / "README.md").read_text()


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    out, _, _ = trained
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    metrics = sft.train(tiny_config(out, max_steps=6, resume_from_checkpoint="last"))
    assert metrics["optimizer_steps"] == 6
    assert not list(out.glob("checkpoint-*"))  # removed once the run finished


def test_init_from_trains_further_from_a_finished_policy(trained, tmp_path):
    out, _, _ = trained
    start = load_file(str(out / "model.safetensors"))
    metrics = sft.train(tiny_config(tmp_path, init_from=str(out), seed=7, hidden_size=128, num_hidden_layers=3))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == start.keys() and any(not torch.equal(start[k], saved[k]) for k in start)
    assert (metrics["num_hidden_layers"], metrics["hidden_size"]) == (1, 64)  # the shape flags are ignored
    assert f"trained further from the policy in `{out}`" in (tmp_path / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="holds no model"):
        sft.starting_policy(tiny_config(tmp_path, init_from=str(tmp_path / "nothing")))


def test_loss_curves_and_plot(tmp_path):
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 0.2, "eval_loss": 0.3}, {"train_loss": 1.0, "step": 2}]
    assert plots.loss_curves(history) == {"loss": ([1, 2], [3.0, 0.2]), "eval_loss": ([2], [0.3])}
    assert plots.plot_loss(history, tmp_path / "a" / "loss.png").stat().st_size > 1000


def test_presets_and_flags_and_yaml(tmp_path):
    config_file = tmp_path / "sft.yaml"
    config_file.write_text("preset: tiny\nlearning_rate: 3e-3\nlevels: [1, 3]\nlevel_weights: null\n")
    config = cli.parse_config(
        "sft", ["--config", str(config_file), "--hidden_size", "96", "--num_attention_heads", "3"]
    )
    assert (config.preset, config.hidden_size, config.num_hidden_layers) == ("tiny", 96, 1)  # flag > preset
    assert (config.learning_rate, config.levels) == (3e-3, [1, 3])  # YAML > preset
    default = cli.parse_config("sft", [])
    assert (default.hidden_size, default.num_hidden_layers, default.preset) == (256, 4, "default")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sft", "--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
        (["sft", "--preset", "huge"], "unknown preset 'huge'"),
        (["sft", "--num_attention_heads", "16"], "head_dim of at least 32"),
        (["sft", "--levels", "9"], "has no level [9]"),
        (["sft", "--task", "nope"], "unknown task 'nope'"),
        (["sft", "--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["sft", "--config", "/no/such.yaml"], "no such file"),
        (["ppo"], "invalid choice: 'ppo'"),
        ([], "required: TRAINER"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(argv, says, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ponder train: error:") and says in err[0], err


def test_cli_unknown_yaml_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    assert cli.main(["sft", "--config", str(bad)]) == 2
    assert "unknown key learning_rat" in capsys.readouterr().err


def test_ponder_train_help_lists_only_what_exists():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0
    listed = result.stdout.split("positional arguments:")[1]
    assert all(name in listed for name in ("sft", "prm", "orm", "dpo", "grpo"))


def test_the_trained_folder_is_evaluated_on_one_engine(trained, monkeypatch):
    """``evaluate_checkpoint``: one engine on the folder, greedy accuracy per level, pass@1 from the samples. A
    scripted policy: the greedy answer right, the second sample of each problem wrong."""
    out, _, _ = trained
    started = fake_vllm_engines(monkeypatch, arith_script(lambda question, i: i == 1))
    result = evaluate_policy.evaluate_checkpoint(out, levels=[1, 2], limit=3, num_samples=2, sample_levels=[1])
    ((model, _, engine),) = started
    assert model == str(out) and engine.shut_down
    assert {lv: row["greedy"] for lv, row in result["levels"].items()} == {"1": 1.0, "2": 1.0}
    assert result["levels"]["1"]["num_samples"] == 2 and result["levels"]["1"]["pass@1"] == 0.5
    assert "| level | problems | greedy | pass@1 |" in "\n".join(evaluate_policy.markdown_table(result))


def heldout_loss(model, tokenizer, rows) -> float:
    """The mean loss per completion token of ``rows`` (prompt-completion rows), as training computes it."""
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for row in sft_data.tokenized_rows(tokenizer, rows):
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def test_sft_learns_the_solution_format(tmp_path):
    """16 steps on level-1 problems (one operation; the solution's layout and numbers follow from the question)
    take the held-out completion loss far below the untrained model's (4.87, a uniform guess over the vocabulary;
    measured after: 2.72)."""
    task, tokenizer = get_task("arith"), build_char_tokenizer()
    config = tiny_config(
        tmp_path, levels=[1], num_train_problems=128, num_val_problems=0, learning_rate=1e-2, save_steps=1000
    )
    heldout = sft_rows(task, task.load("val", limit=16, level=1))
    before = heldout_loss(build_policy(config, tokenizer), tokenizer, heldout)
    metrics = sft.train(config)
    after = heldout_loss(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32), tokenizer, heldout)
    assert metrics["optimizer_steps"] == 16 and after < 0.6 * before, (before, after)


class _EchoEngine:
    """Answers every prompt with its problem's reference solution; records the prompts."""

    def __init__(self, solutions: dict[str, str]) -> None:
        self.solutions, self.prompts = solutions, []

    async def generate(self, prompts, spec, request_id):
        self.prompts += prompts
        return [[Sample(self.solutions[p], 1, "stop")] * spec.n for p in prompts]


def test_skip_leaves_out_the_problems_a_run_drew_first():
    """``--skip K``: problems K.. of the same split and seed, the ones a tuning run on the first K never saw."""
    import asyncio

    task, tokenizer = get_task("arith"), build_char_tokenizer()
    problems = task.load("train", limit=7, seed=3, level=2)
    engine = _EchoEngine({evaluate_policy.chat_prompt(tokenizer, task, p): p.solution for p in problems})
    result = asyncio.run(
        evaluate_policy.evaluate_levels(engine, tokenizer, levels=[2], limit=4, split="train", seed=3, skip=3)
    )
    assert engine.prompts == [evaluate_policy.chat_prompt(tokenizer, task, p) for p in problems[3:]]
    assert result["skip"] == 3 and result["levels"]["2"] == {"num_problems": 4, "greedy": 1.0}
    with pytest.raises(ValueError, match="skip must not be negative"):
        asyncio.run(evaluate_policy.evaluate_levels(engine, tokenizer, levels=[2], skip=-1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "game24", "--split", "train", "--skip", "10000", "--limit", "2000"], "distinct train puzzles"),
        (["--task", "chess"], "unknown task 'chess'"),
    ],
)
def test_evaluate_policy_refuses_a_bad_problem_set_in_one_line(args, message, capsys):
    """Before any engine starts: a count past the task's puzzles, an unknown task."""
    assert evaluate_policy.main(["models/game24-policy", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate_policy: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models/game24-policy", "runs/none", "--task", "game24"], "'runs/none' is not a model folder"),
        (["models/game24-policy", "models/game24-policy", "--task", "chess"], "unknown task 'chess'"),
        (
            [
                "models/game24-policy",
                "models/game24-policy",
                "--task",
                "game24",
                "--split",
                "train",
                "--limit",
                "20000",
            ],
            "distinct train puzzles",
        ),
    ],
)
def test_compare_policies_refuses_bad_input_in_one_line(args, message, capsys):
    """Before any engine starts: a missing folder, an unknown task, a count past the task's puzzles."""
    assert compare_policies.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare_policies: error: ") and message in err and err.count("\n") == 1


def test_compare_policies_counts_flips_and_first_errors():
    def outcome(right, first_error, first_step):
        return {"right": right, "first_error": first_error, "first_step": first_step}

    before = [outcome(True, -1, "a"), outcome(False, 0, "b"), outcome(False, 2, "c"), outcome(True, -1, "d")]
    after = [outcome(True, -1, "a"), outcome(True, -1, "e"), outcome(False, 0, "f"), outcome(False, None, "d")]
    result = compare_policies.compare(before, after)
    assert result["greedy"] == {"before": 0.5, "after": 0.5}
    assert (result["gained"], result["lost"], result["both_right"], result["same_first_step"]) == (1, 1, 1, 2)
    assert result["first_error"] == {"before": {"-1": 2, "0": 1, "2": 1}, "after": {"-1": 2, "0": 1}}
    text = compare_policies.markdown(result, ("sft", "dpo"))
    assert result["change"]["mean"] == 0.0 and result["change"]["ci95"][0] < 0 < result["change"]["ci95"][1]
    assert "+0.0% (95% interval" in text and "1 gained, 1 lost" in text
    assert "| first wrong step (-1: none) | -1 | 0 | 2 |" in text
    assert "| dpo | 2 | 1 | 0 |" in text
    with pytest.raises(ValueError, match="not the same problems"):
        compare_policies.compare(before, after[:2])
