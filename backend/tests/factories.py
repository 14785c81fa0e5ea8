"""Small factories for test data."""

import uuid
from typing import Any


def new_user_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def task_payload(**overrides: Any) -> dict[str, Any]:
    return {"title": "Buy milk", **overrides}


def create_task(client: Any, user_id: str, **overrides: Any) -> dict[str, Any]:
    """POST a task through the API and return its body (TestClient or httpx)."""
    response = client.post(f"/api/{user_id}/tasks", json=task_payload(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def tasks_url(user_id: str, task_id: int | str | None = None) -> str:
    base = f"/api/{user_id}/tasks"
    return base if task_id is None else f"{base}/{task_id}"


def metric(client: Any, name: str) -> float:
    """A metric's value, as the client's server serves it at /metrics: `name`, or
    one series of it, `name{label="value"}` (0 until the series has counted)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    if "{" in name:
        return 0.0
    raise AssertionError(f"no {name} in /metrics")
