"""Each user's share of a worker (USER_MAX_ACTIVE): at most that many of one user's
requests run at once; that user's next ones wait their turn, in arrival order,
and start as the user's running ones finish. A request holds at most one database
connection, so one user's slow requests (searches of a large list, say) hold at
most their share of the pool, and other users' requests find a connection free.
Without it, 24 searches of one user held the whole pool, and other users' reads
went from 2,262 to 2 a second (specs/006-operations). A turn not had within
DB_POOL_TIMEOUT is a 503, as a connection not had in that time is."""

import asyncio
from collections import deque

from app.errors import DatabaseUnavailable
from app.observability import metrics

YOUR_SHARE_IN_USE = (
    "Your earlier requests hold this user's share of the database connections; "
    "retry after Retry-After seconds"
)


class UserShares:
    def __init__(self, limit: int, wait: float) -> None:
        self._limit = limit
        self._wait = wait
        # Users with a request running: how many run, and who waits, oldest first.
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def take(self, user: str) -> None:
        """A turn for `user`: at once while the user has fewer than `limit`
        running, else when one of theirs finishes (`give` hands its turn on)."""
        running = self._running.get(user, 0)
        if running < self._limit:
            self._running[user] = running + 1
            return
        metrics.USER_SHARE_WAITS.inc()
        turn = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(user, deque())
        waiting.append(turn)
        try:
            async with asyncio.timeout(self._wait):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self.give(user)  # handed over as this one gave up: pass it on
            else:
                waiting.remove(turn)
                if not waiting:
                    del self._waiting[user]
            if isinstance(exc, TimeoutError):
                raise DatabaseUnavailable(detail=YOUR_SHARE_IN_USE) from None
            raise

    def give(self, user: str) -> None:
        """A running request of `user` has finished: its turn goes to the user's
        oldest waiting request, if any."""
        waiting = self._waiting.get(user)
        if waiting:
            waiting.popleft().set_result(None)  # the turn passes on: as many run
            if not waiting:
                del self._waiting[user]
            return
        running = self._running[user] - 1
        if running:
            self._running[user] = running
        else:
            del self._running[user]
