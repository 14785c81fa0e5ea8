"""C9 E11: batches — each operation as its single request, per-operation results,
client refs, if_match, atomic all-or-nothing, Idempotency-Key on the whole batch."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.services import idempotency
from tests.factories import create_task, new_user_id, tasks_url


def batch_url(user: str) -> str:
    return tasks_url(user) + "/batch"


def run_batch(
    client: TestClient, user: str, operations: list[dict[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    response = client.post(batch_url(user), json={"operations": operations, **options})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(operations)
    return results


def titles(client: TestClient, user: str) -> list[str]:
    return sorted(t["title"] for t in client.get(tasks_url(user)).json())


def creates(count: int) -> list[dict[str, Any]]:
    return [{"op": "create", "body": {"title": f"t{i:03}"}} for i in range(count)]


def test_each_operation_has_its_single_requests_status(client: TestClient) -> None:
    user = new_user_id()
    a, b, c, d = (create_task(client, user, title=t) for t in "abcd")
    results = run_batch(
        client,
        user,
        [
            {"op": "create", "ref": "new", "body": {"title": "e"}},
            {"op": "replace", "id": a["id"], "body": {"title": "A"}},
            {"op": "patch", "id": b["id"], "body": {"priority": "high"}},
            {"op": "toggle", "id": c["id"]},
            {"op": "delete", "id": d["id"]},
        ],
    )
    assert [r["status"] for r in results] == [201, 200, 200, 200, 204]
    assert results[0]["ref"] == "new"
    assert results[0]["task"]["title"] == "e"
    assert results[1]["task"]["title"] == "A"
    assert results[2]["task"]["priority"] == "high"
    assert results[3]["task"]["completed"] is True
    assert "task" not in results[4]
    assert titles(client, user) == ["A", "b", "c", "e"]


def test_results_carry_the_tasks_etag(client: TestClient) -> None:
    user = new_user_id()
    result = run_batch(client, user, creates(1))[0]
    response = client.get(tasks_url(user, result["task"]["id"]))
    assert result["etag"] == response.headers["etag"]
    assert result["task"] == response.json()


def test_target_names_a_task_created_earlier_in_the_batch(client: TestClient) -> None:
    user = new_user_id()
    results = run_batch(
        client,
        user,
        [
            {"op": "create", "ref": "x", "body": {"title": "draft"}},
            {"op": "patch", "target": "x", "body": {"title": "final"}},
            {"op": "toggle", "target": "x"},
        ],
    )
    assert results[1]["task"]["id"] == results[0]["task"]["id"]
    assert results[2]["task"]["title"] == "final"
    assert results[2]["task"]["completed"] is True


def test_if_match_per_operation(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    current = client.get(tasks_url(user, task["id"])).headers["etag"]
    client_stale = f'"{task["id"]}.1"'
    results = run_batch(
        client,
        user,
        [
            {"op": "patch", "id": task["id"], "if_match": client_stale, "body": {}},
            {"op": "patch", "id": task["id"], "if_match": current, "body": {}},
        ],
    )
    assert results[0]["status"] == 412
    assert results[0]["error"]["code"] == "precondition_failed"
    assert results[1]["status"] == 200


def test_if_match_per_operation_is_compared_exactly(client: TestClient) -> None:
    """As the If-Match header: a leading zero or a missing quote is not the ETag,
    and a value that is no ETag of the task says so."""
    user = new_user_id()
    task = create_task(client, user)
    current = client.get(tasks_url(user, task["id"])).headers["etag"]
    task_id, micros = current.strip('"').split(".")
    loose = [f'"{task_id}.0{micros}"', f'"{task_id}.{micros}', f"{task_id}.{micros}"]
    results = run_batch(
        client,
        user,
        [{"op": "toggle", "id": task["id"], "if_match": tag} for tag in loose],
    )
    assert [r["status"] for r in results] == [412, 412, 412]
    assert all("quotes" in r["error"]["detail"] for r in results)
    assert client.get(tasks_url(user, task["id"])).headers["etag"] == current


def test_an_invalid_body_fails_only_its_operation(client: TestClient) -> None:
    user = new_user_id()
    results = run_batch(
        client,
        user,
        [
            {"op": "create", "body": {"title": ""}},
            {"op": "create", "body": ["not", "an", "object"]},
            {"op": "create", "body": {"title": "ok", "colour": "red"}},
            {"op": "create", "body": {"title": "fine"}},
        ],
    )
    assert [r["status"] for r in results] == [400, 400, 400, 201]
    assert results[0]["error"]["code"] == "validation_error"
    assert results[0]["error"]["fields"][0]["field"] == "title"
    assert results[1]["error"]["code"] == "invalid_json"
    assert results[2]["error"]["fields"][0] == {
        "field": "colour",
        "message": "Unknown field",
    }
    assert titles(client, user) == ["fine"]


def test_another_users_or_a_missing_task_is_404(client: TestClient) -> None:
    user, other = new_user_id(), new_user_id()
    theirs = create_task(client, other)
    results = run_batch(
        client,
        user,
        [
            {"op": "delete", "id": theirs["id"]},
            {"op": "toggle", "id": 2**63 - 1},
        ],
    )
    assert [(r["status"], r["error"]["code"]) for r in results] == [
        (404, "not_found"),
        (404, "not_found"),
    ]
    assert client.get(tasks_url(other, theirs["id"])).status_code == 200


def test_non_atomic_failure_at_57_keeps_the_56_before_it(client: TestClient) -> None:
    user = new_user_id()
    operations = [*creates(56), {"op": "delete", "id": 2**63 - 1}]
    results = run_batch(client, user, operations)
    assert [r["status"] for r in results] == [201] * 56 + [404]
    assert [r["task"]["title"] for r in results[:56]] == [f"t{i:03}" for i in range(56)]
    ids = [r["task"]["id"] for r in results[:56]]
    assert ids == sorted(ids)  # created in the order given
    assert titles(client, user) == [f"t{i:03}" for i in range(56)]


def test_atomic_failure_at_57_leaves_nothing_behind(client: TestClient) -> None:
    user = new_user_id()
    kept = create_task(client, user, title="kept")
    operations = [
        {"op": "patch", "id": kept["id"], "body": {"title": "changed"}},
        *creates(55),
        {"op": "delete", "id": 2**63 - 1},
    ]
    results = run_batch(client, user, operations, atomic=True)
    assert results[56]["status"] == 404
    assert results[56]["error"]["code"] == "not_found"
    for result in results[:56]:
        assert result["status"] == 424
        assert result["error"]["code"] == "failed_dependency"
        assert "task" not in result
    assert client.get(tasks_url(user)).json() == [kept]


def test_atomic_stops_at_the_first_failure(client: TestClient) -> None:
    user = new_user_id()
    results = run_batch(
        client,
        user,
        [
            *creates(1),
            {"op": "create", "body": {}},
            *creates(1),
            {"op": "toggle", "id": 2**63 - 1},
        ],
        atomic=True,
    )
    assert [r["status"] for r in results] == [424, 400, 424, 424]
    assert titles(client, user) == []


def test_atomic_success_applies_everything(client: TestClient) -> None:
    user = new_user_id()
    results = run_batch(
        client,
        user,
        [
            {"op": "create", "ref": "a", "body": {"title": "a"}},
            {"op": "delete", "target": "a"},
        ],
        atomic=True,
    )
    assert [r["status"] for r in results] == [201, 204]
    assert titles(client, user) == []


def test_non_atomic_target_of_a_failed_create_is_424(client: TestClient) -> None:
    user = new_user_id()
    results = run_batch(
        client,
        user,
        [
            {"op": "create", "ref": "bad", "body": {"title": " "}},
            {"op": "patch", "target": "bad", "body": {"title": "x"}},
            {"op": "create", "body": {"title": "other"}},
        ],
    )
    assert [r["status"] for r in results] == [400, 424, 201]
    assert results[1]["error"]["code"] == "failed_dependency"
    assert "atomic" not in results[1]["error"]["detail"]  # this batch is not


def test_batch_changes_come_in_the_next_sync(client: TestClient) -> None:
    user = new_user_id()
    gone = create_task(client, user)
    token = client.get(tasks_url(user) + "/changes").json()["next"]
    results = run_batch(client, user, [*creates(2), {"op": "delete", "id": gone["id"]}])
    body = client.get(tasks_url(user) + "/changes", params={"since": token}).json()
    assert sorted(t["id"] for t in body["tasks"]) == sorted(
        r["task"]["id"] for r in results[:2]
    )
    assert body["deleted"] == [gone["id"]]


# Nested past what any body needs, short of what the JSON parser refuses (~1,000).
DEEP: list[Any] = []
for _ in range(600):
    DEEP = [DEEP]


def test_toggle_and_delete_read_a_body_as_their_single_requests_do(
    client: TestClient,
) -> None:
    """DELETE and PATCH …/complete take `{}` (or read-only fields) and refuse a
    body with any other field: so do their ops, each alone (a delete with `{}`
    refused the whole batch, its single request a 204: a trial)."""
    user = new_user_id()
    a, b, c, d = (create_task(client, user, title=t) for t in "abcd")
    results = run_batch(
        client,
        user,
        [
            {"op": "delete", "id": a["id"], "body": {}},
            {"op": "delete", "id": b["id"], "body": {"id": b["id"]}},
            {"op": "delete", "id": c["id"], "body": {"title": "x"}},
            {"op": "toggle", "id": d["id"], "body": {"title": "x"}},
            {"op": "create", "body": {"title": "e"}},
        ],
    )
    assert [r["status"] for r in results] == [204, 204, 400, 400, 201]
    assert results[2]["error"]["fields"][0]["field"] == "title"
    assert titles(client, user) == ["c", "d", "e"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operations": []}, "operations"),
        ({"operations": creates(101)}, "operations"),
        ({}, "operations"),
        ({"operations": [{"op": "archive", "id": 1}]}, "operations[0].op"),
        ({"operations": [{"op": "patch", "body": {}}]}, "operations[0]"),
        ({"operations": [{"op": "toggle", "id": 1, "target": "a"}]}, "operations[0]"),
        ({"operations": [{"op": "create", "id": 1, "body": {}}]}, "operations[0]"),
        (
            {"operations": [{"op": "toggle", "target": "nowhere"}]},
            "operations[0].target",
        ),
        ({"operations": [{"op": "toggle", "id": 0}]}, "operations[0].id"),
        ({"operations": [{"op": "toggle", "id": True}]}, "operations[0].id"),
        ({"operations": [{"op": "toggle", "id": "1"}]}, "operations[0].id"),
        ({"operations": [{"op": "toggle", "id": 1.0}]}, "operations[0].id"),
        ({"operations": [{"op": "toggle", "id": 2**63}]}, "operations[0].id"),
        ({"operations": creates(1), "atomic": "yes"}, "atomic"),
        ({"operations": creates(1), "extra": 1}, "extra"),
        ({"operations": [{"op": "create", "colour": 1}]}, "operations[0].colour"),
        ({"operations": [{"op": "create", "ref": "a\x00"}]}, "operations[0].ref"),
        (
            {"operations": [{"op": "patch", "id": 1, "body": {"tags": DEEP}}]},
            "operations[0].body",
        ),
    ],
)
def test_a_malformed_batch_is_400_and_applies_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    user = new_user_id()
    response = client.post(batch_url(user), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    assert field in [f["field"] for f in response.json()["fields"]]
    assert titles(client, user) == []


def test_refs_are_unique_and_targets_name_earlier_creates(client: TestClient) -> None:
    user = new_user_id()
    twice = [
        {"op": "create", "ref": "a", "body": {"title": "1"}},
        {"op": "create", "ref": "a", "body": {"title": "2"}},
    ]
    later = [
        {"op": "toggle", "target": "a"},
        {"op": "create", "ref": "a", "body": {"title": "1"}},
    ]
    for operations, field in (
        (twice, "operations[1].ref"),
        (later, "operations[0].target"),
    ):
        response = client.post(batch_url(user), json={"operations": operations})
        assert response.status_code == 400, response.text
        [error] = response.json()["fields"]
        assert error["field"] == field  # C3: the field, as every other error names it


def test_if_match_with_a_target_is_400(client: TestClient) -> None:
    operations = [
        {"op": "create", "ref": "a", "body": {"title": "1"}},
        {"op": "toggle", "target": "a", "if_match": "*"},
    ]
    response = client.post(batch_url(new_user_id()), json={"operations": operations})
    assert response.status_code == 400


def test_a_body_that_is_not_an_object_is_400_invalid_json(client: TestClient) -> None:
    response = client.post(batch_url(new_user_id()), json=[{"op": "create"}])
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


def test_a_batch_over_64_kib_is_413(client: TestClient) -> None:
    operations = [{"op": "create", "body": {"title": "x" * 200}}] * 100
    padding = {"op": "create", "body": {"title": "x", "description": "d" * 1000}}
    body = {"operations": operations[:40] + [padding] * 60}
    response = client.post(batch_url(new_user_id()), json=body)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_a_batch_that_is_not_json_is_415(client: TestClient) -> None:
    response = client.post(
        batch_url(new_user_id()),
        content=b"op=create",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def keyed(
    client: TestClient, user: str, key: str, operations: list[dict[str, Any]], **kw: Any
) -> Any:
    return client.post(
        batch_url(user),
        json={"operations": operations, **kw},
        headers={"Idempotency-Key": key},
    )


def test_idempotent_repeat_replays_the_whole_response(client: TestClient) -> None:
    user = new_user_id()
    operations = [
        {"op": "create", "ref": "first", "body": {"title": "a", "tags": ["x"]}},
        *creates(2),
        {"op": "patch", "target": "first", "body": {"title": ""}},  # fails: fields
    ]
    first = keyed(client, user, "k1", operations)
    again = keyed(client, user, "k1", operations)
    assert again.status_code == first.status_code == 200
    assert [r["status"] for r in first.json()["results"]] == [201, 201, 201, 400]
    assert again.content == first.content  # byte for byte, keys in the same order
    assert len(titles(client, user)) == 3
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotent_repeat_of_a_failed_atomic_batch_is_replayed(
    client: TestClient, engine: Engine
) -> None:
    user = new_user_id()
    operations = [*creates(1), {"op": "toggle", "id": 2**63 - 1}]
    first = keyed(client, user, "k2", operations, atomic=True)
    assert [r["status"] for r in first.json()["results"]] == [424, 404]
    again = keyed(client, user, "k2", operations, atomic=True)
    assert again.content == first.content
    assert titles(client, user) == []
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT response FROM idempotency_key WHERE user_id = :u"),
            {"u": user},
        ).scalar_one()
    assert [r["status"] for r in stored] == [424, 404]


def test_a_keyed_batch_whose_answer_names_a_nul_field_is_stored(
    client: TestClient,
) -> None:
    """An unknown field named with NUL is echoed in its operation's error; the
    answer is stored for the key and replayed, though jsonb cannot hold NUL."""
    user = new_user_id()
    operations = [{"op": "create", "body": {"title": "a", "\x00": 1}}, *creates(1)]
    first = keyed(client, user, "nul", operations)
    again = keyed(client, user, "nul", operations)
    assert first.status_code == again.status_code == 200, first.text
    failed = first.json()["results"][0]
    assert failed["status"] == 400
    assert failed["error"]["fields"] == [
        {"field": "\\u0000", "message": "Unknown field"}
    ]
    assert again.content == first.content
    assert titles(client, user) == ["t000"]


def test_same_key_different_batch_is_422(client: TestClient) -> None:
    user = new_user_id()
    keyed(client, user, "k3", creates(1))
    response = keyed(client, user, "k3", creates(2))
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    create = client.post(
        tasks_url(user), json={"title": "t000"}, headers={"Idempotency-Key": "k3"}
    )
    assert create.status_code == 422
    assert len(titles(client, user)) == 1


def test_a_key_still_in_flight_is_409(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request holds the key (its claim not yet committed)."""
    monkeypatch.setattr(idempotency, "IDEMPOTENCY_WAIT_MS", 200)
    user = new_user_id()
    with engine.connect() as holder:
        holder.execute(
            text(
                "INSERT INTO idempotency_key (user_id, key, request_hash) "
                "VALUES (:u, 'busy', 'x')"
            ),
            {"u": user},
        )
        response = keyed(client, user, "busy", creates(1))
        holder.rollback()
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"
    assert int(response.headers["retry-after"]) >= 1
    assert titles(client, user) == []


