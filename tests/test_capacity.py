"""The capacity stage: the SLO judgment of one rate point, the bounded search, the stacks it serves, a smoke run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from conftest import REPO, smoke_experiments

from perfkit import config
from perfkit.config import ConfigError, CostConfig
from perfkit.load.results import RequestTiming, offered_rate, summarize
from perfkit.load.slo import AT_LEAST, BELOW, BRACKETED, MAX, P99, RatePoint, RateSearch, judge_point, search, start_index
from perfkit.objectives import SloConfig

SLO = SloConfig(ttft_p99_ms=2500.0, tpot_p99_ms=150.0, max_error_rate=0.01, rates=(0.25, 0.5, 1.0, 2.0, 4.0))


def _summary(ttfts_s: list[float], *, tpot_s: float = 0.05, tokens: int = 8, failed: dict[int, int] | None = None, gap_s: float = 1.0):
    """An open-loop run whose answered requests, sent `gap_s` apart, took these TTFTs, plus `failed` {status: count}
    unanswered ones."""
    rows = [
        RequestTiming(
            index=i,
            t_send=1000.0 + i * gap_s,
            e2e_s=t + tpot_s * (tokens - 1),
            status=200,
            ttft_s=t,
            output_tokens=tokens,
            prompt_tokens=16,
            done=True,
        )
        for i, t in enumerate(ttfts_s)
    ]
    n = len(rows)
    for status, count in (failed or {}).items():
        rows += [RequestTiming(index=n + j, t_send=1000.0 + n + j, e2e_s=0.01, status=status, error=f"HTTP {status}") for j in range(count)]
        n += count
    return summarize(rows, mode="open", users=1)


def _point(rate: float, ttft_ms: float, n: int = 30) -> RatePoint:
    return judge_point(rate, n, _summary([ttft_ms / 1000] * n, gap_s=1 / rate), SLO)


# -- one point against the SLO ---------------------------------------------------------------------


def test_a_point_under_299_answers_judges_its_maximum_not_a_p99():
    outlier = [0.1] * 29 + [4.0]  # one request of 30 over the 2.5 s SLO
    few = judge_point(1.0, 30, _summary(outlier), SLO)
    assert few.stat == MAX and few.ttft_ms == pytest.approx(4000.0) and not few.passed
    assert "TTFT max 4000 ms > 2500 ms" in few.why
    many = judge_point(1.0, 400, _summary([0.1] * 399 + [4.0]), SLO)  # the same outlier is 0.25% of 400: under the p99
    assert many.stat == P99 and many.ttft_ms < 2500 and many.passed and many.why == ""
    assert few.row()["statistic"] == "max" and many.row()["statistic"] == "p99"


def test_a_point_records_the_rate_its_measured_requests_were_sent_at():
    point = _point(2.0, 100.0)  # the fixture sends at the rate, evenly
    assert point.offered_rps == pytest.approx(2.0) and point.row()["offered_rps"] == pytest.approx(2.0)
    assert offered_rate([5.0, 6.0, 9.0]) == pytest.approx(2 / 4.0)
    assert offered_rate([5.0]) is None and offered_rate([5.0, 5.0]) is None


def _conversation_sends(rate: float, turns: int, gap_of, until_s: float) -> list[tuple[int, int, float]]:
    """(conversation, turn, send time) of a multi-turn open loop whose conversations arrive every turns / rate s until
    `until_s`, conversation i sending turn k at k x gap_of(its start) after its first."""
    starts = [i * turns / rate for i in range(int(until_s * rate / turns) + 1)]
    return [(i, k, start + k * gap_of(start)) for i, start in enumerate(starts) for k in range(turns)]


def test_turns_measured_from_a_later_conversations_last_turn_arrive_at_the_rate():
    from perfkit.stages.capacity.experiment import fill_time_s

    rate, turns = 4.0, 4
    # Answers slow as the load builds: a turn every 2 s for the conversations started in the first 6 s, then every 6 s.
    sends = _conversation_sends(rate, turns, lambda start: 2.0 if start < 6.0 else 6.0, until_s=120.0)
    last_turns = sorted((t, c) for c, k, t in sends if k == turns - 1)
    first = last_turns[0][0]  # conversation 0's last turn, at 6 s
    started = sum(1 for c, k, t in sends if k == 0 and t <= first)  # 7 conversations by then
    second = next(t for t, c in last_turns if c >= started)  # the locustfile measures from here: conversation 7's, 25 s
    times = sorted(t for _, _, t in sends)

    def offered(start: float) -> float | None:  # a measured span of 80 turns' time at the rate
        return offered_rate([t for t in times if start <= t < start + 80 / rate])

    assert (first, started, second) == (6.0, 7, 25.0)
    assert offered(second) == pytest.approx(rate, rel=0.05)
    assert offered(first) < 0.8 * rate  # from the first conversation's last turn: those after it still ramping
    assert offered(0.0) < 0.8 * rate  # from the start (a run measured so answered 2.1 turns/s at 4)
    assert second <= fill_time_s(turns, 6.0) == 36.0  # the time limit allows two lifetimes at the slowest gap


def test_a_multi_turn_point_warms_up_as_any_and_gets_the_time_to_fill(perfkit_root, monkeypatch) -> None:
    from perfkit.config import load, override
    from perfkit.load.runner import LoadError
    from perfkit.load.workloads import Conversation, RequestStream
    from perfkit.stages.capacity import experiment

    cfg = load("capacity", smoke=True, root=perfkit_root)  # smoke: 4 requests a point, 1 warm-up
    cfg = override(cfg, {"slo.ttft_p99_ms": 5000, "slo.tpot_p99_ms": 150, "capacity.drain_s": 10})
    stream = RequestStream("multi_turn", conversations=(Conversation(("a", "b", "c"), (4, 4, 4)),), think_time_s=1.0)
    asked: dict = {}

    def no_fill(*_args, **kwargs):
        asked.update(kwargs)
        raise LoadError("all 12 requests sent in 52 s were warm-up: the conversations never filled")

    class Server:
        closed = False

        def handle(self) -> None:
            return None

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(experiment, "run_load", no_fill)
    server = Server()
    point = experiment.measure_point(cfg, server, "optimized_multi_turn", 2.0, [], stream)  # type: ignore[arg-type]
    assert asked["warmup_requests"] == 1 and asked["requests"] == 4  # no ramp added: the locustfile finds it
    # 1.5 x (5 requests at 2/s + two lifetimes of 2 gaps of 6.45 s: a 1 s pause, a 5 s TTFT, 3 tokens at 150 ms) + 10
    assert asked["duration_s"] == pytest.approx(1.5 * (2.5 + 25.8) + 10)
    assert not point.passed and server.closed
    assert point.why == "nothing measured (all 12 requests sent in 52 s were warm-up: the conversations never filled)"


def test_a_multi_turn_points_time_limit_allows_the_slowest_answers_that_pass(perfkit_root) -> None:
    from perfkit.config import load, override
    from perfkit.load.workloads import Conversation, RequestStream
    from perfkit.stages.capacity.experiment import slowest_passing_turn_gap_s

    cfg = override(load("capacity", smoke=True, root=perfkit_root), {"slo.ttft_p99_ms": 5000, "slo.tpot_p99_ms": 150})
    stream = RequestStream("multi_turn", conversations=(Conversation(("a", "b"), (4, 32)),), think_time_s=1.0)
    assert slowest_passing_turn_gap_s(cfg, stream) == pytest.approx(1.0 + 5.0 + 31 * 0.15)  # pause, TTFT, 31 more tokens


def test_a_multi_turn_point_whose_turns_arrived_slow_says_so():
    from perfkit.stages.capacity.experiment import paced_flag

    assert paced_flag(1.58, 2.0) == (
        "the conversations offered 1.58 turns/s of 2: their answers (or failed turns, which end a conversation) paced their later turns"
    )
    assert paced_flag(1.7, 2.0) is None and paced_flag(None, 2.0) is None  # within 80% of the rate; no figure


def test_503s_and_unanswered_requests_count_as_failures():
    point = judge_point(1.0, 30, _summary([0.1] * 29, failed={503: 1}), SLO)
    assert (point.ok, point.http_503, point.failed) == (29, 1, 1) and not point.passed
    assert "1 of 30 requests failed (1 x 503)" in point.why
    cut = judge_point(1.0, 30, _summary([0.1] * 28), SLO)  # the time limit ended the point 2 answers short
    assert cut.failed == 2 and not cut.passed
    tolerant = judge_point(1.0, 30, _summary([0.1] * 29, failed={503: 1}), SLO.model_copy(update={"max_error_rate": 0.05}))
    assert tolerant.passed


def test_a_slow_decode_breaks_the_tpot_objective():
    point = judge_point(1.0, 30, _summary([0.1] * 30, tpot_s=0.2), SLO)
    assert not point.passed and "TPOT max 200.0 ms > 150 ms" in point.why and "TTFT" not in point.why


# -- the bounded search ----------------------------------------------------------------------------


def test_a_fast_rate_runs_long_enough_that_a_queue_it_cannot_drain_shows():
    slo = SLO.model_copy(update={"requests": 30, "min_point_s": 20.0})
    assert slo.point_requests(0.5) == 30  # 60 s of arrivals already
    assert slo.point_requests(5.66) == 114  # not 30: a 5 s burst that a 3 req/s server drains afterwards
    assert SLO.model_copy(update={"min_point_s": 0.0}).point_requests(8.0) == SLO.requests


def test_monotone_latencies_give_the_highest_passing_rate_and_bisect_towards_the_first_failing():
    measured = []

    def measure(rate: float) -> RatePoint:
        measured.append(rate)
        return _point(rate, 1000.0 * rate)  # TTFT grows with the rate: 2500 ms at 2.5 req/s

    points, cap = search(SLO.rates, measure, bisect_points=2)
    assert measured[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert measured[5] == pytest.approx(8**0.5)  # geometric midpoint of 2 and 4: fails (2.83 s)
    assert measured[6] == pytest.approx((2 * 8**0.5) ** 0.5)  # of 2 and 2.83: passes (2.38 s)
    assert len(points) == 7 and cap.bound == BRACKETED
    assert cap.rate_rps == pytest.approx(measured[6]) and cap.first_failing_rps == pytest.approx(measured[5])
    assert cap.instances_for(5.0) == (3, "at most")


def test_the_walk_stops_at_the_first_failing_rate_without_bisection():
    points, cap = search(SLO.rates, lambda r: _point(r, 1000.0 * r), bisect_points=0)
    assert [p.rate_rps for p in points] == [0.25, 0.5, 1.0, 2.0, 4.0] and cap.rate_rps == 2.0
    points, cap = search((0.5, 1.0, 4.0, 8.0), lambda r: _point(r, 1000.0 * r), bisect_points=0)
    assert [p.rate_rps for p in points] == [0.5, 1.0, 4.0] and cap.first_failing_rps == 4.0  # 8 never tried


def test_everything_failing_is_below_the_lowest_rate_tried():
    points, cap = search(SLO.rates, lambda r: _point(r, 9000.0))
    assert len(points) == 1 and cap.bound == BELOW and cap.rate_rps == 0.0
    assert "below 0.25 req/s" in cap.text()
    assert cap.instances_for(5.0) == (21, "at least")  # capacity < 0.25: more than 20 instances


def test_everything_passing_is_at_least_the_highest_rate_tried_and_points_are_bounded():
    points, cap = search(SLO.rates, lambda r: _point(r, 10.0))
    assert len(points) == 5 and cap.bound == AT_LEAST and cap.rate_rps == 4.0 and cap.first_failing_rps is None
    assert cap.instances_for(5.0) == (2, "at most")
    points, cap = search(SLO.rates, lambda r: _point(r, 10.0), max_points=3)
    assert len(points) == 3 and cap.bound == AT_LEAST and cap.rate_rps == 1.0


def test_a_search_started_high_walks_up_when_it_passes_and_down_when_it_fails():
    # TTFT 1000 ms per req/s: passes up to 2.5 req/s. Started at 1 req/s, it never measures 0.25 or 0.5.
    points, cap = search(SLO.rates, lambda r: _point(r, 1000.0 * r), bisect_points=1, start=2)
    assert [p.rate_rps for p in points][:3] == [1.0, 2.0, 4.0] and points[3].rate_rps == pytest.approx(8**0.5)
    assert cap.bound == BRACKETED and cap.rate_rps == 2.0
    # TTFT 4000 ms per req/s: passes up to 0.625 req/s. Started at 2, it walks down to 0.5, then bisects 0.5..1.
    points, cap = search(SLO.rates, lambda r: _point(r, 4000.0 * r), bisect_points=1, start=3)
    assert [p.rate_rps for p in points][:3] == [2.0, 1.0, 0.5] and points[3].rate_rps == pytest.approx(0.5**0.5)
    assert cap.bound == BRACKETED and cap.rate_rps == 0.5 and cap.first_failing_rps == pytest.approx(0.5**0.5)
    # Failing down to the lowest rate: below it, after one point per rate walked.
    points, cap = search(SLO.rates, lambda r: _point(r, 90000.0), start=2)
    assert [p.rate_rps for p in points] == [1.0, 0.5, 0.25] and cap.bound == BELOW
    with pytest.raises(ValueError, match="start must index rates"):
        RateSearch(SLO.rates, start=5)


def test_the_start_is_the_highest_rate_within_the_share_of_a_known_rate():
    assert start_index(SLO.rates, 2.4, 0.5) == 2  # 1.2 req/s -> 1
    assert start_index(SLO.rates, 4.0, 0.5) == 3  # 2.0 exactly -> 2
    assert start_index(SLO.rates, 0.4, 0.5) == 0  # 0.2: below every rate -> the lowest
    assert start_index(SLO.rates, None, 0.5) == 0 and start_index(SLO.rates, 100.0, 0.0) == 0


def test_a_ceiling_stops_the_walk_up_and_the_bisection_closes_in_on_it():
    # TTFT 1000 ms per req/s passes up to 2.5 req/s, but the stack completes 2.4 req/s saturated: 4 is never measured,
    # 2.4 stands in for the first failing rate, and the bisection measures between 2 and it.
    points, cap = search(SLO.rates, lambda r: _point(r, 1000.0 * r), bisect_points=1, start=2, ceiling_rps=2.4)
    assert [p.rate_rps for p in points][:2] == [1.0, 2.0] and points[2].rate_rps == pytest.approx((2 * 2.4) ** 0.5)
    assert len(points) == 3 and cap.bound == BRACKETED and cap.first_failing_rps == 2.4 and cap.ceiling_rps == 2.4
    assert cap.rate_rps == pytest.approx((2 * 2.4) ** 0.5) and "above 2.4 req/s" in cap.text()
    # A measured failure below the ceiling is the first failing rate, as without one.
    points, cap = search(SLO.rates, lambda r: _point(r, 4000.0 * r), bisect_points=1, start=2, ceiling_rps=2.4)
    assert [p.rate_rps for p in points][:2] == [1.0, 0.5] and cap.first_failing_rps == pytest.approx(0.5**0.5)
    assert cap.ceiling_rps is None and "the first failing rate" in cap.text()
    # A pass measured above the ceiling (the start was above it) overrules it: the walk goes on.
    points, cap = search(SLO.rates, lambda r: _point(r, 1000.0 * r), bisect_points=0, start=2, ceiling_rps=0.3)
    assert [p.rate_rps for p in points] == [1.0, 2.0, 4.0] and cap.first_failing_rps == 4.0 and cap.ceiling_rps is None


def test_searches_interleave_step_by_step():
    fast, slow = RateSearch(SLO.rates, bisect_points=0), RateSearch(SLO.rates, bisect_points=0)
    order = []
    while pending := [(name, s) for name, s in (("fast", fast), ("slow", slow)) if not s.done]:
        for name, s in pending:
            rate = s.next_rate()
            order.append((name, rate))
            s.record(_point(rate, (100.0 if name == "fast" else 8000.0) * rate))  # slow: 2 s at 0.25, 4 s at 0.5
    assert order[:3] == [("fast", 0.25), ("slow", 0.25), ("fast", 0.5)]
    assert slow.capacity().rate_rps == 0.25 and fast.capacity().bound == AT_LEAST


# -- config ----------------------------------------------------------------------------------------


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("rates", "message"), [([1, 0.5], "slo.rates.*increase strictly"), ([0, 1], "slo.rates.*positive"), ([], "slo.rates.*at least 1")]
)
def test_bad_rates_are_refused_naming_the_field(rates, message):
    raw = _raw()
    raw["slo"]["rates"] = rates
    with pytest.raises(ConfigError, match=message):
        config.parse(raw, root=REPO, stage="capacity")


def test_an_unknown_slo_key_is_refused_listing_the_allowed_ones():
    raw = _raw()
    raw["slo"]["ttft_ms"] = 100
    with pytest.raises(ConfigError, match="slo.ttft_ms.*ttft_p99_ms"):
        config.parse(raw, root=REPO, stage="capacity")
    cfg = config.parse(_raw(), root=REPO, stage="capacity", smoke=True)
    assert cfg.slo.rates == (1.0, 4.0) and cfg.slo.ttft_p99_ms == 5000.0 and cfg.capacity.fallback_max_batch_size == 2


# -- the stacks ------------------------------------------------------------------------------------


def test_the_optimized_stack_comes_from_its_saved_result_else_the_fallback_says_so(tmp_path):
    from test_optimized import MEASURED
    from test_optimized import _result as optimized_result

    from perfkit import results
    from perfkit.stages.capacity.experiment import BASELINE, MULTI_TURN, optimized_stack, search_starts
    from perfkit.stages.optimized.choose import Choice, choose

    cfg = config.parse(_raw(), root=tmp_path, stage="capacity")
    overrides, source = optimized_stack(cfg)
    assert overrides == BASELINE | {"serving.scheduler": "dynamic", "serving.max_batch_size": 8, "serving.dtype": "bfloat16"}
    assert "had not run" in source and overrides["serving.rate_limit.enabled"] is False
    names = ["baseline", "optimized", MULTI_TURN]
    starts, ceilings, said = search_starts(cfg, names)
    assert set(starts.values()) == {0} and said.count("the lowest rate") == 3 and set(ceilings.values()) == {None}
    out = tmp_path / "experiments" / "optimized"
    chosen = (Choice("batching", "continuous-b4", "r", "batching", {"serving.scheduler": "continuous", "serving.max_batch_size": 4}),)
    arms = optimized_result([0.5, 0.5, 0.5])
    stacks = {
        "baseline": {"serving.scheduler": "sequential"},
        "optimized": {"serving.scheduler": "continuous", "serving.max_batch_size": 4},
    }
    rounds = {arm: [replace(r, overrides=stacks.get(arm, {})) for r in runs] for arm, runs in arms.rounds.items()}
    results.save(replace(arms, choices=chosen, rounds=rounds), out)
    # The fixture's closed loops: 2 users at 2 s a request (baseline), at 0.5 s (optimized): 4x the rate.
    starts, ceilings, said = search_starts(cfg, names)
    assert 0 < starts["baseline"] < starts["optimized"] == starts[MULTI_TURN]
    assert said.count("closed-loop in the optimized stage") == 3 and "answered on single turns" in said
    # A ceiling where the closed loop kept the server full: the sequential baseline's 2 users (1.1 x its 1 req/s);
    # not the optimized stack's, whose 2 users never fill its batch of 4; so none on its conversations either.
    assert ceilings["baseline"] == pytest.approx(1.1, rel=0.2) and ceilings["optimized"] is None
    assert ceilings[MULTI_TURN] is None and said.count("its best closed-loop round") == 1
    assert said.count("2 users do not fill a batch of 4") == 2  # the optimized arm's single turns bound conversations too
    # Two users fill a batch of 2: the optimized stack's ceiling, and the conversations take the same one.
    full = {"serving.scheduler": "continuous", "serving.max_batch_size": 2}
    rounds2 = {arm: [replace(r, overrides=full if arm == "optimized" else r.overrides) for r in runs] for arm, runs in rounds.items()}
    results.save(replace(arms, choices=chosen, rounds=rounds2), out)
    _, ceilings, said = search_starts(cfg, names)
    assert ceilings["optimized"] == pytest.approx(4.4, rel=0.2) and ceilings[MULTI_TURN] == ceilings["optimized"]
    assert said.count("its best closed-loop round") == 3 and said.count("of single turns (a turn costs no less)") == 1
    overrides, source = optimized_stack(cfg)
    assert overrides == BASELINE | {"serving.scheduler": "continuous", "serving.max_batch_size": 4}
    assert "continuous-b4, float32" in source
    results.save(replace(optimized_result([0.5, 0.5, 0.5]), choices=choose(MEASURED, min_kept_pct=89)[3:]), out)
    assert optimized_stack(cfg) == (BASELINE, "the optimized stage applied no change: the optimized stack is the baseline")


# -- the result ------------------------------------------------------------------------------------


def _stack(name: str, ttft_per_rate_ms: float, overrides: dict):
    from perfkit.stages.capacity.result import StackSearch

    points, cap = search(SLO.rates, lambda r: _point(r, ttft_per_rate_ms * r), bisect_points=1)
    return StackSearch(name, overrides, tuple(points), cap, source="test")


def test_result_tables_summary_and_conclusion_come_from_the_points():
    from perfkit.stages.capacity.result import CapacityResult

    base = _stack("baseline", 20_000.0, {"serving.scheduler": "sequential", "serving.dtype": "float32"})  # fails at 0.25
    opt = _stack("optimized", 1000.0, {"serving.scheduler": "dynamic", "serving.max_batch_size": 8, "serving.dtype": "bfloat16"})
    result = CapacityResult((base, opt), SLO, CostConfig(usd_per_hour=0.1, target_qps=5.0), 30.0, (0.5, 0.6))
    s = result.summary()
    assert s["baseline_capacity_bound"] == BELOW and s["baseline_capacity_rps"] == 0.0
    assert s["baseline_instances_at_target"] == 21 and s["baseline_instances_bound"] == "at least"
    assert s["optimized_capacity_bound"] == BRACKETED and s["optimized_capacity_rps"] == 2.0
    assert s["optimized_stack"] == "dynamic-b8, bfloat16" and s["optimized_instances_at_target"] == 3
    assert s["optimized_usd_per_month_at_target"] == pytest.approx(3 * 0.1 * 730)
    assert s["tail_statistic"] == "max" and (s["search_low_rps"], s["search_high_rps"]) == (0.25, 4.0)
    assert "capacity_gain" not in s
    curve = result.tables()["curve"]
    assert len(curve) == len(base.points) + len(opt.points) == 1 + 6
    assert {"rate_rps", "ttft_ms", "tpot_ms", "e2e_ms", "errors", "http_503", "pass", "statistic"} <= set(curve.columns)
    text = result.conclusion()
    assert "below 0.25 req/s" in text and "no ratio can be given" in text and "maximum is judged" in text
    assert "needs at least 21 instance(s)" in text
    assert list(result.figures()) == ["curve"]
    faster = replace(result, stacks=(_stack("baseline", 2000.0, base.overrides), opt))
    assert faster.summary()["capacity_gain"] == pytest.approx(2.0) and faster.summary()["capacity_gain_bound"] == "about"
    saturated = replace(result, stacks=(_stack("baseline", 10.0, base.overrides), opt))  # the baseline never failed
    assert "capacity_gain" not in saturated.summary() and "held the SLO at every rate tried" in saturated.conclusion()
    chat = replace(_stack("optimized_multi_turn", 2000.0, opt.overrides | {"serving.cache.prefix_mb": 64}), workload="multi_turn")
    with_chat = replace(result, stacks=(base, opt, chat))
    s = with_chat.summary()
    assert s["optimized_multi_turn_stack"] == "dynamic-b8, bfloat16, prefix store" and s["optimized_multi_turn_capacity_rps"] == 1.0
    assert s["optimized_capacity_rps"] == 2.0 and "capacity_gain" not in s  # the chat search is no third term of the ratio
    text = with_chat.conclusion()
    assert "Optimized on multi-turn conversations (dynamic-b8, bfloat16, prefix store): capacity" in text
    assert "On conversations, test: 1 req/s (the first failing rate" in text and "against 2 req/s (the first" in text
    assert s["optimized_multi_turn_offered_rps_at_capacity"] == pytest.approx(1.0) and "arrived at 1 turns/s" in text
    assert "its turns measured from the last turn of the first conversation started after the first" in text
    before = replace(chat, points=tuple(replace(p, offered_rps=None) for p in chat.points))  # saved before points recorded a rate
    assert "ramp" not in replace(result, stacks=(base, opt, before)).conclusion()


# -- end to end ------------------------------------------------------------------------------------


def test_smoke_searches_both_stacks_and_says_the_optimized_stage_had_not_run(perfkit_root):
    from perfkit.stage import run_stage

    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())
    params["smoke"] |= {
        "workload": {"num_prompts": 4, "prompt_tokens": 24, "max_new_tokens": 4, "turns": 2, "think_time_s": 0.1},
        "slo": params["smoke"]["slo"] | {"ttft_p99_ms": 600_000, "tpot_p99_ms": 600_000},
    }  # every point passes
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = json.loads(run_stage("capacity", smoke=True, root=perfkit_root).read_text())["summary"]
    assert "had not run" in summary["optimized_stack_source"] and summary["optimized_stack"] == "dynamic-b2, bfloat16"
    for stack in ("baseline", "optimized", "optimized_multi_turn"):
        assert summary[f"{stack}_capacity_bound"] == AT_LEAST and summary[f"{stack}_capacity_rps"] == 4.0
        assert summary[f"{stack}_points"] == 2 and summary[f"{stack}_instances_bound"] == "at most"
    assert summary["optimized_multi_turn_stack"] == "dynamic-b2, bfloat16, prefix store"
    out = smoke_experiments(perfkit_root) / "capacity"
    curve = (out / "curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 6 and (out / "capacity.html").is_file()
    from perfkit.__main__ import main

    assert main(["export", "capacity", "--smoke", "--out", str(perfkit_root / "export")]) == 0
    exported = sorted(p.name for p in (perfkit_root / "export").iterdir())
    assert len(exported) == 6 and exported[0].startswith("baseline_") and exported[0].endswith("_req_s.json")
    assert len((out / "trends.csv").read_text().splitlines()) == 1 + 6  # every point's run on the page's time slices
