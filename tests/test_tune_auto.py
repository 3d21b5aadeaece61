"""``ponder tune auto``: the fit on per-problem records, a run through the request path, and the command's errors."""

from __future__ import annotations

import asyncio
import doctest
import json

import pytest

import benchmarks.tune_auto as tune
from benchmarks import accuracy
from server.cli import main as ponder_main
from server.config import ServerConfig
from server.metrics import Metrics
from server.serving import ChatService
from strategies.auto import parse_policy
from tests.fakes import FakeEngine, FakeScorer, arith_script

GRID = [
    tune.Candidate("self_consistency:4", "self_consistency", {"num_samples": 4}, False),
    tune.Candidate("self_consistency:16", "self_consistency", {"num_samples": 16}, False),
    tune.Candidate("best_of_n:16", "best_of_n", {"num_samples": 16}, True),
]


def records(unit: int, agreement: float, prm: float, outcomes: dict[str, tuple[bool, int]]) -> list[dict]:
    """One problem's records, one per configuration: (correct, tokens)."""
    return [
        {
            "dataset": "arith",
            "level": 1,
            "seed": 0,
            "problem_id": f"p{unit}",
            "config": label,
            "correct": correct,
            "completion_tokens": tokens,
            "agreement": agreement,
            "prm_mean": prm,
        }
        for label, (correct, tokens) in outcomes.items()
    ]


def synthetic() -> list[dict]:
    """10 easy problems (all agree, high score: every configuration right) and 10 hard ones (agreement 1/4, low
    score), where best_of_n:16 is right on 8 (800 tokens), self_consistency:16 on 5 (600) and self_consistency:4 on 2
    (200)."""
    out = []
    for i in range(10):
        out += records(i, 1.0, 0.9, {"self_consistency:4": (True, 100), "self_consistency:16": (True, 400),
                                     "best_of_n:16": (True, 400)})  # fmt: skip
    for i in range(10, 20):
        out += records(i, 0.25, 0.2, {"self_consistency:4": (i < 12, 200), "self_consistency:16": (i < 15, 600),
                                      "best_of_n:16": (i < 18, 800)})  # fmt: skip
    return out


def test_doctests():
    failures, tried = doctest.testmod(tune)
    assert tried > 0 and failures == 0


def test_the_per_bin_fit_chooses_per_bin_and_budget():
    policy = tune.fit(
        synthetic(), GRID, budgets=[300, 1000], bins=2, tolerance=0.0, probe_samples=4, allocation="per-bin"
    )
    labels = {s: [[c["label"] for c in row] for row in t["cells"]] for s, t in policy["tables"].items()}
    # easy bin: all right, so the cheapest; hard bin: the best that fits (nothing but the probe's vote fits 300)
    assert labels["agreement+prm"] == [["self_consistency:4"] * 2, ["self_consistency:4", "best_of_n:16"]]
    assert labels["agreement"] == [["self_consistency:4"] * 2, ["self_consistency:4", "self_consistency:16"]]
    prm = policy["tables"]["agreement+prm"]
    assert prm["edges"] == [0.4125]  # the median of 1 - (agreement + score) / 2, between 0.05 and 0.775
    assert prm["cells"][1][1] | {"params": None} == {
        "label": "best_of_n:16",
        "strategy": "best_of_n",
        "params": None,
        "accuracy": 0.8,
        "tokens": 800.0,
        "problems": 10,
    }
    assert policy["default_budget"] == 1000  # 90% there, 60% at 300
    parse_policy(policy, "test")  # what auto reads


def test_nothing_fits_a_small_budget_so_the_cheapest_runs_and_a_tolerance_prefers_a_cheaper_choice():
    policy = tune.fit(synthetic(), GRID, budgets=[50], bins=1, tolerance=0.0, probe_samples=4)
    assert policy["tables"]["agreement+prm"]["cells"] == [[policy["tables"]["agreement+prm"]["cells"][0][0]]]
    assert policy["tables"]["agreement+prm"]["cells"][0][0]["label"] == "self_consistency:4"
    close = tune.fit(synthetic(), GRID, budgets=[1000], bins=2, tolerance=0.35, probe_samples=4, allocation="per-bin")
    assert close["tables"]["agreement+prm"]["cells"][1][0]["label"] == "self_consistency:16"  # 50% is within 0.35


def test_the_pooled_fit_lets_hard_problems_spend_what_easy_ones_leave_within_the_mean_budget():
    # budget 500: per bin, nothing but the probe's vote fits the hard bin (best_of_n:16 spends 800 there); pooled,
    # the easy bin's 100 and the hard bin's 800 average 450, so the hard bin gets best_of_n:16
    per_bin = tune.fit(synthetic(), GRID, budgets=[500], bins=2, tolerance=0.0, probe_samples=4, allocation="per-bin")
    pooled = tune.fit(synthetic(), GRID, budgets=[300, 500], bins=2, tolerance=0.0, probe_samples=4)
    assert [row[0]["label"] for row in per_bin["tables"]["agreement+prm"]["cells"]] == ["self_consistency:4"] * 2
    cells = pooled["tables"]["agreement+prm"]["cells"]
    assert [[c["label"] for c in row] for row in cells] == [
        ["self_consistency:4", "self_consistency:4"],
        ["self_consistency:4", "best_of_n:16"],  # at 300 the pooled mean of 450 does not fit: (100 + 200) / 2 does
    ]
    assert cells[1][1]["tokens"] == 800.0 and cells[1][1]["accuracy"] == 0.8
    assert pooled["default_budget"] == 500  # 90% in-sample, against 60% at 300


