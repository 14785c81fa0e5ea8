"""Each user's share of a worker (USER_MAX_ACTIVE): at most that many of one user's
requests run at once; that user's next ones wait their turn, in arrival order,
and start as the user's running ones finish. A request holds at most one database
connection, so one user's slow requests (searches of a large list, say) hold at
most their share of the pool, and other users' requests find a connection free.
Without it, 24 searches of one user held the whole pool, and other users' reads
went from 2,082 to 2 a second (specs/006-operations).

A request waiting for its turn gives up its running place in the worker
(HTTP_MAX_ACTIVE) meanwhile, and takes one again at once when its turn comes: one
user's waiting requests never keep other users' from starting (holding them, 70
slow searches of one user filled the 64 places, and other users' reads waited
3 s; 200: 26 s). A turn not had within DB_POOL_TIMEOUT is a 429.

The waiting requests of all users fill at most the worker's in-flight places
(HTTP_MAX_IN_FLIGHT) less its running ones. When they are full, the user with the
most waiting gives way: a request of that user that would wait is a 429 at
once, and one of another user takes the place of that user's newest waiting
request, which is a 429 (a one-user flood of ~2,000 requests would otherwise
fill the worker's in-flight places, and every other user's requests would be
503s until it ended)."""

import asyncio
from collections import deque

from app.edge.protocol import OPERATOR_PLACES, Admission
from app.errors import RateLimited
from app.observability import metrics


class ShareInUse(RateLimited):
    """A user's own requests fill their share: a 429, as other rate limits."""

    message = "Too many of this user's requests are in progress at once"
    detail = (
        "Your earlier requests fill this user's share of the service; retry after "
        "Retry-After seconds, or send fewer at once"
    )

    def __init__(self) -> None:
        super().__init__(1, self.detail, "user_share")


class UserShares:
    def __init__(self, limit: int, wait: float, admission: Admission) -> None:
        self._limit = limit
        self._wait = wait
        self._admission = admission
        # The in-flight places not needed by running requests: a request beyond
        # them would be shed (`LoadShedMiddleware`), whoever's it is.
        self._room = max(1, admission.in_flight - admission.active - OPERATOR_PLACES)
        # Users with a request running: how many run, and who waits, oldest first.
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._queued = 0  # requests in `_waiting`, of all users

    async def take(self, user: str) -> bool:
        """A turn for `user`: at once while the user has fewer than `limit`
        running, else when one of theirs finishes (`give` hands its turn on).
        Whether it waited (its client may have hung up meanwhile)."""
        running = self._running.get(user, 0)
        if running < self._limit:
            self._running[user] = running + 1
            return False
        if self._queued >= self._room:
            self._give_way(user)
        waiting = self._waiting.setdefault(user, deque())
        metrics.USER_SHARE_WAITS.inc()
        turn = asyncio.get_running_loop().create_future()
        waiting.append(turn)
        self._queued += 1
        try:
            self._admission.step_aside()
            async with asyncio.timeout(self._wait):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.give(user)  # handed over as this one gave up: pass it on
            elif turn in waiting:  # else `give` or `_give_way` has dropped it
                waiting.remove(turn)
                self._left(user, waiting)
            if isinstance(exc, TimeoutError):
                raise ShareInUse() from None
            raise
        finally:
            self._admission.step_back()
        return True

    def give(self, user: str) -> None:
        """A running request of `user` has finished: its turn goes to the user's
        oldest request still waiting, if any. A waiter already cancelled (timed
        out, or the server's shutdown) whose task has not run since is skipped."""
        waiting = self._waiting.get(user)
        while waiting:
            turn = waiting.popleft()
            self._left(user, waiting)
            if not turn.done():
                turn.set_result(None)  # the turn passes on: as many run
                return
        running = self._running[user] - 1
        if running:
            self._running[user] = running
        else:
            del self._running[user]

    def _give_way(self, user: str) -> None:
        """The waiting places are full: the user with the most waiting gives one
        up. `user` itself (ShareInUse), if none waits more than it; else that
        user's newest waiting request (a 429 in its own task)."""
        mine = len(self._waiting.get(user, ()))
        heaviest = max(self._waiting, key=lambda other: len(self._waiting[other]))
        waiting = self._waiting[heaviest]
        if len(waiting) <= mine:
            raise ShareInUse()
        turn = waiting.pop()
        self._left(heaviest, waiting)
        if not turn.done():  # else cancelled, and its task has not run since
            turn.set_exception(ShareInUse())

    def _left(self, user: str, waiting: deque[asyncio.Future[None]]) -> None:
        """A request has left `user`'s queue `waiting`; an empty queue goes."""
        self._queued -= 1
        if not waiting and self._waiting.get(user) is waiting:
            del self._waiting[user]
