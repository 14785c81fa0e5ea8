"""A page of a listing reads the page, whatever its sort: each sort walks its own
`(user_id, key, id)` index. The `due_at` sort's expression is written twice, in
its indexes (models) and in the statement (services): had the two drifted apart,
every page would have sorted all the user's tasks, and no other test noticed."""

from typing import Any, get_args

import pytest
from sqlalchemy import Engine, text

from app.schemas import SortKey, TaskListQuery
from app.services.statements import list_query
from tests.factories import new_user_id
from tests.plans import explain, rows_read


@pytest.fixture(scope="module")
def user(engine: Engine) -> str:
    """2,000 tasks, a third undated, the rest due on different days."""
    user = new_user_id()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO task (user_id, title, priority, due_at) "
                "SELECT :u, 't' || g, (ARRAY['none','low','medium','high'])[g % 4 + 1]"
                "::task_priority, CASE WHEN g % 3 > 0 THEN now() + g * interval '1 h' "
                "END FROM generate_series(1, 2000) g"
            ),
            {"u": user},
        )
        connection.execute(text("ANALYZE task"))
    return user


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _plan_nodes(child))]


@pytest.mark.parametrize("sort", get_args(SortKey))
def test_a_page_reads_no_more_rows_than_it_sends(
    database_url: str, user: str, sort: str
) -> None:
    key = sort.removeprefix("-")
    if key == "due_at":  # nulls last both ways: an index each
        key += "_desc" if sort.startswith("-") else "_asc"
    index = f"ix_task_user_id_{key.replace('title', 'lower_title')}_id"
    query, params = list_query(TaskListQuery(sort=sort, limit=10))
    plan = explain(database_url, query, {**params, "user_id": user})
    assert max(rows_read(plan, "task")) <= 11
    assert index in {node.get("Index Name") for node in _plan_nodes(plan)}
