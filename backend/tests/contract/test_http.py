"""C2/C8: request ids, CORS, Swagger UI offline, and the OpenAPI document."""

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.openapi import document
from app.config import PROJECT_ROOT
from tests.factories import new_user_id, tasks_url

SPEC = PROJECT_ROOT / "specs" / "001-task-api" / "openapi.json"
FRONTEND = "http://localhost:3000"


def test_every_response_has_a_request_id(client: TestClient) -> None:
    for response in (
        client.get("/health"),
        client.get(tasks_url(new_user_id())),
        client.get("/nope"),
        client.post(tasks_url(new_user_id()), json=[]),
    ):
        assert len(response.headers["x-request-id"]) >= 16


def test_valid_incoming_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/health", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert response.headers["x-request-id"] == "abc.DEF_123-x"


@pytest.mark.parametrize(
    "incoming", [b"", b"x" * 129, b"bad id", b"a/b", "ünï".encode()]
)
def test_invalid_incoming_request_id_is_replaced(
    client: TestClient, incoming: bytes
) -> None:
    response = client.get("/health", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"].encode() not in (b"", incoming)


def test_cors_preflight_from_dev_origin_is_allowed(client: TestClient) -> None:
    response = client.options(
        tasks_url("u1"),
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == FRONTEND


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def test_cors_preflight_allows_every_method_the_api_serves(
    client: TestClient, method: str
) -> None:
    """HEAD too: a page reads a task's ETag with it (a preflight is needed as
    soon as it sends a token)."""
    response = client.options(
        f"{tasks_url('u1')}/1",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200, response.text
    assert method in response.headers["access-control-allow-methods"]


def test_cors_exposes_paging_and_etag_headers(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id()), headers={"Origin": FRONTEND})
    assert response.headers["access-control-allow-origin"] == FRONTEND
    exposed = {
        h.strip().lower()
        for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert exposed >= {
        "etag",
        "location",
        "link",
        "x-next-cursor",
        "x-request-id",
        "retry-after",
        "idempotent-replayed",
        "www-authenticate",  # a 401's cause, `error="invalid_token"` (a trial)
    }


def test_cors_unknown_origin_gets_no_allow_header(client: TestClient) -> None:
    response = client.get(
        tasks_url(new_user_id()), headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_swagger_ui_is_served_with_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text
    assert "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page.text
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert len(response.content) > 10_000


ASSET = "/docs/assets/swagger-ui.css"


@pytest.mark.parametrize("range_", ["bytes=abc", "items=0-1", "bytes=9-2", "bytes=,"])
def test_an_asset_ignores_a_range_it_cannot_read(
    client: TestClient, range_: str
) -> None:
    """RFC 9110: a Range header that is not a valid bytes range is ignored."""
    response = client.get(ASSET, headers={"Range": range_})
    assert response.status_code == 200
    assert response.content == client.get(ASSET).content


def test_an_asset_range_past_its_end_is_416_json(client: TestClient) -> None:
    size = len(client.get(ASSET).content)
    response = client.get(ASSET, headers={"Range": f"bytes={size}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"
    assert response.json()["code"] == "range_not_satisfiable"
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_an_asset_range_is_served(client: TestClient) -> None:
    response = client.get(ASSET, headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.content == client.get(ASSET).content[:10]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_an_asset_names_its_methods_on_a_405(client: TestClient, method: str) -> None:
    response = client.request(method, ASSET)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["detail"] == "This path supports GET, HEAD"


def test_openapi_document_matches_committed_spec() -> None:
    assert json.loads(document()) == json.loads(SPEC.read_text()), "run `make openapi`"


def test_openapi_documents_400_not_422_and_the_error_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            validation = operation["responses"].get("422", {}).get("description", "")
            assert "Idempotency-Key" in validation or not validation, (method, path)
            if path.startswith("/api/"):
                responses = operation["responses"]
                for status in ("400", "500", "503"):
                    assert status in responses, (method, path, status)
                assert "WWW-Authenticate" in responses["401"]["headers"]
                if method in ("post", "put", "patch", "delete"):  # a body may come
                    assert {"413", "415"} <= set(responses), (method, path)
                for status in ("409", "429", "503"):
                    if status in responses:
                        assert "Retry-After" in responses[status]["headers"], status
    assert set(spec["components"]["schemas"]["ErrorBody"]["required"]) == {
        "error",
        "code",
        "detail",
    }
    assert (
        "Location"
        in spec["paths"]["/api/{user_id}/tasks"]["post"]["responses"]["201"]["headers"]
    )


def test_openapi_batch_example_runs_and_its_bodies_are_typed(
    client: TestClient,
) -> None:
    """Swagger UI's "Try it out" starts from the example; generated clients type
    an operation's body from the document."""
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/api/{user_id}/tasks/batch"]["post"]["requestBody"]
    for example in content["content"]["application/json"]["examples"].values():
        response = client.post(
            f"{tasks_url(new_user_id())}/batch", json=example["value"]
        )
        assert response.status_code == 200
        assert {r["status"] for r in response.json()["results"]} <= {200, 201}
    body = spec["components"]["schemas"]["BatchOperation"]["properties"]["body"]
    refs = {b.get("$ref", "").rpartition("/")[2] for b in body["anyOf"]}
    assert (
        {"TaskCreate", "TaskReplace", "TaskPatch"}
        <= refs
        <= set(spec["components"]["schemas"]) | {""}
    )


def test_openapi_lets_a_whole_task_be_sent_back(client: TestClient) -> None:
    """The read-only fields the service ignores in a body are in the request
    schemas (readOnly), so a validator that forbids additional properties
    accepts a task read with GET and sent back with PUT."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    task_fields = set(schemas["TaskPublic"]["properties"])
    for name in ("TaskCreate", "TaskReplace", "TaskPatch"):
        schema = schemas[name]
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == task_fields, name
        for field in ("id", "user_id", "created_at", "updated_at", "completed_at"):
            assert schema["properties"][field]["readOnly"] is True


def test_openapi_documents_what_every_operation_may_answer(app: FastAPI) -> None:
    """Found by a generated client (an outside trial): X-Request-ID on every
    response and as an optional request header; 413 and 415 on every /api
    operation (a GET sent with a body is checked too); ETag on a 304; Retry-After
    on the health check's 503."""
    spec = app.openapi()
    for url, path in spec["paths"].items():
        for method, operation in path.items():
            names = [p["name"] for p in operation["parameters"]]
            assert "X-Request-ID" in names, (method, url)
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response["headers"], (method, url, status)
            if url.startswith("/api/"):
                assert {"413", "415"} <= set(operation["responses"]), (method, url)
    get_task = spec["paths"]["/api/{user_id}/tasks/{id}"]["get"]
    assert "ETag" in get_task["responses"]["304"]["headers"]
    assert (
        "Retry-After" in spec["paths"]["/health"]["get"]["responses"]["503"]["headers"]
    )


def test_openapi_parameters_are_never_null_and_ids_have_one_type(app: FastAPI) -> None:
    """Generated clients (an outside trial): a parameter documented as nullable
    was sent as the text `null` by orval (`since=null`: a 400 on a first sync);
    ids documented as int64 in paths and batches, as plain integers in tasks,
    were `bigint`s in hey-api, sent as strings (a 400)."""
    spec = app.openapi()
    for url, path in spec["paths"].items():
        for method, operation in path.items():
            for parameter in operation["parameters"]:
                text = json.dumps(parameter["schema"])
                assert '"null"' not in text, (method, url, parameter["name"])
    assert '"int64"' not in json.dumps(spec)
    task_id = spec["components"]["schemas"]["TaskPublic"]["properties"]["id"]
    path_id = spec["paths"]["/api/{user_id}/tasks/{id}"]["get"]["parameters"][1]
    assert path_id["schema"]["type"] == task_id["type"] == "integer"
