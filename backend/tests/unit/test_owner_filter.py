"""Every statement on user data starts from the owner filter helper (STYLE §2).

A lint as a test: a new query written in the services without `owned(...)` as its
first condition fails here before it can ever show one user's tasks to another. The
exceptions (the cross-user sweeps of expired idempotency keys and tombstones, and
statements over rows already filtered) are marked `owner-filter: exempt`."""

import ast
from pathlib import Path
from typing import Any

import pytest

from app import services
from app.db.gateway import Query
from app.services.statements import CLEAR_COMPLETED, EXISTS, GET, INSERT

SERVICES = sorted(Path(services.__file__).parent.glob("*.py"))
STATEMENTS = {"select", "update", "delete"}
EXEMPT = "owner-filter: exempt"


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def _unfiltered(path: Path) -> tuple[int, list[int]]:
    """How many select/update/delete calls `path` makes (exempt ones aside), and
    the lines of those whose first `.where(...)` is not `owned(...)`."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    statements = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and _name(n.func) in STATEMENTS
        and EXEMPT not in lines[n.lineno - 1]
    ]
    filtered = {
        id(n.func.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "where"
        and n.args
        and isinstance(n.args[0], ast.Call)
        and _name(n.args[0].func) == "owned"
    }
    return len(statements), [s.lineno for s in statements if id(s) not in filtered]


def test_every_select_update_delete_is_filtered_by_owner() -> None:
    found = 0
    for path in SERVICES:
        count, unfiltered = _unfiltered(path)
        found += count
        assert not unfiltered, f"{path.name}, lines {unfiltered}: no owned() first"
    assert found >= 10, "the services should build their statements"


@pytest.mark.parametrize("query", [GET, EXISTS, INSERT, CLEAR_COMPLETED])
def test_a_statement_given_no_owner_is_an_error_not_a_null(query: Query[Any]) -> None:
    """A placeholder left without a value was bound NULL: a statement run without
    its `user_id` (or task id) matched nothing, silently (a review)."""
    assert "user_id" in query.names
    others = {name: 1 for name in query.names if name != "user_id"}
    with pytest.raises(KeyError, match="user_id"):
        query.args(others)
