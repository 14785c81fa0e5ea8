"""C9 E10 against a real server: concurrent writers whose transactions commit out
of order, a syncing reader whose replica must end equal to the table, and the
tombstones' retention."""

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import BigInteger, Engine, column, create_engine, select, text, values

from app.db.migrations import migrate
from app.services.sync import SyncToken, not_seen
from app.services.task_service import SWEEP_BATCH, SWEEP_EVERY
from tests.conftest import fresh_database
from tests.factories import create_task, new_user_id, tasks_url
from tests.plans import explain, rows_read
from tests.server import running_server
from tests.sessions import wait_for_a_lock_wait


@pytest.fixture(scope="module")
def servers(database_url: str, engine: Engine) -> Iterator[list[str]]:
    """Two server processes on one database, as behind a load balancer."""
    with (
        running_server(database_url) as first,
        running_server(database_url) as second,
    ):
        yield [first, second]


class Replica:
    """What an offline-first client keeps: tasks by id, and every version (id,
    updated_at) it was ever sent, to prove none comes twice."""

    def __init__(self, base_url: str, user: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.url = tasks_url(user) + "/changes"
        self.tasks: dict[int, dict[str, Any]] = {}
        self.versions: set[tuple[int, str]] = set()
        self.token: str | None = None

    def sync(self, limit: int = 1000) -> int:
        """Follow `next` to the end of one sync; the number of changes applied."""
        applied = 0
        while True:
            params: dict[str, Any] = {"limit": limit}
            if self.token is not None:
                params["since"] = self.token
            response = self.http.get(self.url, params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            for task in body["tasks"]:
                version = (task["id"], task["updated_at"])
                assert version not in self.versions, f"sent twice: {version}"
                self.versions.add(version)
                self.tasks[task["id"]] = task
            for task_id in body["deleted"]:
                self.tasks.pop(task_id, None)
            applied += len(body["tasks"]) + len(body["deleted"])
            self.token = body["next"]
            if not body["has_more"]:
                return applied


def table(base_url: str, user: str) -> dict[int, dict[str, Any]]:
    tasks = httpx.get(base_url + tasks_url(user), timeout=30).json()
    return {task["id"]: task for task in tasks}


def test_a_write_that_commits_after_a_later_one_is_not_missed(
    servers: list[str], engine: Engine
) -> None:
    """The first writer takes its transaction id, then waits on a row lock while
    a second writer starts later and commits first; a sync runs between the two
    commits. The first write must come in the next sync."""
    user = new_user_id()
    with httpx.Client(base_url=servers[0], timeout=30) as http:
        slow, fast = create_task(http, user), create_task(http, user)
    replica = Replica(servers[0], user)
    replica.sync()
    with engine.connect() as holder:
        holder.execute(
            text("SELECT 1 FROM task WHERE user_id = :u AND id = :id FOR UPDATE"),
            {"u": user, "id": slow["id"]},
        )
        with ThreadPoolExecutor(1) as pool:
            url = servers[1] + tasks_url(user, slow["id"])
            blocked = pool.submit(httpx.patch, url, json={"title": "slow"}, timeout=30)
            wait_for_a_lock_wait(engine)
            httpx.patch(servers[0] + tasks_url(user, fast["id"]), json={"title": "f"})
            replica.sync()
            assert replica.tasks[fast["id"]]["title"] == "f"
            holder.rollback()  # releases the lock: the slow write commits now
            assert blocked.result().status_code == 200
    replica.sync()
    assert replica.tasks == table(servers[0], user)


def _write_randomly(base_url: str, user: str, stop: threading.Event, seed: int) -> int:
    """Creates, replaces, patches, toggles, deletes and batches of them (atomic
    or not) on a few shared tasks."""
    rng = random.Random(seed)
    writes = 0
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while not stop.is_set():
            ids = [t["id"] for t in http.get(tasks_url(user)).json()]
            if len(ids) < 5 or rng.random() < 0.2:
                response = http.post(tasks_url(user), json={"title": f"w{seed}"})
            else:
                url = tasks_url(user, rng.choice(ids))
                action = rng.choice(["put", "patch", "toggle", "delete", "batch"])
                if action == "batch":  # a longer transaction, often committing last
                    operations = [
                        {"op": "create", "ref": "n", "body": {"title": f"b{seed}"}},
                        {"op": "toggle", "target": "n"},
                        *({"op": "patch", "id": i, "body": {}} for i in ids[:3]),
                        {"op": "delete", "id": rng.choice(ids)},
                    ]
                    response = http.post(
                        tasks_url(user) + "/batch",
                        json={"operations": operations, "atomic": rng.random() < 0.5},
                    )
                elif action == "put":
                    response = http.put(url, json={"title": f"put {seed}"})
                elif action == "patch":
                    response = http.patch(
                        url, json={"priority": rng.choice(["low", "high"])}
                    )
                elif action == "toggle":
                    response = http.patch(url + "/complete")
                else:
                    response = http.delete(url)
            assert response.status_code < 500, response.text
            writes += 1
    return writes


def test_concurrent_writers_and_a_syncing_reader_end_equal(
    servers: list[str],
) -> None:
    user = new_user_id()
    replica = Replica(servers[0], user)
    stop = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        writers = [
            pool.submit(_write_randomly, servers[i % 2], user, stop, i)
            for i in range(6)
        ]
        deadline = time.monotonic() + 4
        syncs = 0
        while time.monotonic() < deadline:
            replica.sync(limit=3)  # small pages: syncs continue across commits
            syncs += 1
        stop.set()
        assert sum(w.result() for w in writers) > 50
    assert syncs > 5
    replica.sync(limit=3)
    assert replica.tasks == table(servers[0], user)
    assert replica.sync() == 0


def _age_tombstone(engine: Engine, user: str, age: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE task_tombstone SET deleted_at = now() - :age WHERE user_id = :u"
            ),
            {"age": age, "u": user},
        )


def _tombstones(engine: Engine, user: str) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM task_tombstone WHERE user_id = :u"), {"u": user}
        )
        return int(count.scalar_one())


