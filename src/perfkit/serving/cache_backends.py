"""Where cached answers live: an in-process LRU, or a real Redis that perfkit starts as its own child.

Both backends store bytes under bytes keys and report every eviction, so that the semantic index
beside them can forget the vector of an entry that is gone. Redis is `perfkit.redis_server.RedisChild`,
evicting at its memory bound and restarted by its supervisor if it dies.

A cache must never make a request fail or wait: the Redis client has no retries and a short
socket timeout, and a circuit breaker stops asking a Redis that just failed. While it is open,
requests go uncached (counted as cache errors); every `probe_s` one request probes again, so a
Redis that comes back is in use within that interval.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

from perfkit.errors import PerfkitError
from perfkit.hardware import now
from perfkit.redis_server import RedisChild

log = logging.getLogger("perfkit.serving.cache")
Evicted = Callable[[bytes], None]


class CacheUnavailable(PerfkitError, RuntimeError):
    """The backend did not answer (down, timed out, or the breaker is open): the request goes uncached."""


class Backend(Protocol):
    async def get(self, key: bytes) -> bytes | None: ...
    async def set(self, key: bytes, value: bytes) -> None: ...
    def bytes_used(self) -> int: ...
    async def start(self, on_evict: Evicted) -> None: ...
    async def close(self) -> None: ...


class MemoryBackend:
    """An in-process LRU bounded in bytes (keys + values); the event loop is its only caller."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._on_evict: Evicted = lambda key: None

    async def start(self, on_evict: Evicted) -> None:
        self._on_evict = on_evict

    async def get(self, key: bytes) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    async def set(self, key: bytes, value: bytes) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(key) + len(old)
        self._items[key] = value
        self._bytes += len(key) + len(value)
        while self._bytes > self.max_bytes and self._items:
            gone, data = self._items.popitem(last=False)
            self._bytes -= len(gone) + len(data)
            self._on_evict(gone)

    def bytes_used(self) -> int:
        return self._bytes

    async def close(self) -> None:
        self._items.clear()
        self._bytes = 0


class Breaker:
    """Closed until a failure; then open, letting one probe through every `probe_s` until one succeeds."""

    def __init__(self, probe_s: float) -> None:
        self.probe_s = probe_s
        self.failed = False
        self._next_probe = 0.0

    def allow(self) -> bool:
        if not self.failed:
            return True
        t = now()
        if t < self._next_probe:
            return False
        self._next_probe = t + self.probe_s  # this request is the probe; the others stay uncached meanwhile
        return True

    def failure(self) -> None:
        self.failed = True
        self._next_probe = now() + self.probe_s

    def success(self) -> None:
        self.failed = False


class RedisBackend:
    """A Redis (perfkit's child or an external one) through redis-py's asyncio client, without retries."""

    def __init__(self, url: str, timeout_s: float = 0.05, probe_s: float = 0.25, child: RedisChild | None = None) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url, self.child, self.probe_s = url, child, probe_s
        self.breaker = Breaker(probe_s)
        # redis-py retries 3 times with backoff by default: ~4 s blocked per command while Redis is down.
        no_retry = Retry(NoBackoff(), 0)
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=no_retry, retry_on_timeout=False
        )
        self._listener = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, retry=no_retry)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        self._bytes = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, on_evict: Evicted) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._evictions(on_evict)), loop.create_task(self._memory())]
        if self.child is not None:
            self._tasks.append(loop.create_task(self.child.supervise()))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        from redis.exceptions import RedisError

        if not self.breaker.allow():
            raise CacheUnavailable("redis: circuit open")
        try:
            result = await fn(*args)
        except (TimeoutError, RedisError, OSError) as exc:
            self.breaker.failure()
            await self.client.connection_pool.disconnect()  # stale sockets would fail once each after a restart
            raise CacheUnavailable(f"redis: {type(exc).__name__}: {exc}") from None
        self.breaker.success()
        return result

    async def get(self, key: bytes) -> bytes | None:
        value: bytes | None = await self._call(self.client.get, key)
        return value

    async def set(self, key: bytes, value: bytes) -> None:
        await self._call(self.client.set, key, value)

    def bytes_used(self) -> int:
        return self._bytes

    async def _memory(self) -> None:
        """Redis's own `used_memory`, polled each second (INFO is too dear to run per request)."""
        while True:
            try:
                self._bytes = int((await self._listener.info("memory"))["used_memory"])
            except Exception:  # a down Redis: keep the last figure, the breaker counts the errors
                pass
            await asyncio.sleep(1.0)

    async def _evictions(self, on_evict: Evicted) -> None:
        """Subscribe to Redis's eviction events; resubscribe after Redis comes back."""
        channel = f"__keyevent@{self.db}__:evicted"
        while True:
            pubsub = self._listener.pubsub()
            try:
                if self.child is None:  # an external Redis may not publish evictions unless asked
                    flags = (await self._listener.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
                    if not {"E", "e"} <= set(flags) and "A" not in flags:
                        await self._listener.config_set("notify-keyspace-events", "".join(sorted(set(flags) | {"E", "e"})))
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_evict(bytes(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(self.probe_s)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in (self.client, self._listener):
            try:
                await client.aclose()
            except Exception:
                pass
        if self.child is not None:
            self.child.close()
