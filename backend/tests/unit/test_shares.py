"""Each user's share of a worker (`edge.shares`): past USER_MAX_ACTIVE running
requests, a user's next ones wait their turn in arrival order, without holding
up other users or their running places; a turn not had within the wait is a 429
(specs/006-operations)."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from app.edge.protocol import OPERATOR_PLACES, Admission
from app.edge.shares import ShareInUse, UserShares
from app.errors import RateLimited

pytestmark = pytest.mark.anyio


# The worker's running places: these tests' requests hold none of their own.
RUNNING = 5


def _shares(limit: int, wait: float) -> UserShares:
    admission = Admission(active=64, in_flight=100)
    admission.running = RUNNING
    return UserShares(limit, wait, admission)


def _waits() -> float | None:
    return REGISTRY.get_sample_value("user_share_waits_total")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_past_the_limit_a_users_requests_wait_in_arrival_order() -> None:
    shares = _shares(2, 5)
    waits = _waits()
    await shares.take("a")
    await shares.take("a")
    assert _waits() == waits
    turns = [asyncio.ensure_future(shares.take("a")) for _ in range(3)]
    await _settle()
    assert not any(turn.done() for turn in turns)
    # Each waiting request gave up its running place, and takes it back later.
    assert shares._admission.running == RUNNING - 3
    assert waits is not None
    assert _waits() == waits + 3
    shares.give("a")
    await _settle()
    assert [turn.done() for turn in turns] == [True, False, False]
    shares.give("a")
    shares.give("a")
    await _settle()
    assert all(turn.done() for turn in turns)
    assert shares._admission.running == RUNNING


async def test_another_user_is_not_held_up_by_one_at_the_limit() -> None:
    shares = _shares(1, 5)
    await shares.take("a")
    waiting = asyncio.ensure_future(shares.take("a"))
    await asyncio.wait_for(shares.take("b"), 1)
    await _settle()
    assert not waiting.done()
    shares.give("b")
    shares.give("a")
    await asyncio.wait_for(waiting, 1)


async def test_a_turn_not_had_in_time_is_a_429_and_takes_no_place() -> None:
    shares = _shares(1, 0.05)
    await shares.take("a")
    with pytest.raises(ShareInUse) as refused:
        await shares.take("a")
    assert isinstance(refused.value, RateLimited)
    assert refused.value.retry_after == 1
    shares.give("a")  # the running one: no waiter is left to hand it to
    await asyncio.wait_for(shares.take("a"), 1)  # a place is free at once
    shares.give("a")
    assert not shares._running  # nothing is kept for "a"
    assert not shares._waiting
    assert shares._admission.running == RUNNING


async def test_a_waiter_cancelled_is_skipped() -> None:
    shares = _shares(1, 5)
    await shares.take("a")
    gone = asyncio.ensure_future(shares.take("a"))
    next_one = asyncio.ensure_future(shares.take("a"))
    await _settle()
    gone.cancel()
    await _settle()
    shares.give("a")
    await asyncio.wait_for(next_one, 1)


async def test_a_turn_handed_to_a_waiter_that_gave_up_is_passed_on() -> None:
    """The turn was handed over (`give`) just as its waiter was cancelled: it
    must reach the next waiter, not be lost (the user would wait forever)."""
    shares = _shares(1, 5)
    await shares.take("a")
    first = asyncio.ensure_future(shares.take("a"))
    second = asyncio.ensure_future(shares.take("a"))
    await _settle()
    shares.give("a")  # hands the turn to `first`…
    first.cancel()  # …which is cancelled before it runs again
    await _settle()
    assert first.cancelled()
    await asyncio.wait_for(second, 1)
    shares.give("a")
    await asyncio.wait_for(shares.take("a"), 1)  # and nothing is held after


async def test_a_user_with_nothing_running_is_forgotten() -> None:
    shares = _shares(1, 5)
    for user in ("a", "b"):
        await shares.take(user)
    waiting = asyncio.ensure_future(shares.take("a"))
    await _settle()
    shares.give("a")
    await waiting
    shares.give("a")
    shares.give("b")
    assert not shares._running
    assert not shares._waiting


async def test_a_waiter_cancelled_before_it_runs_again_is_skipped_by_give() -> None:
    """A waiter timed out (or cancelled) has its turn cancelled at once, but
    leaves the queue only when its task runs again: a `give` in between must
    pass over it, not fail (a 500, a trial), and must not lose the place."""
    shares = _shares(1, 5)
    await shares.take("a")
    gone = asyncio.ensure_future(shares.take("a"))
    await _settle()
    gone.cancel()  # its turn is cancelled now; its task has not run since
    shares.give("a")
    await _settle()
    assert gone.cancelled()
    assert not shares._running
    assert not shares._waiting
    assert shares._admission.running == RUNNING
    await asyncio.wait_for(shares.take("a"), 1)  # the place is free


def _small_room(waiting: int) -> UserShares:
    """Room for `waiting` requests waiting, of all users (the worker's in-flight
    places less its running ones and the operators' places)."""
    admission = Admission(active=4, in_flight=4 + OPERATOR_PLACES + waiting)
    admission.running = RUNNING
    return UserShares(1, 5, admission)


async def test_when_the_waiting_places_are_full_the_user_waiting_most_gives_way() -> (
    None
):
    """A one-user flood filled the worker's in-flight places with its waiting
    requests: every other user's request was shed (503) until it ended."""
    shares = _small_room(3)
    for user in ("a", "b"):
        await shares.take(user)
    flood = [asyncio.ensure_future(shares.take("a")) for _ in range(3)]
    await _settle()
    # Another of the user waiting most: a 429 at once, the others keep waiting.
    with pytest.raises(ShareInUse):
        await asyncio.wait_for(shares.take("a"), 1)
    # Another user's takes the place of that user's newest waiting request.
    other = asyncio.ensure_future(shares.take("b"))
    await _settle()
    assert not other.done()
    assert flood[2].done()
    assert isinstance(flood[2].exception(), ShareInUse)
    assert not flood[0].done()
    assert not flood[1].done()
    # With a:2 and b:1 waiting, c's request makes "a" give way again; then
    # b and c wait no fewer than "a", and a request of "b" is refused.
    late = asyncio.ensure_future(shares.take("c"))
    await asyncio.wait_for(late, 1)  # "c" had nothing running
    third = asyncio.ensure_future(shares.take("c"))
    await _settle()
    assert isinstance(flood[1].exception(), ShareInUse)
    with pytest.raises(ShareInUse):
        await asyncio.wait_for(shares.take("b"), 1)
    # Those still waiting get their turns; nothing is held after.
    for user in ("a", "b", "c"):
        shares.give(user)
    await asyncio.wait_for(asyncio.gather(flood[0], other, third), 1)
    for user in ("a", "b", "c"):
        shares.give(user)
    assert not shares._running
    assert not shares._waiting
    assert shares._queued == 0
    assert shares._admission.running == RUNNING
