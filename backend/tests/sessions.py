"""What the database's sessions are doing, for tests that must wait for a request
to reach a lock (or for a server's sessions to end) rather than sleep and hope."""

import time
from collections.abc import Callable

from sqlalchemy import Engine, text


def sessions(engine: Engine, *, ours: bool = False, on_a_lock: bool = False) -> int:
    """Sessions of this database (the service's only, `ours`; those waiting on a
    lock only, `on_a_lock`)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    if ours:
        query += " AND application_name = 'task-api'"
    if on_a_lock:
        query += " AND wait_event_type = 'Lock'"
    with engine.connect() as conn:
        count: int = conn.execute(text(query)).scalar_one()
        return count


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll for up to `timeout` s: a loaded machine runs the server late, never
    wrong."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout} s: {what}"
        time.sleep(0.02)


def wait_for_a_lock_wait(engine: Engine) -> None:
    """Until a session of this database waits on a lock (a request reached it)."""
    wait_until(
        "a session waits on a lock", lambda: sessions(engine, on_a_lock=True) > 0
    )