def _delete_tasks(client: TestClient, user: str, count: int) -> None:
    for _ in range(count):
        client.delete(tasks_url(user, create_task(client, user)["id"]))


def test_tombstones_are_kept_past_the_retention_then_swept(
    client: TestClient, engine: Engine
) -> None:
    """Kept SYNC_RETENTION_DAYS (30) plus a day, then swept by a later delete
    (one in SWEEP_EVERY of a worker's deletes sweeps)."""
    user = new_user_id()
    client.delete(tasks_url(user, create_task(client, user)["id"]))
    _age_tombstone(engine, user, timedelta(days=30, hours=23))
    other = new_user_id()
    _delete_tasks(client, other, SWEEP_EVERY)
    assert _tombstones(engine, user) == 1
    _age_tombstone(engine, user, timedelta(days=31, minutes=1))
    _delete_tasks(client, other, SWEEP_EVERY)
    assert _tombstones(engine, user) == 0
    assert _tombstones(engine, other) == 2 * SWEEP_EVERY


def test_a_clear_sweeps_twice_as_many_expired_tombstones_as_it_cleared(
    client: TestClient, engine: Engine
) -> None:
    """A clear leaves many tombstones at once; a later one sweeps up to twice
    as many expired ones as it clears (it took SWEEP_BATCH at most, so clears
    could leave more than deletes took and expired tombstones piled up)."""
    old, user = new_user_id(), new_user_id()
    expired = SWEEP_BATCH + 50
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_tombstone (user_id, id, deleted_at)"
                " SELECT :u, g, now() - interval '10 years'"
                " FROM generate_series(1, :n) AS g"
            ),
            {"u": old, "n": expired},
        )
    for _ in range(expired // 2 + 1):
        create_task(client, user, completed=True)
    client.delete(tasks_url(user), params={"completed": "true"})
    assert _tombstones(engine, old) == 0


def _restore(engine: Engine, user: str, task_id: int) -> None:
    """Put a deleted task's row back with its id, as a restore from a backup
    does; its tombstone stays."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task (id, user_id, title, completed)"
                " VALUES (:id, :u, 'restored', true)"
            ),
            {"id": task_id, "u": user},
        )


@pytest.mark.parametrize("how", ["delete", "clear"])
def test_a_restored_task_deleted_again_is_reported_deleted_again(
    client: TestClient, engine: Engine, how: str
) -> None:
    """The tombstone a task left is marked anew (it was a 500: its key was taken),
    and a sync since the restore reports the task deleted."""
    user = new_user_id()
    task_id = create_task(client, user)["id"]
    assert client.delete(tasks_url(user, task_id)).status_code == 204
    _restore(engine, user, task_id)
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    if how == "delete":
        assert client.delete(tasks_url(user, task_id)).status_code == 204
    else:
        cleared = client.delete(tasks_url(user), params={"completed": "true"})
        assert cleared.json() == {"deleted": 1}
    changes = client.get(tasks_url(user) + "/changes", params={"since": since})
    assert changes.json()["deleted"] == [task_id]
    assert client.get(tasks_url(user, task_id)).status_code == 404
    assert _tombstones(engine, user) == 1


def test_a_restored_task_is_sent_as_a_task_not_as_deleted(
    client: TestClient, engine: Engine
) -> None:
    """Its tombstone stays, but the task exists: a sync since before the delete
    sends it once, in `tasks` (it was in both lists, and a client applying
    `deleted` last dropped a task that exists)."""
    user = new_user_id()
    task_id = create_task(client, user)["id"]
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    assert client.delete(tasks_url(user, task_id)).status_code == 204
    _restore(engine, user, task_id)
    changes = client.get(tasks_url(user) + "/changes", params={"since": since}).json()
    assert [task["id"] for task in changes["tasks"]] == [task_id]
    assert changes["deleted"] == []


@pytest.mark.parametrize("xid", [0, -1])
def test_a_task_marked_with_triggers_off_is_in_a_first_sync(
    client: TestClient, engine: Engine, xid: int
) -> None:
    """A `change_xid` no transaction has (a write with triggers off, such as the
    restore procedure's `SET change_xid = 0` run so): a first sync sends the task
    beside the others. It was a 500 on every first sync of that user: the row
    came before the statement's own first row (a trial)."""
    user = new_user_id()
    marked, other = create_task(client, user)["id"], create_task(client, user)["id"]
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE task SET change_xid = :xid WHERE user_id = :u AND id = :id"),
            {"xid": xid, "u": user, "id": marked},
        )
    changes = client.get(tasks_url(user) + "/changes")
    assert changes.status_code == 200, changes.text
    assert [task["id"] for task in changes.json()["tasks"]] == [marked, other]
    # A page that ends on it gives a token that goes on (it was refused, 400).
    first = client.get(tasks_url(user) + "/changes", params={"limit": 1}).json()
    assert [task["id"] for task in first["tasks"]] == [marked]
    params = {"limit": 1, "since": first["next"]}
    rest = client.get(tasks_url(user) + "/changes", params=params)
    assert rest.status_code == 200, rest.text
    assert [task["id"] for task in rest.json()["tasks"]] == [other]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE task SET title = 'fixed by hand' WHERE user_id = :u AND id = :id",
        # a row put back from a backup whole, its old change_xid included
        "WITH gone AS (DELETE FROM task WHERE user_id = :u AND id = :id RETURNING *)"
        " INSERT INTO task SELECT * FROM gone",
    ],
    ids=["update", "restore"],
)
def test_a_task_written_by_sql_is_sent_by_the_next_sync(
    client: TestClient, engine: Engine, statement: str
) -> None:
    """An operator's fix in psql, or a row restored with its old `change_xid`:
    the database marks the writing transaction itself, so a client that already
    synced is sent the task (a trial: its replica stayed stale for ever)."""
    user = new_user_id()
    task_id = create_task(client, user)["id"]
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    with engine.begin() as connection:
        connection.execute(text(statement), {"u": user, "id": task_id})
    changes = client.get(tasks_url(user) + "/changes", params={"since": since}).json()
    assert [task["id"] for task in changes["tasks"]] == [task_id]
    assert changes["tasks"][0] == client.get(tasks_url(user, task_id)).json()


