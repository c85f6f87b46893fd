"""Token bucket arithmetic (fake clock) and the expected-wait bound of the queue."""

from __future__ import annotations

import pytest

from perfkit.serving.admission import QueueFull, RateLimited, RateLimiter, TokenBucket, check_queue, expected_wait_s


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


def test_expected_wait_counts_the_running_batch_and_the_full_batches_ahead():
    assert expected_wait_s(queued=0, running=False, batch_capacity=8, batch_s=2.0) == 0.0
    assert expected_wait_s(queued=0, running=True, batch_capacity=8, batch_s=2.0) == 2.0
    assert expected_wait_s(queued=7, running=True, batch_capacity=8, batch_s=2.0) == 2.0
    assert expected_wait_s(queued=8, running=True, batch_capacity=8, batch_s=2.0) == 4.0
    assert expected_wait_s(queued=3, running=True, batch_capacity=1, batch_s=2.0) == 8.0


def test_queue_refuses_once_the_expected_wait_passes_the_bound():
    check_queue(queued=4, running=True, batch_capacity=1, batch_s=2.0, limit_s=10.0)
    with pytest.raises(QueueFull) as full:
        check_queue(queued=5, running=True, batch_capacity=1, batch_s=2.0, limit_s=10.0)
    assert full.value.retry_after_s == 12.0
    assert full.value.retry_after_header == "12"


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
