"""C3: every error, whatever produced it, is the same JSON shape; nothing leaks."""

import gzip
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.conftest import ClientFactory
from tests.factories import create_task, new_user_id, tasks_url

ERROR_KEYS = {"error", "code", "detail", "fields", "request_id"}
DEAD_DATABASE = "postgresql://postgres@127.0.0.1:9/nowhere"


def assert_error(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert set(body) <= ERROR_KEYS
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["detail"], str)  # every error: frontends show body.detail
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]
    return body


def test_unknown_route_is_404_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/api/u1/tasks/1/nope"), 404, "not_found")


def test_missing_task_is_404_with_detail(client: TestClient) -> None:
    body = assert_error(client.get(tasks_url(new_user_id(), 1)), 404, "not_found")
    assert body["detail"] != body["error"]


def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    response = client.post(tasks_url("u1", 1))
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {
        "GET",
        "HEAD",
        "PUT",
        "PATCH",
        "DELETE",
    }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/batch", {"POST"}),
        ("HEAD", "/batch", {"POST"}),
        ("PUT", "/batch", {"POST"}),
        ("PATCH", "/batch", {"POST"}),
        ("DELETE", "/batch", {"POST"}),
        ("POST", "/changes", {"GET", "HEAD"}),
        ("PUT", "/changes", {"GET", "HEAD"}),
        ("PATCH", "/changes", {"GET", "HEAD"}),
        ("DELETE", "/changes", {"GET", "HEAD"}),
    ],
)
def test_a_named_path_is_never_read_as_a_task_id(
    client: TestClient, method: str, path: str, allow: set[str]
) -> None:
    """`/tasks/batch` and `/tasks/changes` answer a method they lack with 405
    naming their own methods, not with the 400 of a non-numeric `{id}`."""
    response = client.request(method, tasks_url("u1") + path, json={})
    assert response.status_code == 405, response.text
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allow
    if method != "HEAD":
        assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "body",
    [
        "{",
        '{"title": "x",}',
        "nul",
        '{"title": NaN',
        '{"title": "x", "priority": ' + "9" * 5000 + "}",  # an object all the same
        '{"title": "x", "tags": ' + "[" * 30_000 + "]" * 30_000 + "}",
    ],
)
def test_malformed_json_is_400_invalid_json(client: TestClient, body: str) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        content=body,
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 400, "invalid_json")
    assert error["error"] == "Request body is not readable JSON"


@pytest.mark.parametrize(
    "body", ["[]", '[{"title": "x"}]', '"title"', "42", "null", ""]
)
def test_non_object_body_is_400_invalid_json(client: TestClient, body: str) -> None:
    user = new_user_id()
    response = client.post(
        tasks_url(user), content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_json")
    assert error["error"] == "Request body must be a JSON object"
    assert client.get(tasks_url(user)).json() == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "", '{"title": "x", "priority": NaN}'),
        ("POST", "", '{"title": "x", "id": Infinity}'),  # a field ignored, even so
        ("PUT", "/{id}", '{"title": "x", "updated_at": -Infinity}'),
        ("PATCH", "/{id}/complete", '{"completed_at": NaN}'),
        ("POST", "/batch", '{"operations": [{"op": "create", "body": {"x": NaN}}]}'),
    ],
)
def test_nan_and_infinity_are_not_json(
    client: TestClient, method: str, path: str, body: str
) -> None:
    """RFC 8259 has no NaN or Infinity (Python's json reads them): the body is
    malformed JSON, whichever field holds them, and nothing changes."""
    user = new_user_id()
    task = create_task(client, user)
    response = client.request(
        method,
        tasks_url(user) + path.format(id=task["id"]),
        content=body,
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 400, "invalid_json")
    assert "NaN" in str(error["detail"])
    assert client.get(tasks_url(user)).json() == [task]


def test_nan_and_infinity_inside_strings_are_text(client: TestClient) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        content='{"title": "NaN", "description": "Infinity, -Infinity"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "NaN"


