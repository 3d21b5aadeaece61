"""``particle_filtering`` on the scripted policy and reward model: the calls and tokens per round, what resampling
copies and drops (seeded), the ESS trigger, the final selection by weight, the token budget, and config errors."""

from __future__ import annotations

import doctest

import pytest

import strategies
import strategies.particle_filtering as pf
from strategies.particle_filtering import ParticleFilteringConfig, effective_sample_size, particle_weights
from tests.fakes import FakeScorer
from tests.test_search_strategies import PROMPT, RIGHT, Policy, RuleScorer, chat, client_for, make_task, run, world


def shape(engine: Policy) -> list[tuple[int, int]]:
    """(prompts, n) of every engine call."""
    return [(len(prompts), spec.n) for prompts, spec in engine.calls]


def letters(prompt: str, i: int) -> str:
    """First steps "a", "b", "c" (sample 0, 1, 2); after one, a second step naming the sample that drew it, then the
    answer: 1 after "a", 2 after "b", 3 after "c"."""
    prefix = prompt[len(PROMPT) :]
    if not prefix:
        first = "abc"[i % 3]
        return f"{first}\n\n{first} then {i}\n\n\\boxed{{{'abc'.index(first) + 1}}}"
    rest = [f"{prefix[0]} then {i}", f"\\boxed{{{'abc'.index(prefix[0]) + 1}}}"]
    return "\n\n".join(rest[prefix.count("\n\n") - 1 :])


def test_doctests():
    failures, tried = doctest.testmod(pf)
    assert tried > 0 and failures == 0


def test_weights_are_a_softmax_of_the_rewards_logits_and_the_temperature_flattens_them():
    assert particle_weights([0.5, 0.5, 0.5, 0.5]) == [0.25] * 4
    odds = particle_weights([0.8, 0.5])  # logit 0.8 = log 4: weights 4 : 1
    assert odds == pytest.approx([0.8, 0.2])
    assert particle_weights([0.8, 0.5], temperature=2.0) == pytest.approx([2 / 3, 1 / 3])  # 4 ** 0.5 : 1
    assert particle_weights([1.0, 0.0]) == pytest.approx([1.0, 0.0])  # clipped, no division by zero
    assert effective_sample_size(particle_weights([0.9, 0.1])) == pytest.approx(1.0, abs=0.03)


async def test_one_engine_call_and_one_scorer_call_per_round_while_no_particle_is_copied():
    engine, scorer = Policy(world(depth=2)), FakeScorer(default=0.5)  # even weights: the ESS trigger never fires
    result, ledger = await run(
        "particle_filtering", engine, scorer, num_samples=4, ess_threshold=0.5, return_trace=True
    )
    rounds = result.extra["rounds"]
    assert shape(engine) == [(1, 4), (4, 1), (4, 1)]  # the root once with n=4, then each particle's own prefix
    assert ledger.engine_calls == 3 and ledger.scorer_calls == 3 == len(rounds) and ledger.scored_items == 12
    assert [r["ess"] for r in rounds] == [4.0, 4.0, 4.0] and not any(r["resampled"] for r in rounds)
    assert [r["weights"] for r in rounds] == [[0.25] * 4] * 3
    assert result.extra["stopped"] == "finished" and len(result.candidates) == 4
    # 4 particles x ("right 0", "right 1", "\boxed{42}") for sample 0, the same lengths for the wrong ones
    assert ledger.completion_tokens == sum(c.num_tokens for c in result.candidates) == 4 * 2 + 4 * 2 + 4 * 1 + 6


async def test_resampling_copies_the_heavy_particle_drops_the_light_ones_and_copies_draw_apart():
    engine, scorer = Policy(world(depth=2)), RuleScorer()  # sample 0 goes right (0.9), the others wrong (0.1)
    result, ledger = await run(
        "particle_filtering", engine, scorer, task=make_task(seed=0), num_samples=4, return_trace=True
    )
    first, second, last = result.extra["rounds"]
    right = first["particles"][0]
    assert first["weights"][0] == pytest.approx(81 / 84, abs=1e-6)  # odds 9 against 1/9 three times
    assert first["resampled"] and first["after"] == [right] * 4  # seed 0: all four draws take the right step
    nodes = {n["id"]: n for n in result.extra["tree"]["nodes"]}
    assert all(nodes[i].get("dropped") for i in first["particles"][1:]) and not nodes[right].get("dropped")
    # the four copies share one prompt, sent once with n=4 so that they draw four different next steps
    assert shape(engine)[1] == (1, 4) and engine.calls[1][0] == [PROMPT + "right 0\n\n"]
    assert len({nodes[i]["text"] for i in second["particles"]}) == 4
    assert not last["resampled"] and last["finished"] == 4  # no resampling once every particle has finished
    assert result.choices[0].text == RIGHT and ledger.engine_calls == ledger.scorer_calls == 3


