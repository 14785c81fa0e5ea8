"""A page of a listing reads the page, whatever its sort: each sort walks its own
`(user_id, key, id)` index. The `due_at` sort's expression is written twice, in
its indexes (models) and in the statement (services): had the two drifted apart,
every page would have sorted all the user's tasks, and no other test noticed."""

from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def crowd(engine: Engine) -> Iterator[None]:
    """Another user with 200,000 tasks: PostgreSQL then plans a search of any
    user's tasks as if it had many (the generic plan)."""
    other = new_user_id()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO task (user_id, title) "
                "SELECT :u, md5(g::text) FROM generate_series(1, 200000) g"
            ),
            {"u": other},
        )
        connection.execute(text("ANALYZE task"))
    yield
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM task WHERE user_id = :u"), {"u": other})
        connection.execute(text("ANALYZE task"))


@pytest.mark.parametrize("q", ["t1", "1", "a-b", "%_", "²²²"])
@pytest.mark.usefixtures("crowd")
def test_a_search_with_no_trigram_reads_the_users_tasks_not_a_trigram_index(
    database_url: str, engine: Engine, user: str, q: str
) -> None:
    """A trigram index has nothing to look up for such a `q`: it would read the
    entries of every user's tasks (a hostile trial: 1.3 s for a search of 100
    tasks, beside another user's 510,000). The user's own tasks are read instead."""
    with engine.connect() as connection:
        indexes = connection.execute(
            text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%_trgm'")
        ).scalar_one()
    if not indexes:
        pytest.skip("no trigram indexes here (the server lacks pg_trgm or btree_gin)")
    query, params = list_query(TaskListQuery(q=q, limit=10))
    plan = explain(database_url, query, {**params, "user_id": user}, generic=True)
    used = {node.get("Index Name") for node in _plan_nodes(plan)}
    assert not used & {"ix_task_title_trgm", "ix_task_description_trgm"}, used


def test_a_search_with_a_trigram_keeps_to_the_indexed_columns() -> None:
    """Only a `q` without a trigram leaves the trigram indexes aside."""
    searched, _ = list_query(TaskListQuery(q="t12", limit=10))
    assert "||" not in searched.sql
    short, _ = list_query(TaskListQuery(q="t1", limit=10))
    assert "||" in short.sql
