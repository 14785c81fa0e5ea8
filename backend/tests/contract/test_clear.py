"""C9 E12: clear completed — only the user's completed tasks, never by accident."""

import pytest
from fastapi.testclient import TestClient

from tests.factories import create_task, new_user_id, tasks_url


def test_clear_deletes_only_completed_tasks_and_counts_them(
    client: TestClient,
) -> None:
    user = new_user_id()
    done = [create_task(client, user, completed=True) for _ in range(2)]
    open_task = create_task(client, user)
    response = client.delete(tasks_url(user), params={"completed": "true"})
    assert response.status_code == 200
    assert response.json() == {"deleted": 2}
    assert client.get(tasks_url(user)).json() == [open_task]
    for task in done:
        assert client.get(tasks_url(user, task["id"])).status_code == 404


def test_clear_with_nothing_completed_deletes_nothing(client: TestClient) -> None:
    user = new_user_id()
    create_task(client, user)
    response = client.delete(tasks_url(user), params={"completed": "true"})
    assert response.json() == {"deleted": 0}
    assert len(client.get(tasks_url(user)).json()) == 1


def test_clear_leaves_other_users_tasks(client: TestClient) -> None:
    user, other = new_user_id(), new_user_id()
    theirs = create_task(client, other, completed=True)
    client.delete(tasks_url(user), params={"completed": "true"})
    assert client.get(tasks_url(other)).json() == [theirs]


def test_cleared_tasks_are_deleted_in_the_next_sync(client: TestClient) -> None:
    user = new_user_id()
    done = create_task(client, user, completed=True)
    create_task(client, user)
    token = client.get(tasks_url(user) + "/changes").json()["next"]
    client.delete(tasks_url(user), params={"completed": "true"})
    body = client.get(tasks_url(user) + "/changes", params={"since": token}).json()
    assert (body["tasks"], body["deleted"]) == ([], [done["id"]])


@pytest.mark.parametrize(
    "query", ["", "?completed=false", "?completed=1", "?completed="]
)
def test_clear_without_completed_true_is_400_and_deletes_nothing(
    client: TestClient, query: str
) -> None:
    user = new_user_id()
    create_task(client, user, completed=True)
    response = client.delete(tasks_url(user) + query)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    assert response.json()["fields"][0]["field"] == "completed"
    assert len(client.get(tasks_url(user)).json()) == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?completed=true&tag=work", "tag"),
        ("?completed=true&priority=high", "priority"),
        ("?completed=true&q=milk", "q"),
        ("?completed=true&due_before=2030-01-01T00:00:00Z", "due_before"),
        ("?completed=true&limit=1", "limit"),
        ("?completed=true&cursor=x", "cursor"),
        ("?completed=true&completed=true", "completed"),
        ("?completed=false&completed=true", "completed"),
    ],
)
def test_clear_refuses_what_would_narrow_it_and_deletes_nothing(
    client: TestClient, query: str, field: str
) -> None:
    """A listing filter the delete would ignore, or `completed` twice, would
    remove more than the client meant: 400, never a wider delete."""
    user = new_user_id()
    create_task(client, user, completed=True)
    response = client.delete(tasks_url(user) + query)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert len(client.get(tasks_url(user)).json()) == 1


def test_clear_ignores_parameters_the_listing_does_not_know(
    client: TestClient,
) -> None:
    user = new_user_id()
    create_task(client, user, completed=True)
    response = client.delete(tasks_url(user) + "?completed=true&_=1733400000")
    assert response.json() == {"deleted": 1}
