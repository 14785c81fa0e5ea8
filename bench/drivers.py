"""The same statements through three async data layers, side by side in one run:

- `gateway`: the service's own (its pool, statements compiled once per shape);
- `sqlalchemy`: SQLAlchemy 2's async engine on asyncpg (`AsyncConnection.execute`);
- `psycopg3`: psycopg 3's AsyncConnection (server-side prepared, dict rows);
- `asyncpg, no pool`: the gateway's compiled statements on a bare asyncpg connection
  (what the pool and row conversion cost, against the psycopg 3 row, which has no pool).

For each, one connection and a sequential loop, so the figures are the client's cost
per operation: wall time (round trip included) and this process's CPU time.

    PYTHONPATH=backend:. .venv/bin/python bench/drivers.py [DATABASE_URL] [--ops N]

Without a URL: BENCH_DATABASE_URL, else the embedded PostgreSQL under .data/.
A throwaway database `drivers_bench` is created and dropped."""

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import bindparam, create_engine, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.db.gateway import Database
from app.db.migrations import migrate, sync_engine
from app.db.url import parse_database_url
from app.schemas import TaskListQuery
from app.services.statements import GET, TASK, list_query, toggle_query

USER = "bench-user"
Op = Callable[[], Awaitable[Any]]


def admin_url() -> str:
    if len(sys.argv) > 1 and not sys.argv[1].startswith("--"):
        return sys.argv[1]
    if os.environ.get("BENCH_DATABASE_URL"):
        return os.environ["BENCH_DATABASE_URL"]
    from pathlib import Path

    from app.db.embedded import embedded_database_url

    root = Path(__file__).resolve().parents[1]
    return embedded_database_url(root / ".data" / "bench-postgres")


def prepare(server: str) -> str:
    url = make_url(server).set(drivername="postgresql+psycopg2")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS drivers_bench WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE drivers_bench"))
    admin.dispose()
    bench = url.set(database="drivers_bench", drivername="postgresql")
    target = bench.render_as_string(hide_password=False)
    engine = sync_engine(target)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task (user_id, title) SELECT :u, 'task ' || g "
                "FROM generate_series(1, 100) g"
            ),
            {"u": USER},
        )
    engine.dispose()
    return target


async def measure(name: str, op: Op, ops: int) -> tuple[str, float, float]:
    for _ in range(200):  # warm caches and prepared statements
        await op()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(ops):
        await op()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return name, wall / ops * 1e6, cpu / ops * 1e6


async def run(url: str, ops: int) -> None:
    first = await (await psycopg.AsyncConnection.connect(url)).execute(
        "SELECT min(id) FROM task"
    )
    row = await first.fetchone()
    assert row is not None
    task_id = row[0]
    page = TaskListQuery(limit=100)
    list_sql, list_params = list_query(page)

    settings = Settings(DATABASE_URL=url, DB_POOL_SIZE=1, _env_file=None)
    gateway = Database(settings, parse_database_url(url))
    await gateway.open()

    sa_engine = create_async_engine(
        make_url(url).set(drivername="postgresql+asyncpg"),
        pool_size=1,
        isolation_level="AUTOCOMMIT",
    )
    get_stmt = select(*TASK.c).where(TASK.c.user_id == USER, TASK.c.id == task_id)
    list_stmt = (
        select(*TASK.c)
        .where(TASK.c.user_id == USER)
        .order_by(TASK.c.created_at.desc(), TASK.c.id.desc())
        .limit(101)
    )
    toggle_stmt = (
        update(TASK)
        .where(TASK.c.user_id == bindparam("u"), TASK.c.id == bindparam("i"))
        .values(completed=~TASK.c.completed)
        .returning(*TASK.c)
    )

    pg3 = await psycopg.AsyncConnection.connect(url, autocommit=True)
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    pg3_get = str(get_stmt.compile(dialect=dialect))
    pg3_get_params = get_stmt.compile(dialect=dialect).params
    pg3_list = str(list_stmt.compile(dialect=dialect))
    pg3_list_params = list_stmt.compile(dialect=dialect).params
    pg3_toggle = str(toggle_stmt.compile(dialect=dialect))

    async def gw_get() -> Any:
        return await gateway.fetch_one(GET, user_id=USER, task_id=task_id)

    async def gw_list() -> Any:
        return await gateway.fetch(list_sql, user_id=USER, **list_params)

    async def sa_get() -> Any:
        async with sa_engine.connect() as conn:
            return (await conn.execute(get_stmt)).mappings().first()

    async def sa_list() -> Any:
        async with sa_engine.connect() as conn:
            return (await conn.execute(list_stmt)).mappings().all()

    async def sa_toggle() -> Any:
        async with sa_engine.connect() as conn:
            result = await conn.execute(toggle_stmt, {"u": USER, "i": task_id})
            return result.mappings().first()

    async def pg3_get_op() -> Any:
        async with pg3.cursor(row_factory=dict_row) as cur:
            await cur.execute(pg3_get, pg3_get_params, prepare=True)
            return await cur.fetchone()

    async def pg3_list_op() -> Any:
        async with pg3.cursor(row_factory=dict_row) as cur:
            await cur.execute(pg3_list, pg3_list_params, prepare=True)
            return await cur.fetchall()

    toggle = toggle_query(False)

    async def gw_toggle() -> Any:
        return await gateway.write_one(toggle, user_id=USER, task_id=task_id)

    raw = await asyncpg.connect(parse_database_url(url).dsn)
    get_args = GET.args({"user_id": USER, "task_id": task_id})
    list_args = list_sql.args({"user_id": USER, **list_params})
    toggle_args = toggle.args({"user_id": USER, "task_id": task_id})

    async def raw_get() -> Any:
        return dict(await raw.fetchrow(GET.sql, *get_args) or {})

    async def raw_list() -> Any:
        return [dict(r) for r in await raw.fetch(list_sql.sql, *list_args)]

    async def raw_toggle() -> Any:
        return dict(await raw.fetchrow(toggle.sql, *toggle_args) or {})

    async def pg3_toggle_op() -> Any:
        async with pg3.cursor(row_factory=dict_row) as cur:
            await cur.execute(pg3_toggle, {"u": USER, "i": task_id}, prepare=True)
            return await cur.fetchone()

    rows = []
    layers = {
        "get one": (gw_get, raw_get, sa_get, pg3_get_op),
        "list 100": (gw_list, raw_list, sa_list, pg3_list_op),
        "toggle": (gw_toggle, raw_toggle, sa_toggle, pg3_toggle_op),
    }
    names = ("gateway", "asyncpg, no pool", "sqlalchemy", "psycopg3, no pool")
    for label, ops_of_layers in layers.items():
        for layer, op in zip(names, ops_of_layers, strict=True):
            rows.append((label, *await measure(layer, op, ops)))
    await raw.close()
    await gateway.close()
    await sa_engine.dispose()
    await pg3.close()

    print(f"| statement | layer | µs/op wall | µs/op client CPU | ops={ops} |")
    print("| --- | --- | --- | --- | --- |")
    for label, layer, wall, cpu in rows:
        print(f"| {label} | {layer} | {wall:,.0f} | {cpu:,.0f} | |")


def main() -> None:
    ops = int(sys.argv[sys.argv.index("--ops") + 1]) if "--ops" in sys.argv else 3000
    server = admin_url()
    url = prepare(server)
    try:
        asyncio.run(run(url, ops))
    finally:
        admin = create_engine(
            make_url(server).set(drivername="postgresql+psycopg2"),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS drivers_bench WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main()
