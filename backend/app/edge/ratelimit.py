"""Fixed-window limits: requests (CONTRACT C7 RATE_LIMIT) per authenticated user, else
per client address, and failed authentications (AUTH_FAILURE_LIMIT) per client
address. Counters live in Redis when REDIS_URL is set, so every process shares one
budget; otherwise in this process's memory. If Redis fails, requests are allowed (and
a warning is logged at most every 10 s): a limiter outage must never turn into an API
outage."""

import logging
import math
import time
from collections.abc import Awaitable
from typing import Protocol

from app.errors import RateLimited
from app.observability import metrics
from app.observability.logging import Throttled, failure

logger = logging.getLogger("app.ratelimit")


class Store(Protocol):
    async def hit(self, key: str, window: int) -> int:
        """Count one request for `key` in its current window; return the count."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        # Per window length: the current window's start and its counts (the request
        # and the failed-authentication limits may use different lengths).
        self._windows: dict[int, tuple[int, dict[str, int]]] = {}

    def _counts(self, window: int) -> dict[str, int]:
        start = int(time.time()) // window * window
        current = self._windows.get(window)
        if current is None or current[0] != start:  # a new window: forget the old
            current = self._windows[window] = (start, {})
        return current[1]

    async def hit(self, key: str, window: int) -> int:
        counts = self._counts(window)
        counts[key] = counts.get(key, 0) + 1
        return counts[key]

    async def close(self) -> None:
        pass


class RedisStore:
    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis  # imported only when REDIS_URL is set

        self._redis: Redis = Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25
        )

    async def hit(self, key: str, window: int) -> int:
        bucket = self._bucket(key, window)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(bucket)
            pipe.expire(bucket, window + 1)
            count, _ = await pipe.execute()
        return int(count)

    @staticmethod
    def _bucket(key: str, window: int) -> str:
        return f"ratelimit:{key}:{int(time.time()) // window}"

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, limit: int, window: int, store: Store) -> None:
        self.limit = limit
        self.window = window
        self.store = store
        self._unavailable = Throttled(logger)

    async def check(self, identity: str, detail: str | None = None) -> None:
        """Counts one for `identity`: RateLimited (429) when that is over its
        budget for this window."""
        count = await self._safely(self.store.hit(identity, self.window))
        if count > self.limit:
            retry_after = math.ceil(self.window - time.time() % self.window)
            raise RateLimited(retry_after=retry_after, detail=detail)

    async def _safely(self, counting: Awaitable[int]) -> int:
        """The store's answer, or 0 (allow) when the store is down."""
        try:
            count = await counting
        except Exception as exc:  # the limiter is down: allow, and say so
            metrics.RATE_LIMITER_ERRORS.inc()
            self._unavailable.log(f"rate limiter unavailable, allowing: {failure(exc)}")
            return 0
        self._unavailable.ended("rate limiter reachable again")
        return count