@pytest.mark.parametrize("edited_first", [False, True])
def test_a_task_moved_to_another_user_by_sql_leaves_one_and_reaches_the_other(
    client: TestClient, engine: Engine, edited_first: bool
) -> None:
    """An operator reassigning a task (`UPDATE task SET user_id = …`): the user
    who had it is told it is gone, the one who has it now gets it (the first
    kept it for ever: a re-trial)."""
    before, after = new_user_id(), new_user_id()
    task_id = create_task(client, before)["id"]
    since = {
        user: client.get(tasks_url(user) + "/changes").json()["next"]
        for user in (before, after)
    }
    with engine.begin() as connection:
        if edited_first:  # then the row already carries this transaction's id
            connection.execute(
                text("UPDATE task SET title = 'edited' WHERE id = :id"),
                {"id": task_id},
            )
        connection.execute(
            text("UPDATE task SET user_id = :to WHERE user_id = :u AND id = :id"),
            {"to": after, "u": before, "id": task_id},
        )
    assert _changes(client, before, since[before])["deleted"] == [task_id]
    assert [task["id"] for task in _changes(client, after, since[after])["tasks"]] == [
        task_id
    ]


@pytest.mark.parametrize("edited_first", [False, True])
def test_a_task_renumbered_by_sql_is_reported_deleted_under_its_old_id(
    client: TestClient, engine: Engine, edited_first: bool
) -> None:
    """`UPDATE task SET id = …`: the task reached syncs under its new id, and its
    old id was never reported deleted, so every replica kept both (a trial)."""
    user = new_user_id()
    task_id = create_task(client, user)["id"]
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    with engine.begin() as connection:
        if edited_first:  # then the row already carries this transaction's id
            connection.execute(
                text("UPDATE task SET title = 'edited' WHERE id = :id"),
                {"id": task_id},
            )
        new_id = connection.execute(
            text("UPDATE task SET id = id + 1000000 WHERE id = :id RETURNING id"),
            {"id": task_id},
        ).scalar_one()
    changes = _changes(client, user, since)
    assert changes["deleted"] == [task_id]
    assert [task["id"] for task in changes["tasks"]] == [new_id]


