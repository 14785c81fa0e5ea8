"""EXPLAIN ANALYZE of the service's own compiled statements, for tests that check
how much of a table a statement reads."""

import asyncio
import json
from typing import Any

import asyncpg

from app.db.gateway import Query


def rows_read(plan: dict[str, Any], table: str) -> list[int]:
    """The rows each scan of `table` returned, anywhere in an EXPLAIN plan."""
    rows = [plan["Actual Rows"]] if plan.get("Relation Name") == table else []
    for child in plan.get("Plans", []):
        rows += rows_read(child, table)
    return rows


def explain(
    database_url: str,
    query: Query[Any],
    params: dict[str, Any],
    *,
    generic: bool = False,
) -> Any:
    """The plan `query` runs with (its top node), with actual row counts; or the
    `generic` plan, made for any values, which a prepared statement runs with
    after its first five runs if it costs about as much."""

    async def run() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            if generic:
                await connection.execute("SET plan_cache_mode = force_generic_plan")
            statement = f"EXPLAIN (ANALYZE, FORMAT JSON) {query.sql}"
            return json.loads(await connection.fetchval(statement, *query.args(params)))
        finally:
            await connection.close()

    return asyncio.run(run())[0]["Plan"]