def test_non_object_body_on_update_is_400_invalid_json(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for method in ("PUT", "PATCH"):
        response = client.request(method, tasks_url(user, task["id"]), json=["x"])
        assert_error(response, 400, "invalid_json")
    response = client.patch(tasks_url(user, task["id"]) + "/complete", json=[])
    assert_error(response, 400, "invalid_json")
    assert client.get(tasks_url(user, task["id"])).json() == task


def test_body_over_64_kib_is_413(client: TestClient) -> None:
    user = new_user_id()
    body = json.dumps({"title": "x", "description": "d" * (64 * 1024)})
    response = client.post(
        tasks_url(user), content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")
    assert client.get(tasks_url(user)).json() == []


@pytest.mark.parametrize(
    ("size", "content_type", "status", "code"),
    [
        (64 * 1024 + 1, "application/json", 413, "payload_too_large"),
        (10, "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_a_body_on_a_delete_is_held_to_the_same_rules(
    client: TestClient, size: int, content_type: str, status: int, code: str
) -> None:
    """C2's 413 and 415 whatever the method: a DELETE (whose body is ignored)
    with a body over 64 KiB, or not JSON, deletes nothing."""
    user = new_user_id()
    task = create_task(client, user)
    for url in (tasks_url(user, task["id"]), tasks_url(user) + "?completed=true"):
        response = client.request(
            "DELETE", url, content=b"x" * size, headers={"content-type": content_type}
        )
        assert_error(response, status, code)
    assert client.get(tasks_url(user, task["id"])).json() == task


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{bad", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'"all"', "invalid_json"),
        (b'{"if_match": "nope"}', "validation_error"),  # no condition: a 400
    ],
)
def test_a_body_on_a_delete_is_an_empty_object_or_a_400(
    client: TestClient, body: bytes, code: str
) -> None:
    """C2: a body that is not a JSON object is a 400, and a route that takes
    none takes no field (as E6): a DELETE sent malformed JSON, or a condition in
    its body, deleted all the same (a trial). Nothing is deleted."""
    user = new_user_id()
    task = create_task(client, user)
    completed = client.patch(tasks_url(user, task["id"]) + "/complete").json()
    for url in (tasks_url(user, task["id"]), tasks_url(user) + "?completed=true"):
        response = client.request("DELETE", url, content=body)
        error = assert_error(response, 400, code)
        if code == "validation_error":
            assert error["fields"] == [
                {"field": "if_match", "message": "Unknown field"}
            ]
    assert client.get(tasks_url(user, task["id"])).json() == completed
    assert_error(client.request("GET", tasks_url(user), content=body), 400, code)


def test_an_empty_object_on_a_delete_is_no_body(client: TestClient) -> None:
    """`{}`, or read-only fields only (ignored, as everywhere), as E6 takes them."""
    user = new_user_id()
    for body in (b"{}", b'{"id": 1, "updated_at": "2026-01-01T00:00:00Z"}'):
        task = create_task(client, user)
        response = client.request("DELETE", tasks_url(user, task["id"]), content=body)
        assert response.status_code == 204
    assert client.get(tasks_url(user)).json() == []


def test_a_get_with_a_body_over_64_kib_is_413(client: TestClient) -> None:
    response = client.request(
        "GET", tasks_url(new_user_id()), content=b"{}" + b" " * (64 * 1024)
    )
    assert_error(response, 413, "payload_too_large")


def test_content_type_sent_twice_is_400(client: TestClient) -> None:
    """Which one describes the body? Two readers could each take another."""
    user = new_user_id()
    for types in (
        ["application/json", "text/plain"],
        ["text/plain", "application/json"],
    ):
        response = client.post(
            tasks_url(user),
            content=b'{"title": "x"}',
            headers=[("content-type", t) for t in types],
        )
        body = assert_error(response, 400, "validation_error")
        assert body["fields"] == [
            {"field": "Content-Type", "message": "must be sent once"}
        ]
    assert client.get(tasks_url(user)).json() == []


def test_body_of_exactly_64_kib_is_not_413(client: TestClient) -> None:
    body = json.dumps({"title": "x", "tags": []})
    body = body[:-1] + " " * (64 * 1024 - len(body)) + "}"
    assert len(body) == 64 * 1024
    response = client.post(
        tasks_url(new_user_id()),
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/jsonx",
    ],
)
def test_non_json_body_is_415(client: TestClient, content_type: str) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        content='{"title": "x"}',
        headers={"content-type": content_type},
    )
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_415_naming_the_accepted_encoding(
    client: TestClient, encoding: str
) -> None:
    """RFC 9110 15.5.16: a content coding the server does not decode is a 415,
    with Accept-Encoding saying what it takes; nothing is written."""
    user = new_user_id()
    response = client.post(
        tasks_url(user),
        content=gzip.compress(b'{"title": "x"}'),
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    body = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Encoding" in str(body["detail"])
    assert response.headers["accept-encoding"] == "identity"
    assert client.get(tasks_url(user)).json() == []


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_body_in_another_unicode_encoding_is_invalid_json(
    client: TestClient, codec: str
) -> None:
    """RFC 8259 8.1: JSON between systems is UTF-8 (Python's json.loads would
    have guessed UTF-16 and UTF-32 from the bytes)."""
    user = new_user_id()
    response = client.post(
        tasks_url(user),
        content='{"title": "x"}'.encode(codec),
        headers={"content-type": "application/json"},
    )
    body = assert_error(response, 400, "invalid_json")
    assert "UTF-8" in str(body["detail"])
    assert client.get(tasks_url(user)).json() == []


def test_an_identity_encoded_body_is_read(client: TestClient) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        json={"title": "x"},
        headers={"content-encoding": "identity"},
    )
    assert response.status_code == 201


def test_an_unknown_field_name_is_not_echoed_whole(client: TestClient) -> None:
    """A 60 KB field name would come back twice (field, detail): cut short."""
    response = client.post(
        tasks_url(new_user_id()), json={"x" * 60_000: 1, "title": "t"}
    )
    body = assert_error(response, 400, "validation_error")
    assert len(response.content) < 2_000
    assert isinstance(body["fields"], list)
    assert body["fields"][0]["field"].startswith("xxx")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json"]
)
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        content='{"title": "x"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 201


