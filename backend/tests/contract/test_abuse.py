"""C7 RATE_LIMIT and the security headers every response carries."""

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from tests.conftest import ClientFactory
from tests.factories import create_task, metric, new_user_id, tasks_url
from tests.jwt_helpers import SECRET, hs_token


@pytest.mark.usefixtures("one_rate_window")
def test_over_the_limit_is_429_with_retry_after(make_client: ClientFactory) -> None:
    client = make_client(RATE_LIMIT="3/minute")
    user = new_user_id()
    counted = 'rate_limited_total{reason="rate_limit"}'
    before = metric(client, counted)
    statuses = [client.get(tasks_url(user)).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert metric(client, counted) == before + 2
    response = client.get(tasks_url(user))
    body = response.json()
    assert body["code"] == "rate_limited"
    assert set(body) <= {"error", "code", "detail", "request_id"}
    assert 1 <= int(response.headers["retry-after"]) <= 60


@pytest.mark.usefixtures("one_rate_window")
def test_limit_is_per_authenticated_user(make_client: ClientFactory) -> None:
    client = make_client(RATE_LIMIT="2/minute", JWT_SECRET=SecretStr(SECRET))
    alice, bob = new_user_id(), new_user_id()
    for _ in range(2):
        assert client.get(tasks_url(alice), headers=_bearer(alice)).status_code == 200
    assert client.get(tasks_url(alice), headers=_bearer(alice)).status_code == 429
    assert client.get(tasks_url(bob), headers=_bearer(bob)).status_code == 200


def test_health_is_never_rate_limited(make_client: ClientFactory) -> None:
    client = make_client(RATE_LIMIT="1/minute")
    assert all(client.get("/health").status_code == 200 for _ in range(5))


def test_redis_outage_counts_per_process(
    make_client: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counted in the process's memory meanwhile (allowing everything let anyone
    guess tokens for the outage: a re-trial), and visible: a warning saying why
    (not only the exception's class) and a counter of the checks so counted (a
    wrong REDIS_URL turned the limit off unseen: an outside trial)."""
    redis = SecretStr("redis://127.0.0.1:9/0")
    client = make_client(RATE_LIMIT="2/day", REDIS_URL=redis)  # no window ends
    user = new_user_id()
    counted = metric(client, "rate_limiter_errors_total")
    statuses = [client.get(tasks_url(user)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert metric(client, "rate_limiter_errors_total") == counted + 3
    [warning] = [
        line for line in capsys.readouterr().err.splitlines() if "app.ratelimit" in line
    ]
    assert "connecting to 127.0.0.1:9" in warning


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "0/minute", "-1/second"])
def test_malformed_rate_limit_is_a_config_error(value: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="RATE_LIMIT"):
        Settings(_env_file=None, RATE_LIMIT=value)


def _bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {hs_token(user)}"}


def test_security_headers_on_every_response(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for response in (
        client.get(tasks_url(user, task["id"])),
        client.get("/nope"),
        client.get("/health"),
        client.post(
            tasks_url(user), content="x", headers={"content-type": "text/plain"}
        ),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers
    for path in (tasks_url(user), "/health", "/metrics", "/nope"):
        assert client.get(path).headers["cache-control"] == "no-store", path
    # The documentation's pages and assets may be cached.
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css"):
        assert "cache-control" not in client.get(path).headers, path


def test_metrics_expose_requests_pool_and_errors(client: TestClient) -> None:
    client.get(tasks_url(new_user_id()))
    text = client.get("/metrics").text
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "db_pool_connections_in_use",
        "db_pool_timeouts_total",
        "db_errors_total",
    ):
        assert name in text
    assert 'route="/api/{user_id}/tasks"' in text


def test_requests_answered_before_routing_are_counted_under_their_route(
    client: TestClient,
) -> None:
    """A 415 or 413 (answered before routing), a wrong method, and the pages the
    framework serves itself are counted (and logged) under their route template,
    not `<unmatched>` (a trial); a path no route has stays `<unmatched>`."""
    tasks = tasks_url(new_user_id())
    plain = {"Content-Type": "text/plain"}
    assert client.post(tasks, content=b"x", headers=plain).status_code == 415
    assert client.put(tasks, json={}).status_code == 405
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    text = client.get("/metrics").text
    for labels in (
        'method="POST",route="/api/{user_id}/tasks",status="415"',
        'method="PUT",route="/api/{user_id}/tasks",status="405"',
        'method="GET",route="/openapi.json",status="200"',
        'method="GET",route="/docs/assets",status="200"',
        'method="GET",route="<unmatched>",status="404"',
    ):
        assert f"http_requests_total{{{labels}}}" in text, labels