def _written_by_sql(
    client: TestClient, engine: Engine, statement: str
) -> tuple[dict[str, Any], str, str]:
    """A new task, then `statement` run on it (`:id`) with SQL: the task as
    created, its URL, and its ETag from before the statement."""
    task = create_task(client, new_user_id())
    url = tasks_url(task["user_id"], task["id"])
    etag = client.get(url).headers["etag"]
    with engine.begin() as connection:
        connection.execute(text(statement), {"id": task["id"]})
    return task, url, etag


def test_a_task_edited_by_sql_gets_a_new_version(
    client: TestClient, engine: Engine
) -> None:
    """An operator's fix that does not set `updated_at` kept the task's ETag: a
    client's `If-None-Match` got a 304 (its stale copy kept) and its `If-Match`
    overwrote the fix (a trial). The database moves `updated_at` on."""
    task, url, etag = _written_by_sql(
        client, engine, "UPDATE task SET title = 'fixed by hand' WHERE id = :id"
    )
    fixed = client.get(url, headers={"If-None-Match": etag})
    assert fixed.status_code == 200
    assert fixed.json()["title"] == "fixed by hand"
    edited = datetime.fromisoformat(fixed.json()["updated_at"])
    assert edited > datetime.fromisoformat(task["updated_at"])
    stale = client.patch(url, json={"title": "mine"}, headers={"If-Match": etag})
    assert stale.status_code == 412


def test_the_restore_procedures_update_keeps_every_version(
    client: TestClient, engine: Engine
) -> None:
    """`UPDATE task SET change_xid = 0` (specs/008, after a logical restore)
    writes no task's content: its version, last-modified time and ETag stay (a
    review: the first version of migration 0005 moved every task's on)."""
    task, url, etag = _written_by_sql(
        client, engine, "UPDATE task SET change_xid = 0 WHERE id = :id"
    )
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url).json() == task


def _changes(client: TestClient, user: str, since: str) -> dict[str, Any]:
    url = tasks_url(user) + "/changes"
    body: dict[str, Any] = client.get(url, params={"since": since}).json()
    return body


def test_a_task_deleted_by_sql_is_reported_deleted(
    client: TestClient, engine: Engine
) -> None:
    """A delete in psql leaves its tombstone too: a client that synced before
    it is told (it kept the task for ever)."""
    user = new_user_id()
    kept, gone = (create_task(client, user)["id"] for _ in range(2))
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    with engine.begin() as connection:
        connection.execute(
            text("DELETE FROM task WHERE user_id = :u AND id = :id"),
            {"u": user, "id": gone},
        )
    changes = client.get(tasks_url(user) + "/changes", params={"since": since}).json()
    assert changes["deleted"] == [gone]
    assert changes["tasks"] == []
    assert [t["id"] for t in client.get(tasks_url(user)).json()] == [kept]


