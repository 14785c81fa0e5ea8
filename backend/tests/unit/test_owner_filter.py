"""Every statement on user data starts from the owner filter helper (STYLE §2).

A lint as a test: a new query written without `_owned(...)` as its first condition
fails here before it can ever show one user's tasks to another. The one exception
(the cross-user sweep of expired idempotency keys) is marked `owner-filter: exempt`."""

import ast
from pathlib import Path

import app
from app.services import task_service

APP_DIR = Path(app.__file__).parent
STATEMENTS = {"select", "update", "delete"}
EXEMPT = "owner-filter: exempt"


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def test_every_select_update_delete_is_filtered_by_owner() -> None:
    source = Path(task_service.__file__).read_text()
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
        and _name(n.args[0].func) == "_owned"
    }
    assert len(statements) >= 6, "the service should build its statements here"
    for statement in statements:
        assert id(statement) in filtered, f"line {statement.lineno}: no _owned() first"


def test_no_primary_key_lookups_bypass_the_owner() -> None:
    for path in APP_DIR.rglob("*.py"):
        assert "session.get(" not in path.read_text(), path
