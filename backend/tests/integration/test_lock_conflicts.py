"""Writes that meet another transaction's locks: a batch locks the tasks it names
in id order, a batch or a clear that PostgreSQL rolls back to break a deadlock is
run again, and a write that waits past a lock_timeout an operator set on the
database is a 503; never a 500."""

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import Connection, Engine, make_url, text

from app.config import Settings
from tests.conftest import ClientFactory
from tests.factories import create_task, metric, new_user_id, tasks_url
from tests.sessions import wait_for_a_lock_wait

LOCK = text("SELECT 1 FROM task WHERE user_id = :u AND id = :id FOR UPDATE")


@contextmanager
def _waiting_on(
    engine: Engine, user: str, task_id: int, request: Callable[[], Response]
) -> Iterator[tuple[Connection, "Future[Response]"]]:
    """Another transaction holds the task's row lock; `request` is sent, and the
    block runs once it waits on a lock, as that other transaction (rolled back
    when the block ends, which lets the request go on)."""
    with engine.connect() as other, ThreadPoolExecutor(1) as pool:
        # In a cycle, the request finds it first (after 1 s) and is the victim,
        # even when a loaded machine runs its check late.
        other.execute(text("SET deadlock_timeout = '10s'"))
        other.execute(LOCK, {"u": user, "id": task_id})
        response = pool.submit(request)
        wait_for_a_lock_wait(engine)
        try:
            yield other, response
        finally:
            other.rollback()


def _batch(
    client: TestClient, user: str, operations: list[dict[str, Any]]
) -> Callable[[], Response]:
    return lambda: client.post(
        tasks_url(user) + "/batch", json={"operations": operations}
    )


def _clear(client: TestClient, user: str) -> Callable[[], Response]:
    return lambda: client.delete(tasks_url(user), params={"completed": "true"})


def test_a_batch_chosen_as_deadlock_victim_is_run_again(
    client: TestClient, engine: Engine
) -> None:
    """The batch holds task 1 and waits for task 2, which another transaction
    holds while it asks for task 1: PostgreSQL rolls the batch back."""
    user = new_user_id()
    first, second = create_task(client, user), create_task(client, user)
    operations = [
        {"op": "patch", "id": first["id"], "body": {"title": "one"}},
        {"op": "patch", "id": second["id"], "body": {"title": "two"}},
    ]
    send = _batch(client, user, operations)
    with _waiting_on(engine, user, second["id"], send) as (other, batch):
        other.execute(LOCK, {"u": user, "id": first["id"]})  # the cycle
    response = batch.result()
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [200, 200]
    titles = sorted(t["title"] for t in client.get(tasks_url(user)).json())
    assert titles == ["one", "two"]


def test_a_batch_locks_the_tasks_it_names_in_id_order(
    client: TestClient, engine: Engine
) -> None:
    """Its operations name the later task first; while it waits for the earlier
    one it holds neither, so two batches naming them in opposite orders never
    deadlock."""
    user = new_user_id()
    first, second = create_task(client, user), create_task(client, user)
    operations = [
        {"op": "patch", "id": second["id"], "body": {"title": "two"}},
        {"op": "patch", "id": first["id"], "body": {"title": "one"}},
    ]
    send = _batch(client, user, operations)
    with _waiting_on(engine, user, first["id"], send) as (other, batch):
        free = other.execute(
            text(f"{LOCK.text} NOWAIT"), {"u": user, "id": second["id"]}
        )
        assert free.scalar_one() == 1  # the batch did not take it before waiting
    response = batch.result()
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [200, 200]


def test_a_clear_locks_the_tasks_it_deletes_in_id_order(
    client: TestClient, engine: Engine
) -> None:
    """Stored out of id order (the first task written again after the second),
    the clear still asks for the first's lock before the second's: while it waits
    for the first it holds neither, so a clear and a batch (which locks in id
    order too), or two clears, never deadlock. A clear took its tasks in the
    order it found them: with batches and clears on the same tasks, a toggle
    waiting behind them was a deadlock's victim, a 503 (an outside trial)."""
    user = new_user_id()
    first, second = (
        create_task(client, user, title=title, completed=True) for title in "ab"
    )
    patch = client.patch(tasks_url(user, first["id"]), json={"title": "a2"})
    patch.raise_for_status()
    with _waiting_on(engine, user, first["id"], _clear(client, user)) as (
        other,
        clear,
    ):
        free = other.execute(
            text(f"{LOCK.text} NOWAIT"), {"u": user, "id": second["id"]}
        )
        assert free.scalar_one() == 1  # the clear did not take it before waiting
    response = clear.result()
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 2}


def test_a_clear_chosen_as_deadlock_victim_is_run_again(
    client: TestClient, engine: Engine
) -> None:
    """The clear deletes task 1 and waits for task 2, which another transaction
    (a batch on another device) holds while it asks for task 1."""
    user = new_user_id()
    first, second = (
        create_task(client, user, title=title, completed=True) for title in "ab"
    )
    with _waiting_on(engine, user, second["id"], _clear(client, user)) as (
        other,
        clear,
    ):
        other.execute(LOCK, {"u": user, "id": first["id"]})  # the cycle
    response = clear.result()
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 2}
    assert client.get(tasks_url(user)).json() == []


def test_a_write_waiting_past_the_databases_lock_timeout_is_a_503(
    make_client: ClientFactory,
    settings: Settings,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`lock_timeout` set by an operator (here in the URL's `options`; on the role
    or the database alike): the toggle gives up on the held row, nothing changes."""
    assert settings.DATABASE_URL is not None
    url = make_url(settings.DATABASE_URL.get_secret_value()).update_query_dict(
        {"options": "-c lock_timeout=200"}
    )
    client = make_client(
        DATABASE_URL=SecretStr(url.render_as_string(hide_password=False))
    )
    user = new_user_id()
    task = create_task(client, user)
    errors = metric(client, "db_errors_total")
    with engine.connect() as other:
        other.execute(LOCK, {"u": user, "id": task["id"]})
        response = client.patch(tasks_url(user, task["id"]) + "/complete")
        other.rollback()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert "locked" in response.json()["detail"]
    assert response.headers["Retry-After"]
    assert client.get(tasks_url(user, task["id"])).json() == task
    # counted as every 503 database_unavailable is (it was not: an outside trial)
    assert metric(client, "db_errors_total") == errors + 1
    # and its access line says why (a lock), not only 503 (an operator trial)
    [line] = [
        json.loads(x)
        for x in capsys.readouterr().err.splitlines()
        if '"status":503' in x
    ]
    assert (line["code"], "locked" in line["detail"]) == ("database_unavailable", True)


@pytest.mark.parametrize("batch", [False, True], ids=["statement", "transaction"])
def test_a_write_whose_connection_dies_says_it_may_have_been_made(
    client: TestClient, engine: Engine, batch: bool
) -> None:
    """The server went away while the write was on its way (its backend killed,
    here while it waits on a row lock): it may have committed, so the 503 says
    to retry only with the Idempotency-Key or If-Match (it said "retry": a client
    made the write twice)."""
    user = new_user_id()
    task = create_task(client, user)
    toggle = (
        _batch(client, user, [{"op": "toggle", "id": task["id"]}])
        if batch
        else lambda: client.patch(tasks_url(user, task["id"]) + "/complete")
    )
    with _waiting_on(engine, user, task["id"], toggle) as (other, response):
        other.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        answer = response.result()
    assert answer.status_code == 503, answer.text
    assert "may have been made" in answer.json()["detail"]
