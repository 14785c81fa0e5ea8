"""Hostile input: no input gives a 500, a key server in trouble stays local, failed
authentications are limited per address, /metrics is not public in production, and
blank-looking titles are blank. Every loop is bounded to seconds."""

import base64
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.conftest import ClientFactory
from tests.factories import create_task, metric, new_user_id, tasks_url
from tests.jwt_helpers import SECRET, JwksServer, hs_token, new_key, signed_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_hs_token(payload: bytes) -> str:
    """A validly signed token whose payload is exactly these bytes."""
    return jwt.api_jws.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture
def authed(make_client: ClientFactory) -> TestClient:
    return make_client(JWT_SECRET=SecretStr(SECRET))


# -- No 500 from any input ---------------------------------------------------------


def test_if_match_with_5000_digits_is_the_ordinary_412(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for tag in (f'"{task["id"]}.{"4" * 5000}"', f'"{task["id"]}.\xb2"'):  # ², latin-1
        for method in ("PATCH", "PUT"):
            response = client.request(
                method,
                tasks_url(user, task["id"]),
                json={"title": "x"},
                headers={"If-Match": tag.encode("latin-1")},
            )
            assert response.status_code == 412, response.text
            assert response.json()["code"] == "precondition_failed"
        response = client.delete(
            tasks_url(user, task["id"]), headers={"If-Match": tag.encode("latin-1")}
        )
        assert response.status_code == 412
    assert client.get(tasks_url(user, task["id"])).json() == task


@pytest.mark.parametrize(
    "claims",
    [
        f'"exp": {10**400}',
        '"exp": 1e400',
        f'"exp": {2**70}',
        f'"exp": {int(time.time()) + 300}, "nbf": {-(10**400)}',
        f'"exp": {int(time.time()) + 300}, "iat": {-(10**400)}',
        f'"exp": {int(time.time()) + 300}, "iat": -1e400',
        f'"exp": "{int(time.time()) + 300}"',
        '"exp": ' + "9" * 5000,
    ],
)
def test_validly_signed_token_with_absurd_times_is_401(
    authed: TestClient, claims: str
) -> None:
    token = raw_hs_token(f'{{"sub": "u1", {claims}}}'.encode())
    response = authed.get(tasks_url("u1"), headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"


def test_a_token_over_8_kib_is_refused_unparsed(authed: TestClient) -> None:
    """A validly signed token padded past the cap: refused for its size alone."""
    token = hs_token("u1", padding="p" * 8192)
    assert len(token) > 8 * 1024
    response = authed.get(tasks_url("u1"), headers=bearer(token))
    assert response.status_code == 401, response.text
    assert "longer than" in response.json()["detail"]
    normal = authed.get(tasks_url("u1"), headers=bearer(hs_token("u1")))
    assert normal.status_code == 200


UNDECODABLE = {
    "invalid UTF-8": b'{"title": "caf\xe9"}',
    "60k-deep arrays": b"[" * 60_000,
    "deep objects": b'{"a":' * 12_000,
    "5,000-digit number": b'{"title": "x", "n": ' + b"7" * 5000 + b"}",
    "deep inside an object": b'{"title": "x", "tags": ' + b"[" * 30_000,
}


@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_undecodable_body_is_400_invalid_json(client: TestClient, body: bytes) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for method, url in (
        ("POST", tasks_url(user)),
        ("PUT", tasks_url(user, task["id"])),
        ("PATCH", tasks_url(user, task["id"])),
        ("PATCH", tasks_url(user, task["id"]) + "/complete"),
    ):
        response = client.request(
            method, url, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["code"] == "invalid_json"
        assert error["detail"]
    assert client.get(tasks_url(user)).json() == [task]


# -- Blank-looking titles --------------------------------------------------------

INVISIBLE = ["\u200b", "\u2060\ufeff", " \u200b\u200c\u200d ", "\u3164", "\u202e"]


@pytest.mark.parametrize("title", INVISIBLE)
def test_title_of_invisible_characters_is_rejected_like_an_empty_one(
    client: TestClient, title: str
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for method, url in (
        ("POST", tasks_url(user)),
        ("PUT", tasks_url(user, task["id"])),
        ("PATCH", tasks_url(user, task["id"])),
    ):
        response = client.request(method, url, json={"title": title})
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["code"] == "validation_error"
        assert [f["field"] for f in body["fields"]] == ["title"]
    assert client.get(tasks_url(user)).json() == [task]


def test_tag_of_invisible_characters_is_rejected(client: TestClient) -> None:
    response = client.post(
        tasks_url(new_user_id()), json={"title": "x", "tags": ["ok", "\u200b"]}
    )
    assert response.status_code == 400
    assert [f["field"] for f in response.json()["fields"]] == ["tags[1]"]


def test_title_with_a_visible_character_among_invisible_ones_is_kept(
    client: TestClient,
) -> None:
    task = create_task(client, new_user_id(), title="\u200bMilk\u2060")
    assert task["title"] == "\u200bMilk\u2060"


# -- Failed authentications are limited per client address -------------------------


@pytest.fixture
def guarded(make_client: ClientFactory, one_rate_window: None) -> TestClient:
    return make_client(JWT_SECRET=SecretStr(SECRET), AUTH_FAILURE_LIMIT="5/minute")


def forged(user: str = "u1") -> str:
    return hs_token(user, secret="not-the-secret-" + "x" * 32)


def test_failed_authentications_are_limited_per_address(
    guarded: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.auth")
    user = new_user_id()
    known = hs_token(user, jti="known")
    assert guarded.get(tasks_url(user), headers=bearer(known)).status_code == 200
    counted = 'rate_limited_total{reason="auth_failures"}'
    before = metric(guarded, counted)
    statuses = [
        guarded.get(tasks_url(user), headers=bearer(forged(user))).status_code
        for _ in range(8)
    ]
    assert statuses == [401] * 5 + [429] * 3
    assert metric(guarded, counted) == before + 3
    # Past the budget a failure is not logged again: no log line per forged token.
    assert caplog.messages.count("authentication failed") == 5
    refused = guarded.get(tasks_url(user), headers=bearer(forged(user)))
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert "failed authentications" in body["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Genuine tokens are served from that address all the same: one verified
    # before, a refreshed one, another user's first.
    assert guarded.get(tasks_url(user), headers=bearer(known)).status_code == 200
    fresh = hs_token(user, jti="refreshed")
    assert guarded.get(tasks_url(user), headers=bearer(fresh)).status_code == 200
    other = new_user_id()
    assert (
        guarded.get(tasks_url(other), headers=bearer(hs_token(other))).status_code
        == 200
    )


def test_missing_and_expired_tokens_do_not_count_as_failures(
    guarded: TestClient,
) -> None:
    expired = hs_token("u1", exp=int(time.time()) - 600)
    for _ in range(10):
        assert guarded.get(tasks_url("u1")).status_code == 401
        assert guarded.get(tasks_url("u1"), headers=bearer(expired)).status_code == 401
    assert guarded.get(tasks_url("u1"), headers=bearer(forged())).status_code == 401


def test_failed_authentication_limit_can_be_turned_off(
    make_client: ClientFactory,
) -> None:
    client = make_client(JWT_SECRET=SecretStr(SECRET), AUTH_FAILURE_LIMIT=None)
    statuses = {
        client.get(tasks_url("u1"), headers=bearer(forged())).status_code
        for _ in range(40)
    }
    assert statuses == {401}


def test_failed_authentications_are_counted_across_instances_with_redis(
    make_client: ClientFactory,
) -> None:
    """Two instances on one Redis share the budget (each TestClient is one
    instance; both see the same client address). Needs Redis on 127.0.0.1:6379,
    as the scale-out tests do: never skipped."""
    database = f"redis://127.0.0.1:6379/{uuid.uuid4().int % 16}"
    env = {
        "JWT_SECRET": SecretStr(SECRET),
        "AUTH_FAILURE_LIMIT": "4/hour",
        "REDIS_URL": SecretStr(database),
    }
    first, second = make_client(**env), make_client(**env)
    keys = redis.Redis.from_url(database)
    keys.delete(*keys.keys("ratelimit:authfail:*"), "ratelimit:none")
    try:
        for client in (first, second, first, second):
            assert (
                client.get(tasks_url("u1"), headers=bearer(forged())).status_code == 401
            )
        assert first.get(tasks_url("u1"), headers=bearer(forged())).status_code == 429
        assert second.get(tasks_url("u1"), headers=bearer(forged())).status_code == 429
    finally:
        keys.delete(*keys.keys("ratelimit:authfail:*"), "ratelimit:none")
        keys.close()


# -- /metrics in production ----------------------------------------------------------

METRICS_TOKEN = "metrics-" + "m" * 32


def production(make_client: ClientFactory, **env: Any) -> TestClient:
    return make_client(
        ENVIRONMENT="production",
        JWT_SECRET=SecretStr(SECRET),
        CURSOR_SECRET=SecretStr("c" * 32),
        **env,
    )


def test_metrics_are_absent_in_production_without_a_token(
    make_client: ClientFactory,
) -> None:
    response = production(make_client).get("/metrics")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "python_info" not in response.text


def test_metrics_need_the_metrics_token_when_one_is_set(
    make_client: ClientFactory,
) -> None:
    client = production(make_client, METRICS_TOKEN=SecretStr(METRICS_TOKEN))
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers=bearer("m" * 40))
    assert wrong.status_code == 401
    assert wrong.json()["detail"]
    assert client.get("/metrics", headers=bearer(hs_token("u1"))).status_code == 401
    scraped = client.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert scraped.status_code == 200
    assert "http_requests_total" in scraped.text


# -- Key-server trouble stays local --------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    with server.running():
        yield server


@pytest.fixture
def jwks_client(make_client: ClientFactory, jwks: JwksServer) -> TestClient:
    """Built before the test body: building an app resets the logging handlers,
    caplog's included. The key set is fetched on first use, so tests fill it."""
    return make_client(JWT_JWKS_URL=jwks.url)


def _jwks_cache(client: TestClient) -> Any:
    return client.app.state.verifier.jwks  # type: ignore[attr-defined]


def _x25519_jwk() -> dict[str, str]:
    """An encryption key (ECDH) as some key sets publish it: OKP, no `use`."""
    raw = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "X25519", "x": x, "kid": "ecdh"}


def test_unusable_key_in_the_jwks_is_skipped_and_the_others_work(
    jwks_client: TestClient, jwks: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key("EdDSA")
    jwks.keys = [_x25519_jwk(), key.jwk(), {"kty": "RSA", "kid": "broken", "n": "x"}]
    caplog.set_level(logging.WARNING, logger="app.auth")
    user = new_user_id()
    token = signed_token(key, user)
    response = jwks_client.get(tasks_url(user), headers=bearer(token))
    assert response.status_code == 200, response.text
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert any("'ecdh'" in line for line in skipped)


def test_cached_key_never_waits_for_a_slow_jwks_under_an_unknown_kid_flood(
    jwks_client: TestClient, jwks: JwksServer
) -> None:
    client = jwks_client
    key = new_key("ES256")
    jwks.keys = [key.jwk()]
    user = new_user_id()
    assert client.get(
        tasks_url(user), headers=bearer(signed_token(key, user))
    ).is_success
    cache = _jwks_cache(client)
    cache.ttl = 0  # every request now finds the keys due for a refresh
    cache.min_refresh_interval = 0
    jwks.delay = 1.0  # and the key server is slow
    impostor = new_key("ES256")
    deadline = time.monotonic() + 2.5

    def flood(i: int) -> set[int]:
        seen = set()
        while time.monotonic() < deadline:
            token = signed_token(impostor, user, kid=f"random-{i}-{time.monotonic()}")
            seen.add(client.get(tasks_url(user), headers=bearer(token)).status_code)
        return seen

    with ThreadPoolExecutor(24) as pool:
        flooding = [pool.submit(flood, i) for i in range(20)]
        time.sleep(0.2)
        slowest = 0.0
        for i in range(10):
            token = signed_token(key, user, jti=str(i))  # new: never in the cache
            started = time.monotonic()
            response = client.get(tasks_url(user), headers=bearer(token))
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.1)
        answers = set().union(*(f.result() for f in flooding))
    assert slowest < 0.5, f"a request with a cached key waited {slowest:.2f} s"
    assert answers <= {401, 503}
    assert jwks.fetches <= 5  # 1 + at most one per (1 s) fetch, whatever the flood


def test_hung_jwks_gives_503_within_the_timeout_with_one_fetch_for_all(
    jwks_client: TestClient, jwks: JwksServer
) -> None:
    key = new_key("RS256")
    jwks.keys = [key.jwk()]
    jwks.delay = 3.0
    cache = _jwks_cache(jwks_client)
    cache.timeout = 0.5
    cache.min_refresh_interval = 0

    def attempt(i: int) -> tuple[int, str]:
        token = signed_token(key, "u1", jti=str(i))
        response = jwks_client.get(tasks_url("u1"), headers=bearer(token))
        return response.status_code, response.json()["code"]

    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        answers = set(pool.map(attempt, range(10)))
    assert answers == {(503, "auth_unavailable")}
    assert time.monotonic() - started < 2
    assert jwks.fetches == 1


def test_jwks_without_a_usable_key_keeps_the_known_keys(
    jwks_client: TestClient, jwks: JwksServer
) -> None:
    client = jwks_client
    key = new_key("EdDSA")
    jwks.keys = [key.jwk()]
    user = new_user_id()
    assert client.get(
        tasks_url(user), headers=bearer(signed_token(key, user))
    ).is_success
    _jwks_cache(client).min_refresh_interval = 0
    jwks.keys = [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]  # nothing usable
    stranger = signed_token(new_key("EdDSA"), user)
    assert client.get(tasks_url(user), headers=bearer(stranger)).status_code == 503
    again = signed_token(key, user, jti="again")
    assert client.get(tasks_url(user), headers=bearer(again)).status_code == 200
