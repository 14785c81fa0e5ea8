"""EXPLAIN (ANALYZE, BUFFERS) of every listing shape on 1,000,000 tasks.

    PYTHONPATH=backend .venv/bin/python bench/explain.py DATABASE_URL [--seed] > x.md

--seed (re)creates the data: 9,000 users with 100 tasks each and one user
("heavy") with 100,000, migrated to head first. The queries are the service's own
(`list_query`), for the heavy user, a page of 100."""

import asyncio
import sys
import time
from typing import Any, get_args

import asyncpg

from app.db.migrations import migrate, sync_engine
from app.db.url import parse_database_url
from app.schemas import SortKey, TaskListQuery
from app.services.statements import list_query

HEAVY = "heavy"
SEED = """
TRUNCATE task, task_tombstone;
INSERT INTO task (user_id, title, description, priority, tags, due_at, completed,
                  created_at, updated_at)
SELECT CASE WHEN g <= 100000 THEN 'heavy' ELSE 'user-' || (mod(g, 9000)) END,
       'task ' || md5(g::text),
       CASE WHEN mod(g, 3) = 0 THEN 'note ' || md5((g * 7)::text) END,
       (ARRAY['none','low','medium','high'])[1 + mod(g, 4)]::task_priority,
       CASE WHEN mod(g, 5) = 0 THEN ARRAY['work']
            WHEN mod(g, 5) = 1 THEN ARRAY['home','urgent'] ELSE '{}'::text[] END,
       CASE WHEN mod(g, 2) = 0 THEN now() + (mod(g, 1000)) * interval '1 hour' END,
       mod(g, 7) = 0,
       now() - g * interval '1 second',
       now() - g * interval '1 second'
FROM generate_series(1, 1000000) AS g;
VACUUM ANALYZE task;
"""

SHAPES: list[tuple[str, dict[str, Any]]] = [
    *[(f"sort={s}", {"sort": s}) for s in get_args(SortKey)],
    ("completed=false&priority=high", {"completed": "false", "priority": ["high"]}),
    ("tag=work&sort=due_at", {"tag": ["work"], "sort": "due_at"}),
    ("q=abc (search title and description)", {"q": "abc"}),
    ("q=abc12 (rare)", {"q": "abc12"}),
    (
        "due_after/due_before window",
        {
            "due_after": "2026-11-23T00:00:00Z",
            "due_before": "2026-11-25T00:00:00Z",
        },
    ),
]


async def explain(
    connection: Any, title: str, params: dict[str, Any], after: Any
) -> None:
    """EXPLAIN the very statement and values the service would run."""
    query = TaskListQuery.model_validate({"limit": 100, **params})
    statement, values = list_query(query, after)
    plan = await connection.fetch(
        "EXPLAIN (ANALYZE, BUFFERS) " + statement.sql,
        *statement.args({"user_id": HEAVY, **values}),
    )
    print(f"### {title}{' (second page, after a cursor)' if after else ''}\n\n```")
    print("\n".join(row[0] for row in plan))
    print("```\n")


async def report(url: str) -> None:
    connection = await asyncpg.connect(parse_database_url(url).dsn)
    try:
        total = await connection.fetchval("SELECT count(*) FROM task")
        mine = await connection.fetchval(
            "SELECT count(*) FROM task WHERE user_id = $1", HEAVY
        )
        print(f"{total:,} tasks; user `{HEAVY}` has {mine:,}.\n")
        for title, params in SHAPES:
            await explain(connection, title, params, None)
        first = await connection.fetchrow(
            "SELECT created_at, id FROM task WHERE user_id = $1 "
            "ORDER BY created_at DESC, id DESC OFFSET 99 LIMIT 1",
            HEAVY,
        )
        assert first is not None, f"user {HEAVY} has fewer than 100 tasks"
        await explain(connection, "sort=-created_at", {}, (first[0], first[1]))
        by_title = await connection.fetchrow(
            "SELECT title, id FROM task WHERE user_id = $1 "
            "ORDER BY lower(title), id OFFSET 99 LIMIT 1",
            HEAVY,
        )
        assert by_title is not None
        after = (by_title[0], by_title[1])
        await explain(connection, "sort=title", {"sort": "title"}, after)
    finally:
        await connection.close()


def main() -> None:
    url = sys.argv[1]
    if "--seed" in sys.argv:
        engine = sync_engine(url)
        migrate(engine)
        started = time.monotonic()
        with engine.begin() as connection:
            connection.exec_driver_sql(SEED.split("VACUUM")[0])
        with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql("VACUUM ANALYZE task")
        engine.dispose()
        print(f"seeded in {time.monotonic() - started:.0f} s", file=sys.stderr)
    asyncio.run(report(url))


if __name__ == "__main__":
    main()
