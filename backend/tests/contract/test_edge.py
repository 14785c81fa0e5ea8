"""The HTTP edge as frontends, proxies and generated clients meet it (specs/009):
CORS with credentials and the headers browsers send, the trailing-slash path served
without a redirect, bodies without Content-Type, HEAD, and an OpenAPI document that
generates clean clients."""

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.conftest import ClientFactory
from tests.factories import create_task, new_user_id, tasks_url
from tests.jwt_helpers import SECRET, hs_token

FRONTEND = "http://localhost:3000"


def _preflight(client: TestClient, headers: str, origin: str = FRONTEND) -> Any:
    return client.options(
        tasks_url("u1"),
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


# --- CORS ------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "cache-control",
        "x-requested-with",
        "pragma",
        "idempotency-key",
        "if-match",
        "traceparent",
        "baggage",
        "sentry-trace",
    ],
)
def test_preflight_accepts_headers_browsers_and_clients_send(
    client: TestClient, header: str
) -> None:
    response = _preflight(client, f"authorization, content-type, {header}")
    assert response.status_code == 200, response.text
    allowed = response.headers["access-control-allow-headers"].lower()
    assert header in allowed


def test_preflight_with_an_unlisted_header_is_refused(client: TestClient) -> None:
    assert _preflight(client, "x-something-else").status_code == 400


@pytest.mark.parametrize("headers", ["authorization", "x-something-else"])
def test_preflights_carry_a_request_id_like_every_response(
    client: TestClient, headers: str
) -> None:
    """Accepted (200) or refused (400): answered by the CORS layer, outside the
    one that gives other responses theirs."""
    response = client.options(
        tasks_url("u1"),
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
            "X-Request-ID": "preflight-1",
        },
    )
    assert response.headers["x-request-id"] == "preflight-1"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("origin", "method", "headers", "refused"),
    [
        ("https://evil.example", "POST", "authorization", {"origin"}),
        (FRONTEND, "TRACE", "authorization", {"method"}),
        (FRONTEND, "POST", "authorization, x-something-else", {"headers"}),
        ("https://evil.example", "TRACE", "x-other", {"origin", "method", "headers"}),
    ],
)
def test_refused_preflight_is_a_json_error_naming_what_was_refused(
    client: TestClient, origin: str, method: str, headers: str, refused: set[str]
) -> None:
    response = client.options(
        tasks_url("u1"),
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "access-control-allow-methods" in response.headers  # as Starlette's
    body = response.json()
    assert set(body) == {"error", "code", "detail", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["code"] == "cors_not_allowed"
    assert body["error"]
    named = {kind for kind in ("origin", "method", "headers") if kind in body["detail"]}
    assert named == refused
    # And where to allow it (a newcomer's trial: only "origin" was said).
    if "origin" in refused:
        assert f"origin {origin} (not in CORS_ORIGINS)" in body["detail"]
    if "headers" in refused:
        assert "CORS_ALLOW_HEADERS" in body["detail"]


def test_allowed_headers_are_configurable(make_client: ClientFactory) -> None:
    client = make_client(CORS_ALLOW_HEADERS=["Authorization", "X-Custom"])
    assert _preflight(client, "x-custom").status_code == 200
    assert _preflight(client, "cache-control").status_code == 400


def test_credentials_are_off_unless_configured(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id()), headers={"Origin": FRONTEND})
    assert "access-control-allow-credentials" not in response.headers


def test_credentials_on_echo_the_origin_with_allow_credentials(
    make_client: ClientFactory,
) -> None:
    client = make_client(CORS_ORIGINS=[FRONTEND], CORS_ALLOW_CREDENTIALS=True)
    preflight = _preflight(client, "authorization, cache-control")
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-origin"] == FRONTEND
    response = client.get(tasks_url(new_user_id()), headers={"Origin": FRONTEND})
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert "origin" in response.headers["vary"].lower()
    other = client.get(tasks_url(new_user_id()), headers={"Origin": "https://x.test"})
    assert "access-control-allow-origin" not in other.headers


# --- no redirects --------------------------------------------------------------


def test_trailing_slash_is_served_without_a_redirect(client: TestClient) -> None:
    user = new_user_id()
    created = client.post(tasks_url(user) + "/", json={"title": "slash"})
    assert created.status_code == 201
    assert created.headers["location"] == tasks_url(user, created.json()["id"])
    listed = client.get(tasks_url(user) + "/", follow_redirects=False)
    assert listed.status_code == 200
    assert [t["title"] for t in listed.json()] == ["slash"]
    one = client.get(tasks_url(user, created.json()["id"]) + "/")
    assert one.status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "%2Fbatch"),
        ("PATCH", "%2F{id}%2Fcomplete"),
        ("GET", "%2F{id}"),
        ("GET", "%2f{id}"),
        ("GET", "/{id}//"),
    ],
)
def test_an_encoded_slash_is_not_a_path_separator(
    client: TestClient, method: str, suffix: str
) -> None:
    """RFC 3986 2.2: `%2F` is data, not a `/`; so `tasks%2Fbatch` is no route
    (a proxy rule on `*/tasks/batch` must not be passed by encoding it)."""
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user) + suffix.format(id=task["id"])
    response = client.request(method, url, json={"operations": []})
    assert response.status_code == 404, response.text
    assert client.get(tasks_url(user, task["id"])).json() == task


