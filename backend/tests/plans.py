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


def explain(database_url: str, query: Query[Any], params: dict[str, Any]) -> Any:
    """The plan `query` runs with (its top node), with actual row counts."""

    async def run() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            statement = f"EXPLAIN (ANALYZE, FORMAT JSON) {query.sql}"
            return json.loads(await connection.fetchval(statement, *query.args(params)))
        finally:
            await connection.close()

    return asyncio.run(run())[0]["Plan"]
