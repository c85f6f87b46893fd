"""Token bucket arithmetic (fake clock) and the expected-wait bound of the queue."""

from __future__ import annotations

import math

import pytest

from perfkit.serving.admission import QueueFull, RateLimited, RateLimiter, ServicePrices, TokenBucket, check_queue, expected_wait_s


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_grants_the_burst_then_refuses_with_the_time_to_the_next_token():
    clock = FakeClock()
    bucket = TokenBucket(rate=15.0, capacity=30.0, clock=clock)
    assert [bucket.take() for _ in range(30)] == [0.0] * 30
    assert bucket.take() == pytest.approx(1 / 15)
    clock.t += 0.5  # 7.5 tokens refilled
    assert [bucket.take() for _ in range(7)] == [0.0] * 7
    assert bucket.take() == pytest.approx(0.5 / 15)


def test_bucket_never_holds_more_than_its_capacity():
    clock = FakeClock()
    bucket = TokenBucket(rate=15.0, capacity=30.0, clock=clock)
    clock.t += 3600
    granted = 0
    while bucket.take() == 0.0:
        granted += 1
    assert granted == 30


def test_refused_request_takes_no_token():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=1.0, clock=clock)
    assert bucket.take() == 0.0
    for _ in range(10):
        assert bucket.take() > 0
    clock.t += 1.0
    assert bucket.take() == 0.0


def test_rate_limiter_keeps_one_bucket_per_key():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_second=15, burst=30, clock=clock)
    for _ in range(30):
        limiter.check("key:a")
    with pytest.raises(RateLimited) as refused:
        limiter.check("key:a")
    assert refused.value.retry_after_header == "1"
    limiter.check("key:b")  # another client still has its whole burst


PRICES = ServicePrices(step_s=0.1, prefill_s_per_token=0.001)


def test_expected_wait_without_refill_counts_the_running_batch_and_the_full_batches_ahead():
    def wait(running, queued, capacity):
        return expected_wait_s(running, queued, capacity, refill=False, prices=PRICES)

    assert wait([], [], 8) == 0.0
    assert wait([5, 20], [], 8) == pytest.approx(2.0)  # the batch runs until its longest row ends
    assert wait([20], [(100, 32)] * 7, 8) == pytest.approx(2.0)  # rides with the 7 queued: one partial batch
    # 8 queued fill one batch ahead: its 32 steps and 800 prompt tokens
    assert wait([20], [(100, 32)] * 8, 8) == pytest.approx(2.0 + 3.2 + 0.8)
    # sequential: every request ahead is its own batch
    assert wait([10], [(100, 32), (50, 8)], 1) == pytest.approx(1.0 + 3.2 + 0.8 + 0.15)


def test_expected_wait_counts_a_request_whose_prefill_is_under_way():
    # out of the queue, not yet running: its prompt and all its steps are still ahead of a newcomer
    for refill in (False, True):
        assert expected_wait_s([], [], 1, refill, PRICES, joining=[(100, 32)]) == pytest.approx(0.1 + 3.2)
    # dynamic: the joining rows ride with the running ones, the batch ends with its longest row
    assert expected_wait_s([5], [], 4, False, PRICES, joining=[(100, 32), (100, 8)]) == pytest.approx(0.2 + 3.2)


def test_expected_wait_with_refill_takes_the_first_slot_that_frees():
    def wait(running, queued, capacity):
        return expected_wait_s(running, queued, capacity, refill=True, prices=PRICES)

    assert wait([30, 5], [], 4) == 0.0  # a free slot: joins at the next step
    assert wait([30, 5], [], 2) == pytest.approx(0.5)  # the shorter row frees its slot first
    # both slots busy; the one queued request ahead takes the slot freed at step 5 (until 5 + 32), we get step 30's
    assert wait([30, 5], [(100, 32)], 2) == pytest.approx(3.0 + 0.1)


def test_queue_refuses_once_the_expected_wait_passes_the_bound():
    check_queue(10.0, limit_s=10.0)
    with pytest.raises(QueueFull) as full:
        check_queue(12.0, limit_s=10.0)
    assert full.value.retry_after_s == 12.0
    assert full.value.retry_after_header == "12"


def test_service_prices_start_at_the_first_measurement_then_weigh_each_by_the_time_it_covers():
    prices = ServicePrices(horizon_s=5.0)
    prices.observe_step(0.2)
    assert prices.step_s == 0.2
    prices.observe_step(0.4)  # one step moves the price by the share of the horizon it covers
    weight = 1 - math.exp(-0.4 / 5.0)
    assert prices.step_s == pytest.approx(0.2 + weight * 0.2)
    for _ in range(200):  # 80 s of 0.4 s steps: the old price is forgotten
        prices.observe_step(0.4)
    assert prices.step_s == pytest.approx(0.4, rel=1e-4)
    prices.observe_prefill(1.0, tokens=0)  # nothing to price
    assert prices.prefill_s_per_token == 0.0
    prices.observe_prefill(1.0, tokens=500)
    assert prices.prefill_s_per_token == pytest.approx(0.002)


def test_pruning_forgets_only_refilled_buckets():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_second=1, burst=2, clock=clock)
    limiter.check("old")
    clock.t += 10  # "old" has refilled
    limiter.check("recent")
    limiter.prune()
    assert set(limiter.buckets) == {"recent"}
    limiter.check("recent")
    with pytest.raises(RateLimited):
        limiter.check("recent")  # pruning did not hand "recent" a fresh burst


def test_bucket_in_tokens_charges_each_request_its_size():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_second=15, burst=30, clock=clock, unit="tokens")
    limiter.check("key:a", 16)
    with pytest.raises(RateLimited) as refused:
        limiter.check("key:a", 16)  # 14 left: a request for 16 waits for 2 more
    assert refused.value.retry_after_s == pytest.approx(2 / 15)
    assert "tokens" in str(refused.value)
    limiter.check("key:a", 14)
    clock.t += 2.0  # 30 refilled: full again
    limiter.check("key:a", 30)


def test_a_request_larger_than_the_burst_passes_a_full_bucket_and_leaves_it_in_debt():
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, capacity=30.0, clock=clock)
    assert bucket.take(50) == 0.0  # never refused forever
    assert bucket.take(1) == pytest.approx(21 / 10)  # 20 in debt: 2.1 s until one token
    clock.t += 5.0  # back to the full 30
    assert bucket.take(50) == 0.0
