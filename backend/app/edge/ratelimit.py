"""Fixed-window limits: requests (CONTRACT C7 RATE_LIMIT) per authenticated user, else
per client address, and failed authentications (AUTH_FAILURE_LIMIT) per client
address. Counters live in Redis when REDIS_URL is set, so every process shares one
budget; otherwise in this process's memory. If Redis fails, each process counts in its
own memory meanwhile (a warning is logged at most every 10 s), which refuses nothing
Redis would have allowed, and Redis is left alone for STORE_PAUSE seconds, then tried
by one request at a time: a limiter outage must never turn into an API outage, nor a
Redis that hangs into a slow API, nor open the way to guessing tokens."""

import logging
import math
import time
from typing import Protocol

from app.errors import RateLimited
from app.observability import metrics
from app.observability.logging import Throttled, failure

logger = logging.getLogger("app.ratelimit")

# Seconds a failed Redis is left alone: each request tried it, and with a Redis
# that accepts connections and never answers, each waited its 250 ms socket
# timeout (a trial).
STORE_PAUSE = 2.0


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
    """Shared by the request and the failed-authentication limiters: one
    outage, one warning."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis  # imported only when REDIS_URL is set

        self._redis: Redis = Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        self._unavailable = Throttled(logger)
        self._failed_at: float | None = None  # the last failure, while it lasts
        self._trying = False  # a request tries Redis again after a failure
        # This process's own counts while Redis fails: with a limiter that let
        # everything through, an outage let anyone guess tokens unhindered (a
        # re-trial). A count here is never above Redis's.
        self._meanwhile = MemoryStore()

    async def hit(self, key: str, window: int) -> int:
        """Counted in this process when Redis fails, and without asking it for
        STORE_PAUSE seconds after a failure, or while another request tries it
        again."""
        failed_at = self._failed_at  # when set, this request tries Redis again
        if failed_at is not None:
            if self._trying or time.monotonic() - failed_at < STORE_PAUSE:
                metrics.RATE_LIMITER_ERRORS.inc()
                return await self._meanwhile.hit(key, window)
            self._trying = True
        bucket = self._bucket(key, window)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(bucket)
                pipe.expire(bucket, window + 1)
                count, _ = await pipe.execute()
        except Exception as exc:  # the shared limiter is down: say so
            self._failed_at = time.monotonic()
            metrics.RATE_LIMITER_ERRORS.inc()
            self._unavailable.log(
                f"rate limiter unavailable, counting per process: {failure(exc)}"
            )
            return await self._meanwhile.hit(key, window)
        finally:
            if failed_at is not None:  # not one on its way before Redis failed
                self._trying = False
        self._failed_at = None
        # Said once Redis has answered for 10 s without a failure (every success
        # asks: the first came within 2 s of the last failure, and it was never
        # said, a re-trial).
        self._unavailable.ended("rate limiter reachable again")
        return int(count)

    @staticmethod
    def _bucket(key: str, window: int) -> str:
        return f"ratelimit:{key}:{int(time.time()) // window}"

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, limit: int, window: int, store: Store, reason: str) -> None:
        self.limit = limit
        self.window = window
        self.store = store
        self.reason = reason  # what its 429s are counted as

    async def check(self, identity: str, detail: str | None = None) -> None:
        """Counts one for `identity`: RateLimited (429) when that is over its
        budget for this window."""
        count = await self.store.hit(identity, self.window)
        if count > self.limit:
            retry_after = math.ceil(self.window - time.time() % self.window)
            raise RateLimited(retry_after, detail, self.reason)