def test_sql_changes_are_marked_whatever_the_search_path(
    client: TestClient, engine: Engine
) -> None:
    """A script from pg_dump sets `search_path` to '' (a hardened role may too):
    the triggers' statements found no `task_tombstone`, and a delete or move by
    hand failed (a review). They name their tables with the schema."""
    user, other = new_user_id(), new_user_id()
    moved, deleted = (create_task(client, user)["id"] for _ in range(2))
    since = client.get(tasks_url(user) + "/changes").json()["next"]
    with engine.begin() as connection:
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        connection.execute(text("SET LOCAL search_path = ''"))
        connection.execute(
            text(f"UPDATE {schema}.task SET user_id = :to WHERE id = :id"),
            {"to": other, "id": moved},
        )
        connection.execute(
            text(f"DELETE FROM {schema}.task WHERE id = :id"), {"id": deleted}
        )
    changes = client.get(tasks_url(user) + "/changes", params={"since": since}).json()
    assert sorted(changes["deleted"]) == sorted([moved, deleted])


def test_a_truncate_leaves_a_tombstone_for_every_task() -> None:
    """`TRUNCATE task` deletes without a row trigger: a statement trigger before
    it leaves the tombstones (syncing clients kept every task: a trial). Its own
    database: a truncate would take every other test's tasks."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            migrate(engine)
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO task (user_id, title) "
                        "SELECT 'u' || g % 3, 't' FROM generate_series(1, 30) g"
                    )
                )
                ids = connection.execute(text("SELECT user_id, id FROM task"))
                before = {(row.user_id, row.id) for row in ids}
            with engine.begin() as connection:
                connection.execute(text("TRUNCATE task"))
            with engine.connect() as connection:
                tombstones = connection.execute(
                    text("SELECT user_id, id FROM task_tombstone")
                )
                assert {(row.user_id, row.id) for row in tombstones} == before
        finally:
            engine.dispose()


def test_a_page_of_changes_reads_no_more_rows_than_it_sends(
    database_url: str, engine: Engine
) -> None:
    """2,000 tasks and 2,000 tombstones to send, 10 a page: each page's statement
    reads at most 11 rows of each table, walking its (user_id, change_xid, id)
    index, not every change left (it sorted all of them for every page)."""
    user = new_user_id()
    with engine.begin() as connection:
        since = connection.execute(text("SELECT pg_current_snapshot()::text")).scalar()
        for table in ("task (user_id, title)", "task_tombstone (user_id, id)"):
            rows = "SELECT :u, g FROM generate_series(1, 2000) g"
            connection.execute(text(f"INSERT INTO {table} {rows}"), {"u": user})
        connection.execute(text("ANALYZE task, task_tombstone"))
        upto = connection.execute(text("SELECT pg_current_snapshot()::text")).scalar()
        after = connection.execute(
            text(
                "SELECT change_xid, id FROM task WHERE user_id = :u "
                "ORDER BY change_xid, id OFFSET 999 LIMIT 1"
            ),
            {"u": user},
        ).one()
    assert isinstance(since, str)
    assert isinstance(upto, str)
    first = SyncToken(0, since)
    going_on = SyncToken(0, since, 0, upto, (after.change_xid, after.id))
    for token in (first, going_on):
        query, params = token.statement(limit=10, origin=True)
        plan = explain(database_url, query, {**params, "user_id": user})
        for table in ("task", "task_tombstone"):
            assert rows_read(plan, table), f"{table} is not read"
            assert max(rows_read(plan, table)) <= 11


@pytest.mark.parametrize(
    "snapshot", ["100:100:", "100:108:", "100:108:100,103,107", "100:108:105"]
)
def test_the_sync_reads_a_snapshot_as_postgresql_does(
    engine: Engine, snapshot: str
) -> None:
    """`not_seen` (integer comparisons) answers as `NOT pg_visible_in_snapshot`
    for transactions before, inside and past the snapshot's range."""
    xmin, xmax, xip = snapshot.split(":")
    xids = list(range(int(xmin) - 3, int(xmax) + 3))
    xid = column("x", BigInteger)
    ours = select(xid, not_seen(xid, "s")).select_from(
        values(xid, name="v").data([(x,) for x in xids])
    )
    postgres = text(
        "SELECT x, NOT pg_visible_in_snapshot(x::text::xid8, "
        "CAST(:snapshot AS pg_snapshot)) FROM unnest(CAST(:xids AS bigint[])) x"
    )
    with engine.connect() as connection:
        bound = {"s_xmax": int(xmax), "s_xip": [int(x) for x in xip.split(",") if x]}
        got = dict(connection.execute(ours, bound).all())
        answers = connection.execute(postgres, {"snapshot": snapshot, "xids": xids})
        expected: dict[int, bool] = dict(answers.all())
    assert got == expected
    assert any(expected.values())
    assert not all(expected.values())
