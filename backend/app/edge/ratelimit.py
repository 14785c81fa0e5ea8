"""Fixed-window rate limiting (CONTRACT C7 RATE_LIMIT): per authenticated user, else
per client address. Counters live in Redis when REDIS_URL is set, so every process
shares one budget; otherwise in this process's memory. If Redis fails, requests are
allowed (and a warning is logged at most every 10 s): a limiter outage must never
turn into an API outage."""

import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass

from app.errors import RateLimited

logger = logging.getLogger("app.ratelimit")


class Store(Protocol):
    async def hit(self, key: str, window: int) -> int:
        """Count one request for `key` in its current window; return the count."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._window_start = 0

    async def hit(self, key: str, window: int) -> int:
        start = int(time.time()) // window * window
        if start != self._window_start:  # a new window: forget the old counts
            self._counts.clear()
            self._window_start = start
        self._counts[key] = self._counts.get(key, 0) + 1
        return self._counts[key]

    async def close(self) -> None:
        pass


class RedisStore:
    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis  # imported only when REDIS_URL is set

        self._redis: Redis = Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25
        )

    async def hit(self, key: str, window: int) -> int:
        bucket = f"ratelimit:{key}:{int(time.time()) // window}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(bucket)
            pipe.expire(bucket, window + 1)
            count, _ = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, limit: int, window: int, store: Store) -> None:
        self.limit = limit
        self.window = window
        self.store = store
        self._warned_at = float("-inf")

    async def check(self, identity: str) -> None:
        """RateLimited (429) when `identity` is over its budget for this window."""
        try:
            count = await self.store.hit(identity, self.window)
        except Exception as exc:  # the limiter is down: allow, and say so
            if time.monotonic() - self._warned_at > 10:
                self._warned_at = time.monotonic()
                logger.warning(
                    "rate limiter unavailable, allowing: %s", type(exc).__name__
                )
            return
        if count > self.limit:
            retry_after = self.window - time.time() % self.window
            raise RateLimited(retry_after=math.ceil(retry_after))