def test_validation_error_lists_every_field(client: TestClient) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        json={"title": "", "priority": "urgent", "tags": ["ok", ""]},
    )
    body = assert_error(response, 400, "validation_error")
    fields = body["fields"]
    assert isinstance(fields, list)
    assert {f["field"] for f in fields} == {"title", "priority", "tags[1]"}
    assert all(isinstance(f["message"], str) and f["message"] for f in fields)


def test_query_validation_errors_are_400_not_422(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id(), "x"))
    assert_error(response, 400, "validation_error")


@pytest.fixture
def failing_app(app: FastAPI) -> FastAPI:
    def explode() -> None:
        raise RuntimeError("SELECT secret FROM /etc/passwd")

    app.add_api_route("/explode", explode)
    return app


def test_unexpected_exception_is_500_without_internals(failing_app: FastAPI) -> None:
    with TestClient(failing_app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    assert_error(response, 500, "internal_error")
    for leak in ("SELECT", "passwd", "Traceback", "RuntimeError", ".py"):
        assert leak not in response.text


@pytest.fixture
def dead_database(make_client: ClientFactory) -> TestClient:
    return make_client(DATABASE_URL=SecretStr(DEAD_DATABASE))


def test_database_unreachable_is_503_with_retry_after(
    dead_database: TestClient,
) -> None:
    client = dead_database
    for response in (
        client.get(tasks_url("u1")),
        client.post(tasks_url("u1"), json={"title": "x"}),
    ):
        body = assert_error(response, 503, "database_unavailable")
        assert int(response.headers["retry-after"]) > 0
        assert "9" not in str(body["error"])  # no host, port or driver message


def test_health_reports_disconnected_database(dead_database: TestClient) -> None:
    response = dead_database.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["database"] == "disconnected"
    assert body["code"] == "database_unavailable"
    assert "error" in body


def test_health_reports_connected_database(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "database": "connected"}
