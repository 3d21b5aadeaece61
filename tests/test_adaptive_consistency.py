"""adaptive_consistency: sampling stops once the vote is decided (strategies/adaptive_consistency.py).

The scripted engine streams each sample word by word (one word = one token), concurrent samples interleaved as a
continuous batch interleaves them; the k-th stream of the prompt is the script's sample k.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import strategies
from server.accounting import CountingEngine, Ledger
from strategies.adaptive_consistency import AdaptiveConsistencyConfig, leader_probability
from strategies.base import Task
from tests.fakes import FakeEngine


def make_task(**kw) -> Task:
    base = dict(prompt="user: q\nassistant:", question="q", max_tokens=64, temperature=None, top_p=1.0, seed=100)
    return Task(**(base | kw))


def solution(answer: int, words: int = 4) -> str:
    """``words`` filler words and the boxed answer: ``words + 1`` tokens."""
    return " ".join(["w"] * words + [f"\\boxed{{{answer}}}"])


async def run(script, task=None, **params):
    fake = FakeEngine(script, interleave=True)
    ledger = Ledger(token_budget=100_000)
    spec = strategies.get("adaptive_consistency")
    result = await spec.fn(task or make_task(), spec.config_cls(**params), CountingEngine(fake, ledger, "t"), None)
    return result, ledger, fake


# ---- the rule's value --------------------------------------------------------------------------------------------
def beta_by_integration(a: int, b: int, steps: int = 20_000) -> float:
    """P(x > 1/2) for x ~ Beta(a + 1, b + 1): the paper's integral of x^a (1 - x)^b, by Simpson's rule."""

    def simpson(lo: float, hi: float) -> float:
        h = (hi - lo) / steps
        f = [(lo + i * h) ** a * (1 - lo - i * h) ** b for i in range(steps + 1)]
        return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    return simpson(0.5, 1.0) / simpson(0.0, 1.0)


@pytest.mark.parametrize("a,b", [(4, 0), (3, 1), (3, 0), (6, 1), (5, 5), (12, 7)])
def test_the_beta_probability_matches_numeric_integration(a, b):
    assert leader_probability([a, b]) == pytest.approx(beta_by_integration(a, b), abs=1e-9)


def test_the_beta_probability_at_the_papers_threshold():
    assert leader_probability([4, 0]) == 31 / 32  # four agreeing samples reach 0.95 ...
    assert leader_probability([3, 0]) == 15 / 16  # ... three do not
    assert leader_probability([3, 1]) == float(Fraction(13, 16))
    assert leader_probability([4]) == leader_probability([4, 0])  # one answer: against one with no votes


def dirichlet_by_integration(c: tuple[int, int, int], steps: int = 1200) -> float:
    """P(p1 > p2, p1 > p3) for p ~ Dirichlet(c + 1): the density p1^c1 p2^c2 p3^c3 on a midpoint grid."""
    p1, p2 = np.meshgrid((np.arange(steps) + 0.5) / steps, (np.arange(steps) + 0.5) / steps, indexing="ij")
    p3 = 1 - p1 - p2
    inside = p3 > 0
    density = np.where(inside, p1 ** c[0] * p2 ** c[1] * np.clip(p3, 0, None) ** c[2], 0.0)
    leader = inside & (p1 > p2) & (p1 > p3)
    return float(density[leader].sum() / density.sum())


@pytest.mark.parametrize("counts", [(3, 1, 1), (6, 2, 1), (2, 2, 2), (5, 4, 0)])
def test_the_dirichlet_probability_matches_numeric_integration(counts):
    assert leader_probability(list(counts)) == pytest.approx(dirichlet_by_integration(counts), abs=2e-3)


def test_the_dirichlet_probability_of_two_answers_is_the_beta_one():
    assert leader_probability([5, 2, 0]) < leader_probability([5, 2])  # a third answer with no votes still competes
    assert leader_probability([7, 1, 1]) < leader_probability([7, 1])


# ---- what is drawn, what it costs ------------------------------------------------------------------------------
async def test_unanimous_answers_stop_after_four_samples_with_nothing_left_running():
    result, ledger, fake = await run(lambda prompt, i: solution(7), num_samples=16)
    assert result.choices[0].answer == "7" and result.choices[0].chosen
    assert result.extra["samples"] == 4 and result.extra["launched"] == 4 and result.extra["aborted"] == 0
    assert result.extra["stopped"].startswith("beta") and result.extra["rule_value"] == 31 / 32
    assert ledger.engine_calls == 4 and ledger.completion_tokens == 4 * 5  # 4 of 16 samples' tokens
    assert fake.closed_early == 0 and fake.running == 0
    assert [spec.seed for _, spec in fake.calls] == [100, 101, 102, 103]  # each sample its own seed
    assert all(spec.n == 1 and spec.temperature == 0.8 for _, spec in fake.calls)


async def test_eager_keeps_the_round_full_and_aborts_what_runs_once_decided():
    lengths = [4 + 2 * i for i in range(16)]  # later samples are longer: they are still running at the decision
    result, ledger, fake = await run(
        lambda prompt, i: solution(7, lengths[i]), num_samples=16, round_size=6, eager=True, return_trace=True
    )
    extra = result.extra
    # 0-5 start together; 0, 1, 2 finish and 6, 7, 8 take their places; 3 decides (4 of 4 agree)
    assert extra["samples"] == 4 and extra["launched"] == 9 and extra["aborted"] == 5
    assert [s["index"] for s in extra["aborted_samples"]] == [4, 5, 6, 7, 8]
    assert all(s["reason"] == "the vote is decided" for s in extra["aborted_samples"])
    aborted = [c for c in result.candidates if c.finish_reason == "abort"]
    assert len(result.candidates) == 9 and len(aborted) == 5
    assert all(c.num_tokens < lengths[i + 4] + 1 and c.answer is None for i, c in enumerate(aborted))
    assert fake.closed_early == 5 and fake.running == 0  # their engine requests were closed
    finished = sum(lengths[i] + 1 for i in range(4))
    assert ledger.completion_tokens == extra["completion_tokens"] == finished + extra["aborted_tokens"]
    assert ledger.completion_tokens == sum(c.num_tokens for c in result.candidates)
    assert result.choices[0] is result.candidates[0]  # the shortest finished sample with the answer


async def test_split_answers_draw_up_to_the_ceiling():
    result, ledger, fake = await run(lambda prompt, i: solution(7 if i % 2 else 8), num_samples=10)
    assert result.extra["samples"] == result.extra["launched"] == 10 and result.extra["aborted"] == 0
    assert result.extra["stopped"].startswith("ceiling") and result.extra["rule_value"] == 0.5
    assert result.extra["votes"] == [{"answer": "8", "count": 5}, {"answer": "7", "count": 5}]
    assert result.choices[0].answer == "8"  # a tie goes to the answer seen first
    assert ledger.engine_calls == 10 and ledger.completion_tokens == 10 * 5 and fake.closed_early == 0


async def test_a_leading_answer_draws_only_the_samples_that_could_end_the_vote():
    # answers 7 7 7 8 then 7s: after 3-1 the Beta rule needs three more 7s (6-1: 0.965), and only they are drawn
    result, ledger, _ = await run(lambda prompt, i: solution(8 if i == 3 else 7), num_samples=40)
    assert result.extra["samples"] == result.extra["launched"] == 7 and result.extra["aborted"] == 0
    assert result.extra["rule_value"] == pytest.approx(1 - 9 / 256)
    assert ledger.engine_calls == 7 and ledger.completion_tokens == 7 * 5
    assert result.choices[0].answer == "7"


async def test_the_dirichlet_rule_counts_every_answer_against_the_leader():
    script = lambda prompt, i: solution({1: 8, 2: 9}.get(i, 7))  # noqa: E731  answers 7 8 9 7 7 7 ...
    beta, _, _ = await run(script, num_samples=40)
    dirichlet, _, _ = await run(script, num_samples=40, stop_rule="dirichlet")
    assert beta.extra["samples"] == 8 and beta.extra["rule_value"] == leader_probability([6, 1])  # 0.965
    assert dirichlet.extra["samples"] == 9 and dirichlet.extra["rule_value"] == leader_probability([7, 1, 1])
    assert leader_probability([6, 1, 1]) < 0.95 <= dirichlet.extra["rule_value"]
    assert dirichlet.extra["launched"] == 9 and dirichlet.extra["aborted"] == 0


async def test_esc_stops_at_the_first_window_that_agrees_and_answers_with_it():
    answers = [7, 7, 7, 7, 8] * 2 + [9] * 5 + [7] * 25  # windows of 5: mixed, mixed, all 9
    result, ledger, _ = await run(lambda prompt, i: solution(answers[i]), stop_rule="esc", num_samples=40)
    assert result.extra["samples"] == result.extra["launched"] == 15 and result.extra["aborted"] == 0
    assert result.extra["stopped"] == "esc: the 5 samples 10-14 agree"
    assert result.choices[0].answer == "9"  # ESC's answer is the window's, though 7 has 8 votes to 9's 5
    assert result.extra["votes"][0] == {"answer": "7", "count": 8}
    assert ledger.completion_tokens == 15 * 5


async def test_esc_draws_to_the_ceiling_when_no_window_agrees():
    result, _, _ = await run(lambda prompt, i: solution(7 if i % 5 else 8), stop_rule="esc", num_samples=12)
    assert result.extra["samples"] == 12 and result.extra["stopped"].startswith("ceiling")
    assert result.choices[0].answer == "7"  # the majority of all samples


async def test_samples_with_no_answer_vote_for_nothing():
    result, _, _ = await run(lambda prompt, i: "no answer here" if i < 2 else solution(7), num_samples=16)
    assert result.extra["samples"] == 6 and result.extra["votes"] == [{"answer": "7", "count": 4}]
    assert result.choices[0].answer == "7"


async def test_budget_logprobs_and_temperature_reach_every_engine_call():
    task = make_task(logprobs=2, temperature=0.3)
    result, _, fake = await run(lambda prompt, i: solution(7), task=task, num_samples=8, max_total_tokens=48)
    assert all(spec.max_tokens == 6 and spec.logprobs == 2 and spec.temperature == 0.3 for _, spec in fake.calls)
    assert len(result.choices[0].logprobs) == 5  # the chosen sample's own


def test_min_samples_holds_a_lowered_confidence_back():
    config = AdaptiveConsistencyConfig(confidence=0.5, min_samples=3)
    assert config.min_samples == 3 and AdaptiveConsistencyConfig().min_samples == 4


async def test_min_samples_is_the_fewest_samples_drawn():
    result, _, _ = await run(lambda prompt, i: solution(7), confidence=0.6, min_samples=3)
    assert result.extra["samples"] == 3  # 2 agreeing samples reach 0.875 already; the floor is 3


@pytest.mark.parametrize(
    "params",
    [
        {"stop_rule": "entropy"},
        {"confidence": 1.0},
        {"confidence": 0.0},
        {"min_samples": 0},
        {"window": 1},
        {"round_size": 0},
        {"num_samples": 0},
    ],
)
def test_invalid_parameters_are_refused(params):
    with pytest.raises(ValueError):
        AdaptiveConsistencyConfig(**params)


def test_n_sets_the_ceiling():
    assert AdaptiveConsistencyConfig.budget_param == "num_samples" and AdaptiveConsistencyConfig().num_samples == 40