def test_an_empty_bin_keeps_the_per_bin_choice_under_pooled_and_an_unknown_allocation_is_refused():
    units, labels = tune.units_of(synthetic(), [c.label for c in GRID]), [c.label for c in GRID]
    # 5 quantile bins of two distinct difficulties: edges 0.05 and 0.775, so bin 2 (above 0.775) holds no problem
    pooled = tune.fit_table(units, "agreement+prm", labels, [500], 5, 0.0, "pooled")
    assert pooled["edges"] == [0.05, 0.775]
    assert [row[0]["label"] for row in pooled["cells"]] == [
        "self_consistency:4",
        "best_of_n:16",  # the hard bin, on the easy one's savings: (100 + 800) / 2 fits 500
        "self_consistency:16",  # the empty bin: the best of all problems within 500 itself, not pooled's 600
    ]
    with pytest.raises(ValueError, match="allocation"):
        tune.fit_table(units, "agreement+prm", labels, [500], 2, 0.0, "greedy")


def test_pooled_is_never_below_the_per_bin_allocation_it_is_given():
    # b lies under the line from a to c: a Lagrangian sweep never picks it, though it is the best within 500
    stats = [{"a": (0.6, 150), "b": (0.75, 500), "c": (0.9, 600)}]
    assert tune.pooled(stats, [1], 500, 0.0) == ["a"]
    assert tune.pooled(stats, [1], 500, 0.0, also=["b"]) == ["b"]
    assert tune.pooled(stats, [1], 600, 0.0, also=["b"]) == ["c"]


def test_records_made_with_other_params_are_refused_not_resumed(tmp_path):
    path = tmp_path / "records.jsonl"
    mine = [r | {"params": {"num_samples": 16}} for r in synthetic() if r["config"] == "best_of_n:16"]
    tune.refuse_other_params(mine, GRID, path)  # the same params: resumed
    tune.refuse_other_params([{k: v for k, v in r.items() if k != "params"} for r in mine], GRID, path)  # older
    other = [mine[0] | {"params": {"num_samples": 16, "stop_score": 0.5}}]
    with pytest.raises(accuracy.UsageError, match="use another --output"):
        tune.refuse_other_params(other, GRID, path)


def test_records_without_scores_give_only_the_agreement_table():
    plain = [r | {"prm_mean": None} for r in synthetic()]
    policy = tune.fit(plain, GRID, budgets=[1000], bins=2, tolerance=0.0, probe_samples=4)
    assert list(policy["tables"]) == ["agreement"]
    with pytest.raises(ValueError, match="nothing to fit"):
        tune.fit([r for r in plain if r["config"] != "best_of_n:16"], GRID, [1000], 2, 0.0, 4)


def test_a_run_through_the_request_path_records_the_probe_and_writes_a_policy(tmp_path):
    engine = FakeEngine(arith_script(lambda question, index: index == 1))  # the probe's 2nd sample is wrong
    service = ChatService(engine, FakeScorer(default=0.8), ServerConfig(max_num_samples=64), Metrics())
    client = accuracy.InProcessClient(service, engine, None)
    argv = ["--dataset", "arith", "--level", "1,2", "--limit", "3", "--configs", "greedy,best_of_n:8"]
    args = tune.build_parser().parse_args([*argv, "--budgets", "100,10000", "--bins", "2", "--output", str(tmp_path)])
    args.argv = argv
    candidates = tune.validate(args)
    policy, kept = asyncio.run(tune.run(args, candidates, client))
    assert len(kept) == 2 * 2 * 3 and all(r["error"] is None for r in kept)
    greedy = [r for r in kept if r["config"] == "greedy"]
    assert all(r["agreement"] == 0.75 and r["prm_mean"] == pytest.approx(0.8) for r in kept)
    assert all(r["engine_calls"] == 2 and r["reused"] == 0 and r["correct"] for r in greedy)
    assert all(r["reused"] == 4 and r["completion_tokens"] == 2 * r["probe_tokens"] for r in kept if r not in greedy)
    assert policy["provenance"]["split"] == "train" and policy["provenance"]["problems"] == 6
    assert policy["tables"]["agreement"]["cells"][0] == [policy["tables"]["agreement"]["cells"][0][0]] * 2
    again, _ = asyncio.run(tune.run(args, candidates, client))  # resumed: nothing left to answer
    assert again["tables"] == policy["tables"] and len((tmp_path / "records.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize(
    "extra,says",
    [
        (["--dataset", "nope"], "unknown task"),
        (["--split", "test"], "never on the held-out test"),
        (["--configs", "best_of_n"], "write best_of_n:N"),
        (["--configs", "greedy:4"], "write greedy with no :N"),
        (["--configs", "auto:1000"], "auto cannot be one of its own"),
        (["--budgets", "1000,500"], "increasing"),
        (["--no-prm", "--configs", "greedy,best_of_n:4"], "need a reward model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, says):
    argv = ["tune", "auto", "--dataset", "arith", "--output", str(tmp_path / "o"), *extra]
    assert ponder_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ponder tune auto: error:") and says in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_the_group_lists_its_tuners(capsys):
    assert ponder_main(["tune"]) == 0 and "auto" in capsys.readouterr().out
    assert ponder_main(["tune", "nope"]) == 2


def test_the_policy_file_it_writes_is_json_auto_reads(tmp_path):
    policy = tune.fit(synthetic(), GRID, budgets=[300, 1000], bins=2, tolerance=0.0, probe_samples=4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy))
    assert parse_policy(json.loads(path.read_text()), str(path)).budgets == (300, 1000)