async def test_copies_in_different_numbers_go_out_as_one_call_per_count_within_the_budget():
    # weights 2/3, 1/3, ~0: systematic resampling gives "a" two copies, "b" one and "c" none, whatever its uniform
    scorer = FakeScorer(step_scores={"a": 2 / 3, "b": 0.5, "c": 1e-9}, default=0.5)
    engine = Policy(letters)
    budget = 3 * 1 + 3 * 3 + 3 * 1  # exactly what the three rounds draw
    result, ledger = await run(
        "particle_filtering",
        engine,
        scorer,
        task=make_task(seed=7),
        budget=budget,
        num_samples=3,
        resampling="systematic",
        return_trace=True,
    )
    first, second, _ = result.extra["rounds"]
    assert first["after"] == [first["particles"][0]] * 2 + [first["particles"][1]]
    assert second["engine_calls"] == 2 and shape(engine)[1:3] == [(1, 2), (1, 1)]
    assert engine.calls[1][0] == [PROMPT + "a\n\n"] and engine.calls[2][0] == [PROMPT + "b\n\n"]
    assert engine.calls[1][1].seed != engine.calls[2][1].seed  # each call its own seed
    assert ledger.scorer_calls == 3 and ledger.engine_calls == 4
    assert ledger.completion_tokens == budget  # the two calls of round 2 fit the budget together
    assert result.choices[0].answer == "1"  # "a" ... \boxed{1}: the heaviest particle


async def test_ess_trigger_resamples_only_when_the_weights_are_uneven():
    even, _ = await run(
        "particle_filtering", Policy(world(depth=2)), FakeScorer(default=0.5), task=make_task(seed=0),
        num_samples=4, ess_threshold=0.5, return_trace=True,
    )  # fmt: skip
    uneven, _ = await run(
        "particle_filtering", Policy(world(depth=2)), RuleScorer(), task=make_task(seed=0),
        num_samples=4, ess_threshold=0.5, return_trace=True,
    )  # fmt: skip
    always, _ = await run(
        "particle_filtering", Policy(world(depth=2)), FakeScorer(default=0.5), task=make_task(seed=0),
        num_samples=4, return_trace=True,
    )  # fmt: skip
    assert [r["resampled"] for r in even.extra["rounds"]] == [False, False, False]
    assert all(r["after"] == r["particles"] for r in even.extra["rounds"])
    first = uneven.extra["rounds"][0]
    assert first["ess"] < 0.5 * 4 and first["resampled"]
    assert [r["resampled"] for r in always.extra["rounds"]] == [True, True, False]  # every round but the last


async def test_a_seeded_request_repeats_its_resampling_and_another_seed_draws_differently():
    async def draws(seed: int) -> list[list[int]]:
        result, _ = await run(
            "particle_filtering", Policy(world(depth=3)), FakeScorer(default=0.5), task=make_task(seed=seed),
            num_samples=8, return_trace=True,
        )  # fmt: skip
        return [r["after"] for r in result.extra["rounds"]]

    assert await draws(1) == await draws(1)
    assert await draws(1) != await draws(2)


