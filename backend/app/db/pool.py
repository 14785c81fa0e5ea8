"""The gateway's connection pool: asyncpg connections kept open for reuse, handed
out first come, first served.

Not asyncpg's own pool, for two measured reasons (specs/007-data-path): it costs
about 70 µs of CPU per acquire and release (a proxy object per acquire, a task per
release, a timer per connection), more than the statement it serves (about 45 µs
for a primary-key read); and its queue lets a request that arrives while a freed
connection's waiter is waking take that connection first, so under load a few
requests waited seconds while the median waited milliseconds. Here a fair
semaphore holds one turn per connection, and idle connections sit on a stack (the
most recently used is reused first, so the others age and are closed after
`idle_lifetime`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import asyncpg

from app.observability import metrics

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"


class Pool:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        *,
        size: int,
        idle_lifetime: float | None,
    ) -> None:
        self._connect = connect
        self._turns = asyncio.BoundedSemaphore(size)
        # (connection, when it was released), oldest first.
        self._idle: deque[tuple[Connection, float]] = deque()
        self._idle_lifetime = idle_lifetime
        self._sweep: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def acquire(self) -> Connection:
        """An idle connection, else a new one. While every connection is in use,
        waits in arrival order (the caller bounds the wait)."""
        await self._turns.acquire()
        try:
            connection = self._reuse() or await self._connect()
        except BaseException:
            self._turns.release()
            raise
        metrics.POOL_IN_USE.inc()
        return connection

    def release(self, connection: Connection, *, reusable: bool = True) -> None:
        """Back on the stack, unless it must not be used again: closed, left in a
        transaction, or interrupted mid-operation (`reusable=False`)."""
        metrics.POOL_IN_USE.dec()
        if connection.is_closed():
            connection.terminate()  # frees what asyncpg still holds for it
        elif reusable and not self._closed and not connection.is_in_transaction():
            self._idle.append((connection, time.monotonic()))
            self._schedule_sweep()
        else:
            # Perhaps mid-statement: a polite close first sends the cancel asyncpg
            # has queued (terminate would drop it, and the statement would run on
            # in the server). Its turn is held until the connection is gone, so
            # the server never has more than `size` of ours.
            closing = self._close_later(connection)
            closing.add_done_callback(lambda _: self._turns.release())
            return
        self._turns.release()

    async def close(self) -> None:
        """Close the idle connections; the ones in use close when released."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        self.close_idle()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def close_idle(self) -> None:
        """Close the idle connections: new ones are opened as needed."""
        while self._idle:
            self._close_later(self._idle.popleft()[0])

    def _reuse(self) -> Connection | None:
        while self._idle:
            connection, _ = self._idle.pop()
            if not connection.is_closed():
                return connection
            connection.terminate()  # closed by the server while idle: clean up
        return None

    def _schedule_sweep(self) -> None:
        if self._sweep is None and self._idle_lifetime and self._idle:
            due = self._idle[0][1] + self._idle_lifetime - time.monotonic()
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(max(due, 0), self._expire)

    def _expire(self) -> None:
        """Close the connections idle for `idle_lifetime` (Neon, and firewalls,
        drop idle connections on their own schedule)."""
        self._sweep = None
        assert self._idle_lifetime
        stale = time.monotonic() - self._idle_lifetime
        while self._idle and self._idle[0][1] <= stale:
            self._close_later(self._idle.popleft()[0])
        self._schedule_sweep()

    def _close_later(self, connection: Connection) -> asyncio.Task[None]:
        """A polite close (the server is told), in the background."""
        task = asyncio.ensure_future(connection.close(timeout=5))
        self._closing.add(task)
        task.add_done_callback(self._closed_one)
        return task

    def _closed_one(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()  # a failed close aborted the connection: nothing to do
