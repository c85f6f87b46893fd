"""Fair queueing across client keys: the line's order, and what the scheduler serves when one key bursts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from perfkit.serving.queueing import RequestQueue
from perfkit.serving.scheduler import Scheduler
from perfkit.serving.work import GenerationRequest


@dataclass(eq=False)
class Req:
    key: str
    tokens: int = 1


def _queue(policy: str, **share: object) -> RequestQueue[Req]:
    return RequestQueue(policy, key=lambda r: r.key, cost=lambda r: r.tokens, **share)  # type: ignore[arg-type]


def test_fifo_serves_in_arrival_order_and_puts_a_newcomer_behind_everyone():
    q = _queue("off")
    reqs = [Req("burst") for _ in range(5)] + [Req("quiet")]
    for r in reqs:
        q.append(r)
    assert q.ahead_of("quiet") == reqs
    assert q.take(4) == reqs[:4]
    assert list(q) == reqs[4:]


def test_fair_queueing_interleaves_keys_so_a_burst_only_delays_its_sender():
    q = _queue("requests")
    burst = [Req("burst") for _ in range(6)]
    for r in burst:
        q.append(r)
    quiet = [Req(f"quiet-{i}") for i in range(3)]
    for r in quiet:
        q.append(r)
    # each quiet key's request starts at the same virtual time as the burster's first: all before its second
    assert q.take(4) == [burst[0], *quiet]
    assert q.take(10) == burst[1:]
    # the line emptied, so every key starts even: with the burster's backlog queued again, a quiet key's
    # newcomer would be served after its first request only
    for r in burst:
        q.append(r)
    assert q.ahead_of("quiet-0") == burst[:1]
    assert q.ahead_of("burst") == burst


def test_fair_queueing_in_tokens_weighs_keys_by_output_length():
    q = _queue("tokens")
    long = [Req("long", 40) for _ in range(3)]
    short = [Req("short", 10) for _ in range(8)]
    for r in long + short:
        q.append(r)
    order = [r.key for r in q.take(11)]
    # over the first 50 tokens' worth of virtual time, 'short' gets its 4-5 requests for 'long''s one or two
    assert order[:6].count("short") >= 4
    assert order.count("long") == 3


def test_an_idle_key_gets_no_credit_for_its_silence():
    q = _queue("requests")
    for _ in range(10):
        q.append(Req("busy"))
    q.take(10)  # virtual time moves on while 'late' sends nothing
    late = [Req("late") for _ in range(3)]
    busy = [Req("busy") for _ in range(3)]
    for a, b in zip(late, busy):
        q.append(a)
        q.append(b)
    assert q.take(6) == [x for pair in zip(late, busy) for x in pair]  # alternates; 'late' does not jump all three


def test_removing_a_cancelled_request_and_the_oldest_one():
    q = _queue("requests")
    a, b, c = Req("x"), Req("x"), Req("y")
    for r in (a, b, c):
        q.append(r)
    assert q.oldest() is a
    assert q.remove(a) and not q.remove(a)
    assert a not in q and b in q
    assert q.oldest() is b
    assert len(q) == 2


def test_keys_without_backlog_are_forgotten(monkeypatch):
    monkeypatch.setattr("perfkit.serving.queueing.PRUNE_AT", 50)
    q = _queue("requests")
    for i in range(1000):
        q.append(Req(f"k{i}"))
        q.take(1)
    assert len(q._finish) == 0  # the line emptied each time
    q.append(Req("waiting"))
    for i in range(1000):  # one key always waits, 1000 others come and go once each
        q.append(Req(f"k{i}"))
        q.take(1)
    assert len(q._finish) <= 51


def test_slot_share_caps_a_burster_while_others_are_active_and_not_when_alone():
    clock = [0.0]
    q = _queue("requests", slots=4, share_window_s=10.0, clock=lambda: clock[0])
    burst = [Req("burst") for _ in range(6)]
    for r in burst:
        q.append(r)
    assert q.share() == 4  # one active key: the whole batch
    quiet = [Req(f"quiet-{i}") for i in range(3)]
    for r in quiet:
        q.append(r)
    assert q.share() == 1  # ceil(4 slots / 4 active keys)
    assert q.take(4) == [burst[0], *quiet]  # the quiet keys' requests, and one of the burster's
    assert q.take(4, held={"burst": 1}) == []  # its one slot is still running: nothing more while others are active
    clock[0] = 10.5  # the quiet keys have sent nothing for longer than the window
    assert q.share() == 4
    assert q.take(3, held={"burst": 1}) == burst[1:4]  # alone again: it may fill every free slot
    assert q.take(9) == burst[4:]


@pytest.mark.parametrize("policy", ["off", "requests"])
def test_slot_share_is_off_without_fair_queueing_or_window(policy):
    window = 10.0 if policy == "off" else 0.0
    q = _queue(policy, slots=4, share_window_s=window)
    reqs = [Req("burst") for _ in range(5)] + [Req(f"quiet-{i}") for i in range(3)]
    for r in reqs:
        q.append(r)
    assert q.share() == 4
    assert len(q.take(4, held={"burst": 3})) == 4


async def _order_served(engine, policy: str, **scheduler_args: object) -> tuple[list[str], int]:
    """One request runs while 6 of a burster's and 2 quiet keys' wait; the order their prefills start."""
    scheduler = Scheduler(engine, "dynamic", **{"max_batch_size": 2, "max_wait_ms": 0, "fair_queueing": policy, **scheduler_args})  # type: ignore[arg-type]
    await scheduler.start()
    started: list[str] = []

    async def one(key: str) -> None:
        events = await scheduler.submit(GenerationRequest((1, 2, 3), max_new_tokens=2, stop_at_eos=False, client_key=key))
        async for ev in events:
            if ev.index == 0:
                started.append(key)

    try:
        first = asyncio.ensure_future(one("first"))
        await asyncio.sleep(0)  # the first is taken alone; the rest queue behind it
        tasks = [asyncio.ensure_future(one("burst")) for _ in range(6)]
        tasks += [asyncio.ensure_future(one(k)) for k in ("quiet-a", "quiet-b")]
        await asyncio.gather(first, *tasks)
    finally:
        await scheduler.stop()
    return started, scheduler.prefills


@pytest.mark.parametrize("policy", ["off", "requests"])
def test_scheduler_serves_quiet_keys_before_a_burst_drains_only_when_fair(tiny, policy):
    _, _, engine = tiny
    started, _ = asyncio.run(_order_served(engine, policy))
    assert sorted(started) == sorted(["first", *["burst"] * 6, "quiet-a", "quiet-b"])  # each answered once
    quiet_at = max(started.index("quiet-a"), started.index("quiet-b"))
    if policy == "off":
        assert quiet_at == len(started) - 1  # FIFO: the quiet keys wait behind the whole burst
    else:
        assert quiet_at <= 3  # fair: in the first batch after the running one, beside one burst request


@pytest.mark.parametrize("window_s", [0.0, 60.0])
def test_scheduler_gives_a_burster_one_slot_per_batch_under_the_slot_share(tiny, window_s):
    _, _, engine = tiny
    started, prefills = asyncio.run(_order_served(engine, "requests", max_batch_size=4, fair_share_window_s=window_s))
    assert sorted(started) == sorted(["first", *["burst"] * 6, "quiet-a", "quiet-b"])
    if window_s:
        assert prefills == 7  # 4 active keys, 4 slots: each of the burster's 6 requests in a batch of its own
    else:
        assert prefills <= 4  # work-conserving: [first], [burst, quiet-a, quiet-b, burst], [burst x 4]


def test_queue_bound_under_fair_queueing_refuses_the_burster_and_admits_a_quiet_key(tiny):
    _, _, engine = tiny

    async def scenario() -> tuple[bool, bool]:
        scheduler = Scheduler(engine, "dynamic", max_batch_size=1, max_wait_ms=0, max_queue_wait_s=1.0, fair_queueing="requests")
        scheduler.prices.step_s = 0.1  # a request of 4 steps is priced 0.4 s
        scheduler._executor.submit(lambda: None)  # the loop is not started: requests stay queued
        req = GenerationRequest((1, 2, 3), max_new_tokens=4, stop_at_eos=False, client_key="burst")
        for _ in range(3):
            await scheduler.submit(req)  # 0, 0.4, 0.8 s ahead: admitted
        burst_refused = quiet_admitted = False
        try:
            await scheduler.submit(req)  # 1.2 s behind its own three
        except Exception:
            burst_refused = True
        await scheduler.submit(GenerationRequest((1, 2, 3), 4, False, client_key="quiet"))
        quiet_admitted = True
        scheduler._executor.shutdown(wait=False)
        return burst_refused, quiet_admitted

    assert asyncio.run(scenario()) == (True, True)