async def test_finished_particles_are_carried_over_and_not_extended():
    def script(prompt: str, i: int) -> str:  # sample 0 answers at once; sample k > 0 takes two steps to \boxed{k}
        prefix = prompt[len(PROMPT) :]
        k = prefix.split()[1] if prefix else str(i)
        steps = [f"step {k}", f"more {k}", f"\\boxed{{{k}}}"] if prefix or i else ["\\boxed{42}"]
        return "\n\n".join(steps[prefix.count("\n\n") :])

    scorer = FakeScorer(step_scores={"\\boxed{42}": 0.6}, default=0.5)
    engine = Policy(script)
    result, ledger = await run(
        "particle_filtering", engine, scorer, task=make_task(seed=3), num_samples=3, ess_threshold=0.5,
        return_trace=True,
    )  # fmt: skip
    first, second, third = result.extra["rounds"]
    done = first["particles"][0]
    assert second["live"] == 2 and third["live"] == 2  # the finished particle is not sent to the engine again
    assert all(PROMPT + "\\boxed{42}" not in prompts for prompts, _ in engine.calls)
    assert second["particles"][0] == third["particles"][0] == done  # carried over with its weight
    assert result.choices[0].answer == "42" and ledger.engine_calls == 3

    # a finished particle far ahead is copied by resampling like any other: here into every slot, which ends the run
    scorer = FakeScorer(step_scores={"\\boxed{42}": 0.999}, default=0.5)
    result, ledger = await run(
        "particle_filtering", Policy(script), scorer, task=make_task(seed=3), num_samples=3, return_trace=True
    )
    (only,) = result.extra["rounds"]
    assert only["resampled"] and only["after"] == [only["particles"][0]] * 3 and result.extra["stopped"] == "finished"
    assert len(result.candidates) == 1 and result.extra["final"][0]["copies"] == 3 and ledger.engine_calls == 1


@pytest.mark.parametrize(("final_selection", "answer"), [("score", "1"), ("vote", "2")])
async def test_final_selection_by_weight_or_by_weight_summed_per_answer(final_selection, answer):
    texts = ["\\boxed{1}", "\\boxed{2}", "2 so \\boxed{2}"]  # one step each: every particle ends in round 1
    scorer = FakeScorer(step_scores={texts[0]: 0.8, texts[1]: 0.7, texts[2]: 0.7})  # weights 0.46, 0.27, 0.27
    result, ledger = await run(
        "particle_filtering", Policy(lambda p, i: texts[i]), scorer, num_samples=3, final_selection=final_selection,
    )  # fmt: skip
    assert result.choices[0].answer == answer and ledger.engine_calls == ledger.scorer_calls == 1
    if final_selection == "vote":
        weights = {row["answer"]: row["weight"] for row in result.extra["answers"]}
        assert weights["2"] == pytest.approx(2 * (7 / 3) / (4 + 2 * 7 / 3), abs=1e-6)


@pytest.mark.parametrize("budget", [4, 9, 17, 40])
async def test_the_token_budget_stops_it_without_exceeding_it(budget):
    result, ledger = await run(
        "particle_filtering", Policy(world(depth=8)), RuleScorer(), task=make_task(seed=0), budget=budget,
        num_samples=4, return_trace=True,
    )  # fmt: skip
    assert ledger.completion_tokens <= budget  # and the ledger never refused a call
    assert all(c.finish_reason == "length" for c in result.candidates)  # 9 steps each did not fit: cut short
    assert len(result.choices) == 1 and result.choices[0].chosen


async def test_it_terminates_on_an_endless_policy_at_max_depth():
    engine = Policy(lambda prompt, i: "more \n\n" * 1000)
    result, _ = await run(
        "particle_filtering", engine, RuleScorer(), task=make_task(max_tokens=10_000), budget=10**6, max_depth=6,
        num_samples=4, return_trace=True,
    )  # fmt: skip
    rounds = result.extra["rounds"]
    assert len(rounds) == 6 and len(engine.calls) == sum(r["engine_calls"] for r in rounds)
    assert all(spec.stop == () for _, spec in engine.calls[-rounds[-1]["engine_calls"] :])  # the last runs to EOS
    assert max(node["depth"] for node in result.extra["tree"]["nodes"]) == 6


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weight_temperature": 0.0}, "weight_temperature"),
        ({"resampling": "stratified"}, "resampling"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"ess_threshold": -0.1}, "ess_threshold"),
        ({"final_selection": "vote_top_k"}, "final_selection"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_config_validation(params, message):
    with pytest.raises(ValueError, match=message):
        ParticleFilteringConfig(**params)


async def test_registered_and_served_over_http_with_its_defaults():
    spec = strategies.get("particle_filtering")
    assert spec.needs_scorer and spec.config_cls.budget_param == "num_samples" and spec.config_cls.in_steps
    async with client_for(Policy(world()), RuleScorer()) as client:
        ok = await chat(client, "particle_filtering", return_trace=True)
        bad = await chat(client, "particle_filtering", resampling="stratified")
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] == RIGHT
    assert ok.json()["ponder"]["scorer_calls"] == len(ok.json()["ponder"]["trace"]["rounds"])
    assert bad.status_code == 400 and "resampling" in bad.json()["error"]["message"]
