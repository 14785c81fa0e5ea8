"""C2 E4 (PUT replace), E6 (toggle), E7 (PATCH merge), and updated_at."""

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from tests.factories import create_task, new_user_id, tasks_url

FULL = {
    "title": "Full",
    "description": "desc",
    "priority": "high",
    "tags": ["a", "b"],
    "due_at": "2027-01-01T00:00:00Z",
}


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_put_replaces_content_and_resets_omitted_fields(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user, **FULL)
    response = client.put(tasks_url(user, task["id"]), json={"title": "Only title"})
    assert response.status_code == 200
    replaced = response.json()
    assert replaced["title"] == "Only title"
    assert replaced["description"] is None
    assert replaced["priority"] == "none"
    assert replaced["tags"] == []
    assert replaced["due_at"] is None
    assert replaced["id"] == task["id"]
    assert replaced["created_at"] == task["created_at"]


def test_put_requires_title(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.put(tasks_url(user, task["id"]), json={"description": "x"})
    assert response.status_code == 400
    assert client.get(tasks_url(user, task["id"])).json() == task


def test_put_without_completed_leaves_it_unchanged(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user, completed=True)
    replaced = client.put(tasks_url(user, task["id"]), json={"title": "x"}).json()
    assert replaced["completed"] is True
    assert replaced["completed_at"] == task["completed_at"]


def test_put_with_completed_sets_and_clears_completed_at(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    done = client.put(url, json={"title": "x", "completed": True}).json()
    assert done["completed"] is True
    assert done["completed_at"] is not None
    again = client.put(url, json={"title": "x", "completed": True}).json()
    assert again["completed_at"] == done["completed_at"]
    reopened = client.put(url, json={"title": "x", "completed": False}).json()
    assert reopened["completed"] is False
    assert reopened["completed_at"] is None


def test_put_validates_like_create(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.put(
        tasks_url(user, task["id"]), json={"title": "x", "tags": ["a\x01"]}
    )
    assert response.status_code == 400


def test_put_missing_task_is_404(client: TestClient) -> None:
    assert (
        client.put(tasks_url(new_user_id(), 123456789), json={"title": "x"}).status_code
        == 404
    )


def test_patch_changes_only_given_fields(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user, **FULL)
    patched = client.patch(tasks_url(user, task["id"]), json={"priority": "low"}).json()
    assert patched["priority"] == "low"
    for field in ("title", "description", "tags", "due_at", "completed"):
        assert patched[field] == task[field]


def test_patch_null_clears_fields(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user, **FULL)
    body = {"description": None, "due_at": None, "tags": None, "priority": None}
    patched = client.patch(tasks_url(user, task["id"]), json=body).json()
    assert patched["description"] is None
    assert patched["due_at"] is None
    assert patched["tags"] == []
    assert patched["priority"] == "none"
    assert patched["title"] == FULL["title"]


def test_patch_null_title_is_400(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.patch(tasks_url(user, task["id"]), json={"title": None})
    assert response.status_code == 400
    assert response.json()["fields"][0]["field"] == "title"
    assert client.get(tasks_url(user, task["id"])).json() == task


@pytest.mark.parametrize("method", ["patch", "put"])
def test_null_completed_clears_it(client: TestClient, method: str) -> None:
    """Merge semantics: null is cleared; a task's cleared state is not completed."""
    user = new_user_id()
    task = create_task(client, user, title="t")
    url = tasks_url(user, task["id"])
    assert client.patch(url, json={"completed": True}).json()["completed"] is True
    body = {"completed": None, **({"title": "t"} if method == "put" else {})}
    response = client.request(method.upper(), url, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is False
    assert response.json()["completed_at"] is None


def test_create_with_null_completed_is_not_completed(client: TestClient) -> None:
    user = new_user_id()
    response = client.post(tasks_url(user), json={"title": "t", "completed": None})
    assert response.status_code == 201, response.text
    assert response.json()["completed"] is False


def test_patch_completed_sets_completed_at(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    patched = client.patch(tasks_url(user, task["id"]), json={"completed": True}).json()
    assert patched["completed"] is True
    assert patched["completed_at"] is not None


def test_patch_strips_and_normalises(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    body = {"title": "  new  ", "tags": ["X", "x", "Y"]}
    patched = client.patch(tasks_url(user, task["id"]), json=body).json()
    assert patched["title"] == "new"
    assert patched["tags"] == ["x", "y"]


def test_patch_unknown_field_is_400_and_changes_nothing(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.patch(
        tasks_url(user, task["id"]), json={"title": "new", "done": True}
    )
    assert response.status_code == 400
    assert response.json()["fields"] == [{"field": "done", "message": "Unknown field"}]
    assert client.get(tasks_url(user, task["id"])).json() == task


def test_patch_ignores_read_only_fields(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    body = {"id": 1, "user_id": "x", "created_at": "2000-01-01T00:00:00Z", "title": "t"}
    patched = client.patch(tasks_url(user, task["id"]), json=body).json()
    assert patched["id"] == task["id"]
    assert patched["created_at"] == task["created_at"]


def test_toggle_flips_completed_and_completed_at(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"]) + "/complete"
    done = client.patch(url)
    assert done.status_code == 200
    assert done.json()["completed"] is True
    assert done.json()["completed_at"] is not None
    undone = client.patch(url, json={}).json()
    assert undone["completed"] is False
    assert undone["completed_at"] is None


def test_toggle_rejects_a_body_with_fields(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.patch(
        tasks_url(user, task["id"]) + "/complete", json={"completed": True}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "", {"title": "x"}),
        ("PATCH", "", {}),
        ("PATCH", "/complete", None),
    ],
)
def test_every_update_strictly_increases_updated_at(
    client: TestClient, method: str, suffix: str, body: object
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"]) + suffix
    previous = ts(task["updated_at"])
    for _ in range(3):
        updated = client.request(method, url, json=body).json()
        assert ts(updated["updated_at"]) > previous
        assert updated["created_at"] == task["created_at"]
        previous = ts(updated["updated_at"])


def test_delete_returns_204_then_404(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    first = client.delete(tasks_url(user, task["id"]))
    assert first.status_code == 204
    assert first.content == b""
    assert client.delete(tasks_url(user, task["id"])).status_code == 404
    assert client.get(tasks_url(user, task["id"])).status_code == 404