@pytest.mark.parametrize("atomic", [True, False])
def test_a_keyed_batch_waiting_on_a_locked_task_is_503_not_409(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch, atomic: bool
) -> None:
    """The key is free; the work waits on another transaction's row lock: the
    database is busy (503), no request with the key is in flight (not 409)."""
    monkeypatch.setattr(idempotency, "IDEMPOTENCY_WAIT_MS", 200)
    user = new_user_id()
    task = create_task(client, user, title="locked")
    patch = [{"op": "patch", "id": task["id"], "body": {"title": "x"}}]
    with engine.connect() as holder:
        holder.execute(
            text("SELECT 1 FROM task WHERE user_id = :u FOR UPDATE"), {"u": user}
        )
        response = keyed(client, user, "free", patch, atomic=atomic)
        holder.rollback()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert titles(client, user) == ["locked"]
    retried = keyed(client, user, "free", patch, atomic=atomic)  # the key was not kept
    assert retried.status_code == 200, retried.text
    assert titles(client, user) == ["x"]


def test_bad_idempotency_key_is_400(client: TestClient) -> None:
    response = keyed(client, new_user_id(), "", creates(1))
    assert response.status_code == 400


def test_an_etag_formed_from_a_synced_task_is_its_if_match(
    client: TestClient,
) -> None:
    """A task from a sync carries no ETag header; its documented form,
    `"<id>.<updated_at in µs since the epoch>"`, made from the task's own fields,
    is the If-Match of its next change, and goes stale when the task changes."""
    user = new_user_id()
    task_id = create_task(client, user)["id"]
    changes = client.get(tasks_url(user) + "/changes").json()
    [synced] = changes["tasks"]
    updated_at = datetime.fromisoformat(synced["updated_at"])
    micros = (updated_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    formed = f'"{task_id}.{micros}"'
    patch = {"op": "patch", "id": task_id, "if_match": formed, "body": {"title": "x"}}
    first = run_batch(client, user, [patch])
    assert first[0]["status"] == 200, first
    again = run_batch(client, user, [patch])
    assert again[0]["status"] == 412  # the task changed since