def test_other_encoded_characters_are_decoded(client: TestClient) -> None:
    user = "a@b." + new_user_id()
    created = client.post(f"/api/{user.replace('@', '%40')}/tasks", json={"title": "x"})
    assert created.status_code == 201
    assert created.json()["user_id"] == user


def test_trailing_slash_keeps_query_and_paging_links(client: TestClient) -> None:
    user = new_user_id()
    for title in ("a", "b"):
        create_task(client, user, title=title)
    page = client.get(tasks_url(user) + "/?limit=1&sort=title")
    assert [t["title"] for t in page.json()] == ["a"]
    assert page.headers["link"].startswith(f"<{tasks_url(user)}?")


@pytest.mark.parametrize("path", ["/health/", "/docs/", "/openapi.json/"])
def test_every_route_is_served_with_a_trailing_slash(
    client: TestClient, path: str
) -> None:
    """Not only /api/…/: a load balancer's health check configured as `/health/`
    got a 404, which it reads as an instance that is down."""
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 200, response.text
    assert response.content == client.get(path[:-1]).content


@pytest.mark.parametrize("path", ["/health/", "/docs/", "/api/u1/nope/"])
def test_no_path_answers_with_a_redirect(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert not response.is_redirect, response.headers
    assert "location" not in response.headers


def test_trailing_slash_needs_a_token_like_any_path(
    make_client: ClientFactory,
) -> None:
    client = make_client(BETTER_AUTH_SECRET=SecretStr(SECRET))
    user = new_user_id()
    bare = client.get(tasks_url(user) + "/", follow_redirects=False)
    assert bare.status_code == 401
    authed = client.get(
        tasks_url(user) + "/", headers={"Authorization": f"Bearer {hs_token(user)}"}
    )
    assert authed.status_code == 200


# --- bodies as clients send them ----------------------------------------------


def test_body_without_content_type_is_read_as_json(client: TestClient) -> None:
    user = new_user_id()
    created = client.post(tasks_url(user), content=b'{"title": "no type"}')
    assert created.status_code == 201, created.text
    assert "content-type" not in created.request.headers
    url = tasks_url(user, created.json()["id"])
    assert client.put(url, content=b'{"title": "put"}').json()["title"] == "put"
    assert client.patch(url, content=b'{"priority": "high"}').json()["priority"] == (
        "high"
    )
    assert client.patch(url + "/complete", content=b"{}").json()["completed"] is True


def test_body_without_content_type_is_still_validated(client: TestClient) -> None:
    response = client.post(tasks_url(new_user_id()), content=b"[1, 2]")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    unknown = client.post(tasks_url(new_user_id()), content=b'{"title": "x", "z": 1}')
    assert unknown.json()["fields"] == [{"field": "z", "message": "Unknown field"}]


def test_body_with_another_content_type_is_still_415(client: TestClient) -> None:
    response = client.post(
        tasks_url(new_user_id()),
        content=b'{"title": "x"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415


# --- HEAD -------------------------------------------------------------------------


def test_head_health_is_200_without_a_body(client: TestClient) -> None:
    response = client.head("/health")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "application/json"


def test_head_task_has_the_get_headers_and_no_body(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    get, head = client.get(url), client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("etag", "content-type", "content-length", "x-content-type-options"):
        assert head.headers[name] == get.headers[name]
    etag = get.headers["etag"]
    assert client.head(url, headers={"If-None-Match": etag}).status_code == 304


def test_head_list_carries_the_paging_headers(client: TestClient) -> None:
    user = new_user_id()
    for _ in range(2):
        create_task(client, user)
    get = client.get(tasks_url(user) + "?limit=1")
    head = client.head(tasks_url(user) + "?limit=1")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["x-next-cursor"] == get.headers["x-next-cursor"]
    assert head.headers["content-length"] == get.headers["content-length"]


def test_head_of_a_missing_task_is_404_without_a_body(client: TestClient) -> None:
    response = client.head(tasks_url(new_user_id(), 1))
    assert response.status_code == 404
    assert response.content == b""


def test_head_needs_a_token_like_get(make_client: ClientFactory) -> None:
    client = make_client(BETTER_AUTH_SECRET=SecretStr(SECRET))
    assert client.head(tasks_url(new_user_id())).status_code == 401
    assert client.head("/health").status_code == 200


def test_head_on_a_path_without_get_is_405(client: TestClient) -> None:
    response = client.head("/openapi.json")
    assert response.status_code == 200
    response = client.request("HEAD", tasks_url("u1") + "/1/complete")
    assert response.status_code == 405
    assert "HEAD" not in response.headers["allow"]


def test_head_and_slash_requests_are_logged_with_their_route(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user_id()
    with caplog.at_level(logging.INFO, logger="app.request"):
        client.head(tasks_url(user, 1))
        client.get(tasks_url(user) + "/")
    logged = [
        (r.method, r.path)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "app.request"
    ]
    assert logged == [
        ("HEAD", "/api/{user_id}/tasks/{id}"),
        ("GET", "/api/{user_id}/tasks"),
    ]


def test_an_error_is_logged_with_its_code(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """From the access line alone, a 404 not_found from a 405, a 503 lock timeout
    from a 503 overloaded (an operator trial: the status was all it said)."""
    user = new_user_id()
    task = create_task(client, user)
    with caplog.at_level(logging.INFO, logger="app.request"):
        client.get(tasks_url(user, task["id"]))
        client.get(tasks_url(user, task["id"] + 1))
        client.post(
            tasks_url(user), content="{", headers={"content-type": "application/json"}
        )
    lines = [r for r in caplog.records if r.name == "app.request"][-3:]
    codes = [getattr(r, "code", None) for r in lines]
    assert codes == [None, "not_found", "invalid_json"]
    assert not any(hasattr(r, "detail") for r in lines)  # a 4xx's is the client's


# --- the OpenAPI document for generated clients ---------------------------------


def _operations(app: FastAPI) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
    }


def test_task_paths_name_the_id_as_the_contract_does(app: FastAPI) -> None:
    paths = set(app.openapi()["paths"])
    assert "/api/{user_id}/tasks/{id}" in paths
    assert "/api/{user_id}/tasks/{id}/complete" in paths
    assert not any("task_id" in path for path in paths)


def test_operation_ids_are_the_handler_names(app: FastAPI) -> None:
    ids = {key: op["operationId"] for key, op in _operations(app).items()}
    assert ids["GET /api/{user_id}/tasks"] == "list_tasks"
    assert ids["POST /api/{user_id}/tasks"] == "create_task"
    assert ids["GET /api/{user_id}/tasks/{id}"] == "get_task"
    assert ids["PATCH /api/{user_id}/tasks/{id}/complete"] == "toggle_task"
    assert ids["GET /health"] == "health"
    assert len(set(ids.values())) == len(ids)


def test_toggle_body_is_optional_and_never_null(app: FastAPI) -> None:
    toggle = _operations(app)["PATCH /api/{user_id}/tasks/{id}/complete"]
    body = toggle["requestBody"]
    assert not body.get("required", False)
    schema = body["content"]["application/json"]["schema"]
    assert schema["$ref"] == "#/components/schemas/ToggleBody"
    assert "anyOf" not in schema


def test_malformed_id_names_the_field_id(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id(), "abc"))
    assert response.status_code == 400
    assert [f["field"] for f in response.json()["fields"]] == ["id"]
