"""C1/C2 E2, E3: reading tasks, owner scoping, and path formats."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.factories import create_task, new_user_id, tasks_url

MAX_ID = 9223372036854775807


def test_get_returns_the_task(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user, description="2 litres")
    response = client.get(tasks_url(user, task["id"]))
    assert response.status_code == 200
    assert response.json() == task


def test_get_other_users_task_is_indistinguishable_from_missing(
    client: TestClient,
) -> None:
    owner, intruder = new_user_id(), new_user_id()
    task = create_task(client, owner)
    foreign = client.get(tasks_url(intruder, task["id"]))
    missing = client.get(tasks_url(intruder, MAX_ID))
    assert foreign.status_code == missing.status_code == 404

    def strip(response: Response) -> dict[str, Any]:
        return {k: v for k, v in response.json().items() if k != "request_id"}

    assert strip(foreign) == strip(missing)
    assert strip(missing) == {
        "error": "Task not found",
        "code": "not_found",
        "detail": "This user has no task with this id",
    }


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_writes_to_other_users_task_are_404_and_change_nothing(
    client: TestClient, method: str
) -> None:
    owner, intruder = new_user_id(), new_user_id()
    task = create_task(client, owner)
    kwargs = {"json": {"title": "hijacked"}} if method != "delete" else {}
    response = client.request(method.upper(), tasks_url(intruder, task["id"]), **kwargs)
    assert response.status_code == 404
    assert client.get(tasks_url(owner, task["id"])).json() == task


def test_toggle_other_users_task_is_404(client: TestClient) -> None:
    owner, intruder = new_user_id(), new_user_id()
    task = create_task(client, owner)
    assert (
        client.patch(tasks_url(intruder, task["id"]) + "/complete").status_code == 404
    )
    assert client.get(tasks_url(owner, task["id"])).json()["completed"] is False


def test_list_is_newest_first_and_only_own(client: TestClient) -> None:
    user, other = new_user_id(), new_user_id()
    ids = [create_task(client, user, title=f"t{i}")["id"] for i in range(3)]
    create_task(client, other)
    response = client.get(tasks_url(user))
    assert response.status_code == 200
    listed = response.json()
    assert [t["id"] for t in listed] == ids[::-1]
    assert {t["user_id"] for t in listed} == {user}


def test_list_of_user_without_tasks_is_empty_array(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id()))
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    "task_id",
    ["0", "-1", "abc", "1.5", "1e3", str(MAX_ID + 1), "9" * 30, "%201", "+1", "\u0661"],
)
def test_malformed_task_id_is_400(client: TestClient, task_id: str) -> None:
    response = client.get(f"/api/{new_user_id()}/tasks/{task_id}")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert response.json()["fields"] == [
        {"field": "id", "message": f"must be a decimal integer from 1 to {MAX_ID}"}
    ]


def test_largest_task_id_is_well_formed(client: TestClient) -> None:
    assert client.get(tasks_url(new_user_id(), MAX_ID)).status_code == 404


@pytest.mark.parametrize("zeros", [1, 17, 30, 5000])  # past int()'s 4,300 digits
def test_leading_zeros_name_the_same_task_however_many(
    client: TestClient, zeros: int
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    response = client.get(f"/api/{user}/tasks/{'0' * zeros}{task['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == task
    padded_max = client.get(f"/api/{user}/tasks/{'0' * zeros}{MAX_ID}")
    assert padded_max.status_code == 404


@pytest.mark.parametrize(
    "user_id",
    [
        "a",
        "x" * 128,
        "550e8400-e29b-41d4-a716-446655440000",
        "V1StGXR8_Z5jdHi6B-myT",
        "1234567890",
        "user@example.com",
        "github:12345",
        "a.b_c-d",
    ],
)
def test_well_formed_user_ids_are_accepted(client: TestClient, user_id: str) -> None:
    task = create_task(client, user_id)
    assert task["user_id"] == user_id
    assert client.get(tasks_url(user_id, task["id"])).status_code == 200


@pytest.mark.parametrize(
    "user_id",
    [
        "x" * 129,
        "-abc",
        "_abc",
        ".abc",
        "a b",
        "a%0Ab",
        "abc%0A",
        "ä",
        "a%23b",
        "a%00",
        "a'b",
    ],
)
def test_malformed_user_id_is_400(client: TestClient, user_id: str) -> None:
    response = client.get(f"/api/{user_id}/tasks")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    [field] = response.json()["fields"]
    assert field["field"] == "user_id"
    # in words, not as the pattern (a trial)
    assert field["message"] == (
        "must be 1-128 characters from A-Z a-z 0-9 _ - . @ :, "
        "starting with a letter or a digit"
    )
