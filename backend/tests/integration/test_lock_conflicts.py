"""E11 under real concurrency: a batch that PostgreSQL rolls back to break a
deadlock is run again, not answered with a 500."""

import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.factories import create_task, new_user_id, tasks_url

LOCK = text("SELECT 1 FROM task WHERE user_id = :u AND id = :id FOR UPDATE")


def _wait_for_a_lock_wait(engine: Engine) -> None:
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while conn.execute(query).scalar_one() == 0:
            assert time.monotonic() < deadline, "the batch never waited on a lock"
            time.sleep(0.02)


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
    with engine.connect() as other, ThreadPoolExecutor(1) as pool:
        other.execute(LOCK, {"u": user, "id": second["id"]})
        batch = pool.submit(
            client.post, tasks_url(user) + "/batch", json={"operations": operations}
        )
        _wait_for_a_lock_wait(engine)
        other.execute(LOCK, {"u": user, "id": first["id"]})  # the cycle
        other.rollback()
        response = batch.result()
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [200, 200]
    titles = sorted(t["title"] for t in client.get(tasks_url(user)).json())
    assert titles == ["one", "two"]
