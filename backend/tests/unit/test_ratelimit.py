"""The rate limiter's Redis store when Redis hangs (`edge.ratelimit`): requests
are counted in the process meanwhile, and after a failure Redis is left alone
for a pause, so a Redis that accepts connections and never answers does not cost
every request its socket timeout (a trial: 250 ms on each)."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.edge import ratelimit
from app.edge.ratelimit import RateLimiter, RedisStore
from app.errors import RateLimited

pytestmark = pytest.mark.anyio


class Silent:
    """A TCP server that takes connections and whatever is sent, and never
    answers; it counts the connections made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def _take(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        while await reader.read(4096):
            pass
        writer.close()


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    listener = Silent()
    server = await asyncio.start_server(listener._take, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    async with server:
        yield listener


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_hanging_redis_is_left_alone_for_a_pause(
    silent: Silent, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{silent.port}/0")
    limiter = RateLimiter(10, 86_400, store, "rate_limit")  # no window ends in it
    try:
        for _ in range(5):
            await limiter.check("alice")
        assert silent.connections == 1  # the first check waited; the others did not
        monkeypatch.setattr(ratelimit, "STORE_PAUSE", 0.0)
        await asyncio.gather(*(limiter.check("alice") for _ in range(5)))
        assert silent.connections == 2  # once the pause is over, one tries again
        # Counted in this process all along: the eleventh is over the limit.
        with pytest.raises(RateLimited):
            await limiter.check("alice")
    finally:
        await store.close()


async def test_the_end_of_an_outage_is_said_once_redis_has_answered_a_while(
    silent: Silent, caplog: pytest.LogCaptureFixture
) -> None:
    """Said when Redis has answered for the quiet period: only the first success
    asked, within the pause of the last failure, and it was never said (a
    re-trial)."""
    store = RedisStore(f"redis://127.0.0.1:{silent.port}/0")
    working = RedisStore("redis://127.0.0.1:6379/7")
    store._unavailable.quiet = 1.0
    try:
        await store.hit("alice", 60)  # fails: the outage begins
        store._redis, store._failed_at = working._redis, 0.0
        await store.hit("alice", 60)  # answers at once: too soon to say
        assert "reachable again" not in caplog.text
        await asyncio.sleep(1.1)
        await store.hit("alice", 60)
        assert "rate limiter reachable again" in caplog.text
    finally:
        await store.close()
