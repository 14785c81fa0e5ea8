"""C6: bearer JWT authentication, shared secret and JWKS, 401 and 403."""

import base64
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.edge.auth import MAX_KID
from tests.conftest import ClientFactory
from tests.factories import new_user_id, tasks_url
from tests.jwt_helpers import (
    SECRET,
    JwksServer,
    SigningKey,
    claims,
    hs_token,
    new_key,
    signed_token,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {alg: new_key(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture
def jwks(keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [key.jwk() for key in keys.values()]
    with server.running():
        yield server


@pytest.fixture
def client(make_client: ClientFactory, jwks: JwksServer) -> TestClient:
    """Both key sources configured, as a Better Auth deployment may have."""
    return make_client(BETTER_AUTH_SECRET=_secret(SECRET), JWT_JWKS_URL=jwks.url)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: Any, says: str = "") -> None:
    """A 401 whose detail names the check that failed (`says`)."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == "unauthorized"
    assert says in body["detail"], body["detail"]


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_shared_secret_tokens_are_accepted(client: TestClient, algorithm: str) -> None:
    user = new_user_id()
    response = client.get(tasks_url(user), headers=bearer(hs_token(user, algorithm)))
    assert response.status_code == 200


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_jwks_tokens_are_accepted(
    client: TestClient, keys: dict[str, SigningKey], algorithm: str
) -> None:
    user = new_user_id()
    token = signed_token(keys[algorithm], user)
    created = client.post(tasks_url(user), json={"title": "x"}, headers=bearer(token))
    assert created.status_code == 201


def test_missing_token_is_401_without_error_code(client: TestClient) -> None:
    response = client.get(tasks_url(new_user_id()))
    assert_401(response)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "scheme", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "bearer  "]
)
def test_wrong_scheme_or_empty_bearer_is_401(client: TestClient, scheme: str) -> None:
    assert_401(client.get(tasks_url("u1"), headers={"Authorization": scheme}))


@pytest.mark.parametrize("token", ["abc", "a.b.c", "e30.e30.", "x" * 5000, "...."])
def test_malformed_token_is_401(client: TestClient, token: str) -> None:
    response = client.get(tasks_url("u1"), headers=bearer(token))
    assert_401(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": 1}, 256, None])
def test_a_token_whose_alg_is_not_a_string_is_401(client: TestClient, alg: Any) -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": alg}).encode()).rstrip(b"=")
    token = header.decode() + ".e30.AAAA"
    response = client.get(tasks_url("u1"), headers=bearer(token))
    assert_401(response)


def test_wrong_secret_is_401(client: TestClient) -> None:
    token = hs_token("u1", secret="another-secret-0123456789-abcdefghijk")
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_signature_by_another_key_with_a_known_kid_is_401(
    client: TestClient, keys: dict[str, SigningKey]
) -> None:
    impostor = new_key("EdDSA")
    token = signed_token(impostor, "u1", kid=keys["EdDSA"].kid)
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_tampered_payload_is_401(client: TestClient) -> None:
    header, _, signature = hs_token("u1").split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({"sub": "admin", "exp": int(time.time()) + 300}).encode()
    ).rstrip(b"=")
    token = f"{header}.{forged.decode()}.{signature}"
    assert_401(client.get(tasks_url("admin"), headers=bearer(token)))


def test_alg_none_is_401(client: TestClient) -> None:
    token = jwt.encode(
        {"sub": "u1", "exp": int(time.time()) + 300}, "", algorithm="none"
    )
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_hs_token_signed_with_the_public_key_is_401(
    make_client: ClientFactory, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    """Algorithm confusion: the RSA public key (PEM) used as an HMAC secret."""
    client = make_client(JWT_JWKS_URL=jwks.url)  # no shared secret configured
    public_pem = (
        keys["RS256"]
        .private.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    header = {"alg": "HS256", "kid": keys["RS256"].kid, "typ": "JWT"}
    payload = {"sub": "u1", "exp": int(time.time()) + 300}
    signing = jwt.api_jws.PyJWS()
    signing._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    token = signing.encode(
        json.dumps(payload).encode(), public_pem, algorithm="HS256", headers=header
    )
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_rs_token_cannot_use_an_hmac_key_from_the_jwks(
    make_client: ClientFactory, jwks: JwksServer
) -> None:
    secret = b"s" * 32
    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    jwks.keys.append({"kty": "oct", "kid": "sym", "k": k, "alg": "HS256"})
    client = make_client(JWT_JWKS_URL=jwks.url)
    token = jwt.encode(
        {"sub": "u1", "exp": int(time.time()) + 300},
        secret,
        algorithm="HS256",
        headers={"kid": "sym"},
    )
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_expired_token_is_401_and_leeway_is_honoured(client: TestClient) -> None:
    now = int(time.time())
    assert_401(
        client.get(tasks_url("u1"), headers=bearer(hs_token("u1", exp=now - 60)))
    )
    fresh_enough = hs_token("u1", exp=now - 10)  # inside the default 30 s leeway
    assert client.get(tasks_url("u1"), headers=bearer(fresh_enough)).status_code == 200


def test_leeway_is_configurable(make_client: ClientFactory) -> None:
    client = make_client(BETTER_AUTH_SECRET=_secret(SECRET), JWT_LEEWAY_SECONDS=0)
    token = hs_token("u1", exp=int(time.time()) - 5)
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_from_the_future_is_401(client: TestClient, claim: str) -> None:
    token = jwt.encode(claims("u1", **{claim: int(time.time()) + 600}), SECRET)
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def test_token_without_exp_is_401(client: TestClient) -> None:
    assert_401(client.get(tasks_url("u1"), headers=bearer(hs_token("u1", exp=None))))


@pytest.mark.parametrize("sub", [None, "", 123, ["u1"]])
def test_token_without_a_string_user_claim_is_401(client: TestClient, sub: Any) -> None:
    token = (
        jwt.encode(
            {
                k: v
                for k, v in {"sub": sub, "exp": int(time.time()) + 300}.items()
                if v is not None
            },
            SECRET,
            algorithm="HS256",
        )
        if not isinstance(sub, int | list)
        else _unchecked_hs_token(sub)
    )
    assert_401(client.get(tasks_url("u1"), headers=bearer(token)))


def _unchecked_hs_token(sub: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + 300}
    return jwt.api_jws.encode(json.dumps(payload).encode(), SECRET, algorithm="HS256")


def test_user_claim_name_is_configurable(make_client: ClientFactory) -> None:
    client = make_client(BETTER_AUTH_SECRET=_secret(SECRET), JWT_USER_CLAIM="user_id")
    token = hs_token("ignored", user_id="u1")
    assert client.get(tasks_url("u1"), headers=bearer(token)).status_code == 200
    assert_401(client.get(tasks_url("ignored"), headers=bearer(hs_token("ignored"))))


def test_issuer_and_audience_are_checked_when_configured(
    make_client: ClientFactory,
) -> None:
    client = make_client(
        BETTER_AUTH_SECRET=_secret(SECRET),
        JWT_ISSUER="https://auth.example",
        JWT_AUDIENCE=["https://app.example"],
    )
    good = {"iss": "https://auth.example", "aud": "https://app.example"}
    assert (
        client.get(tasks_url("u1"), headers=bearer(hs_token("u1", **good))).status_code
        == 200
    )
    for bad in (
        {**good, "iss": "https://evil.example"},
        {**good, "aud": "https://evil.example"},
        {"aud": "https://app.example"},
        {"iss": "https://auth.example"},
    ):
        assert_401(client.get(tasks_url("u1"), headers=bearer(hs_token("u1", **bad))))


@pytest.mark.parametrize(
    ("configured", "carried"),
    [
        ("https://auth.example/", "https://auth.example"),
        ("http://a:3000", "http://a:3000/"),
    ],
)
def test_a_url_issuer_matches_with_or_without_its_trailing_slash(
    make_client: ClientFactory, configured: str, carried: str
) -> None:
    """Better Auth writes its base URL without one, whichever way it was set."""
    client = make_client(BETTER_AUTH_SECRET=_secret(SECRET), JWT_ISSUER=configured)
    token = hs_token("u1", iss=carried)
    assert client.get(tasks_url("u1"), headers=bearer(token)).status_code == 200
    other = hs_token("u1", iss=carried.rstrip("/") + "x")
    assert_401(client.get(tasks_url("u1"), headers=bearer(other)))


def test_audience_is_not_held_against_a_token_when_none_is_configured(
    client: TestClient,
) -> None:
    token = hs_token(
        "u1", aud="http://localhost:3000"
    )  # Better Auth sets aud to its URL
    assert client.get(tasks_url("u1"), headers=bearer(token)).status_code == 200


def test_other_users_token_is_403_and_writes_nothing(client: TestClient) -> None:
    owner, intruder = new_user_id(), new_user_id()
    response = client.post(
        tasks_url(owner), json={"title": "x"}, headers=bearer(hs_token(intruder))
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert client.get(tasks_url(owner), headers=bearer(hs_token(owner))).json() == []


def test_403_happens_before_any_database_work(make_client: ClientFactory) -> None:
    client = make_client(
        JWT_SECRET=_secret(SECRET),
        DATABASE_URL=SecretStr("postgresql://postgres@127.0.0.1:9/none"),
    )
    response = client.get(tasks_url("owner"), headers=bearer(hs_token("intruder")))
    assert response.status_code == 403  # not 503: the database was never asked


def test_auth_is_checked_before_path_validation(client: TestClient) -> None:
    assert_401(client.get("/api/bad!id/tasks/notanumber"))


@pytest.mark.parametrize("path", ["/health", "/docs", "/openapi.json"])
def test_health_and_docs_need_no_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_unknown_kid_flood_costs_one_fetch_and_no_401_until_the_next(
    client: TestClient, jwks: JwksServer
) -> None:
    """The first made-up kid is checked against a fresh fetch (401: the key set has
    no such key); until the next fetch is allowed, unknown kids are 503 with
    Retry-After, never a 401 a frontend would take as "sign the user out"."""
    impostor = new_key("ES256")
    first = signed_token(impostor, "u1", kid="made-up-0")
    assert_401(client.get(tasks_url("u1"), headers=bearer(first)), "kid")
    for i in range(1, 30):
        token = signed_token(impostor, "u1", kid=f"made-up-{i}")
        response = client.get(tasks_url("u1"), headers=bearer(token))
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "auth_unavailable"
        assert 1 <= int(response.headers["retry-after"]) <= 2
    assert jwks.fetches == 1


def _poll(client: TestClient, token: str, seconds: float) -> list[int]:
    statuses, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append(client.get(tasks_url("u1"), headers=bearer(token)).status_code)
        time.sleep(0.1)  # a page polling, well within the failed-auth budget
    return statuses


@pytest.mark.parametrize(
    "kid", ["other-instance", None, "k" * (MAX_KID + 1)], ids=["kid", "none", "long"]
)
def test_a_kid_long_missing_from_the_key_set_is_401_between_fetches(
    client: TestClient, jwks: JwksServer, kid: str | None
) -> None:
    """A token from another (or a reset) key set, which a page polls with: once a
    fetch begun `absent_after` after its first request still lacks the key, it is
    a 401 every time, not a 503 telling the page to retry it forever. So too for
    a token without a `kid` (the key set has several keys), or with one longer
    than any provider's."""
    cache = client.app.state.verifier.jwks  # type: ignore[attr-defined]
    cache.min_refresh_interval, cache.absent_after = 0.5, 0.3  # polled faster
    key = new_key("EdDSA")
    foreign = (
        signed_token(key, "u1", kid=kid)
        if kid is not None
        else jwt.encode(claims("u1"), key.private, algorithm=key.algorithm)
    )
    statuses = _poll(client, foreign, 1.5)
    assert set(statuses) <= {401, 503}
    assert statuses[-5:] == [401] * 5


def test_a_key_the_key_set_lists_late_is_served_once_it_does(
    client: TestClient, jwks: JwksServer
) -> None:
    """A key set seen through a cache that lags behind its provider: tokens with
    the new key are refused meanwhile, but the key is fetched and served as soon
    as the set lists it (its kid once taken as absent stops no fetch)."""
    cache = client.app.state.verifier.jwks  # type: ignore[attr-defined]
    cache.min_refresh_interval, cache.absent_after = 0.5, 0.3
    rotated = new_key("RS256")
    token = signed_token(rotated, "u1")
    assert _poll(client, token, 1.2)[-3:] == [401] * 3  # taken as absent by now
    jwks.keys = [*jwks.keys, rotated.jwk()]
    assert 200 in _poll(client, token, 1.5)


def test_rotated_key_is_picked_up_on_an_unknown_kid(
    client: TestClient, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    user = new_user_id()
    first = signed_token(keys["EdDSA"], user)
    assert client.get(tasks_url(user), headers=bearer(first)).status_code == 200
    rotated = new_key("EdDSA")
    jwks.keys = [rotated.jwk()]  # the provider rotates: the old key is gone
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    verifier.jwks.min_refresh_interval = 0  # the interval is tested below
    token = signed_token(rotated, user)
    assert client.get(tasks_url(user), headers=bearer(token)).status_code == 200
    assert jwks.fetches == 2
    # A key removed from the set is revoked: a token it signed is refused, though
    # it was accepted (and remembered) before the removal (an outside trial).
    assert_401(client.get(tasks_url(user), headers=bearer(first)), "kid")


def test_a_key_removed_from_the_set_revokes_tokens_already_seen(
    client: TestClient, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    """An operator removes a leaked key and the next fetch lists the set without
    it: a far-future token it signed, accepted before, is a 401 from then on; the
    tokens of the keys still listed are verified again, once, and accepted."""
    user = new_user_id()
    leaked = signed_token(keys["EdDSA"], user, exp=253402300000)
    kept = signed_token(keys["ES256"], user)
    for token in (leaked, kept):
        assert client.get(tasks_url(user), headers=bearer(token)).status_code == 200
    jwks.keys = [key.jwk() for name, key in keys.items() if name != "EdDSA"]
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    verifier.jwks.min_refresh_interval = 0
    other = signed_token(new_key("EdDSA"), user, kid="not-listed")
    assert_401(client.get(tasks_url(user), headers=bearer(other)), "kid")  # a fetch
    assert jwks.fetches == 2
    assert_401(client.get(tasks_url(user), headers=bearer(leaked)), "kid")
    assert verifier.known(kept) is None  # remembered from an earlier key set
    assert client.get(tasks_url(user), headers=bearer(kept)).status_code == 200
    assert verifier.known(kept) == user


def test_key_published_just_after_a_fetch_is_503_then_accepted(
    client: TestClient, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    """Key rotation without signing anyone out: a token signed with a key published
    a moment after the last fetch is told to retry, then accepted."""
    user = new_user_id()
    rotated = new_key("RS256")  # made first: it takes up to 0.1 s
    token = signed_token(rotated, user)
    assert client.get(
        tasks_url(user), headers=bearer(signed_token(keys["RS256"], user))
    ).is_success
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    verifier.jwks.min_refresh_interval = 0.5
    jwks.keys = [*jwks.keys, rotated.jwk()]
    response = client.get(tasks_url(user), headers=bearer(token))
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "auth_unavailable"
    time.sleep(int(response.headers["retry-after"]))
    assert client.get(tasks_url(user), headers=bearer(token)).status_code == 200
    assert jwks.fetches == 2


def test_concurrent_requests_for_a_new_key_share_one_fetch(
    client: TestClient, jwks: JwksServer, keys: dict[str, SigningKey]
) -> None:
    user = new_user_id()
    assert client.get(
        tasks_url(user), headers=bearer(signed_token(keys["ES256"], user))
    ).is_success
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    verifier.jwks.min_refresh_interval = 0
    rotated = new_key("ES256")
    jwks.keys = [rotated.jwk()]
    jwks.delay = 0.3  # every request arrives while the one fetch is in flight
    tokens = [signed_token(rotated, user, jti=str(i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda t: client.get(tasks_url(user), headers=bearer(t)).status_code,
                tokens,
            )
        )
    assert statuses == [200] * 8
    assert jwks.fetches == 2


def test_unreachable_jwks_gives_503_quickly_not_a_hang(
    make_client: ClientFactory, keys: dict[str, SigningKey]
) -> None:
    client = make_client(JWT_JWKS_URL="http://127.0.0.1:9/jwks")
    started = time.monotonic()
    response = client.get(
        tasks_url("u1"), headers=bearer(signed_token(keys["RS256"], "u1"))
    )
    assert response.status_code == 503
    assert response.json()["code"] == "auth_unavailable"
    assert "retry-after" in response.headers
    assert time.monotonic() - started < 5


def test_openapi_has_bearer_scheme_and_documents_401_403(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(
        s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values()
    )
    for path, operations in spec["paths"].items():
        if path.startswith("/api/"):
            for operation in operations.values():
                assert {"401", "403"} <= set(operation["responses"])
                assert operation["security"]


LOCALHOST = "http://localhost:3000"


@pytest.fixture
def strict_client(make_client: ClientFactory) -> TestClient:
    """Issuer and audience configured, as for a Better Auth on localhost:3000."""
    return make_client(
        BETTER_AUTH_SECRET=_secret(SECRET),
        JWT_ISSUER=LOCALHOST,
        JWT_AUDIENCE=[LOCALHOST],
    )


@pytest.mark.parametrize(
    ("token", "says", "reason"),
    [
        (lambda: hs_token("u1", secret="x" * 40), "signature", "signature"),
        (lambda: hs_token("u1", exp=int(time.time()) - 600), "expired", "expired"),
        (
            lambda: hs_token("u1", iss="http://127.0.0.1:3000", aud=LOCALHOST),
            "issuer",
            "issuer",
        ),
        (lambda: hs_token("u1", aud=LOCALHOST), "issuer", "issuer"),
        (
            lambda: hs_token("u1", iss=LOCALHOST, aud="http://127.0.0.1:3000"),
            "audience",
            "audience",
        ),
        (lambda: "abc", "not a JWT", "malformed"),
        (lambda: hs_token("u1", iss=LOCALHOST, aud=LOCALHOST)[:-3], "", "signature"),
    ],
)
def test_401_says_which_check_failed_and_logs_it(
    strict_client: TestClient,
    caplog: pytest.LogCaptureFixture,
    token: Any,
    says: str,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="app.auth")
    response = strict_client.get(tasks_url("u1"), headers=bearer(token()))
    assert_401(response, says)
    assert says in response.headers["www-authenticate"]
    [logged] = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert logged.reason == reason  # type: ignore[attr-defined]
    assert logged.request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]


def test_issuer_mismatch_logs_both_issuers(
    strict_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.auth")
    token = hs_token("u1", iss="http://127.0.0.1:3000", aud=LOCALHOST)
    strict_client.get(tasks_url("u1"), headers=bearer(token))
    [logged] = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert logged.token_iss == "http://127.0.0.1:3000"  # type: ignore[attr-defined]
    assert logged.expected_iss == f"{LOCALHOST}, {LOCALHOST}/"  # type: ignore[attr-defined]


def test_every_auth_error_carries_detail(client: TestClient) -> None:
    owner = new_user_id()
    for response in (
        client.get(tasks_url(owner)),  # no token
        client.get(tasks_url(owner), headers={"Authorization": "Basic dTpw"}),
        client.get(tasks_url(owner), headers=bearer(hs_token(new_user_id()))),  # 403
    ):
        assert response.status_code in (401, 403)
        assert response.json()["detail"]


def test_two_authorization_headers_are_refused_not_resolved_by_order(
    client: TestClient,
) -> None:
    user = new_user_id()
    response = client.get(
        tasks_url(user),
        headers=[
            ("Authorization", f"Bearer {hs_token(user)}"),
            ("Authorization", f"Bearer {hs_token(new_user_id())}"),
        ],
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["fields"] == [
        {"field": "Authorization", "message": "must be sent once"}
    ]


def test_an_undecodable_token_is_told_so_without_the_librarys_words(
    client: TestClient,
) -> None:
    """An unencoded payload (`b64: false`, RFC 7797): PyJWT's message is about its
    own API (`detached_payload`), so the client gets a plain one."""
    token = jwt.encode(claims("u1"), SECRET, algorithm="HS256", headers={"b64": False})
    response = client.get(tasks_url("u1"), headers=bearer(token))
    assert_401(response, "The token is not a well-formed JWT")
    assert "detached" not in response.text


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", 5), ("iat", "x"), ("nbf", "x"), ("exp", True), ("nbf", True)],
)
def test_a_claim_of_the_wrong_type_is_named(
    client: TestClient, claim: str, value: object
) -> None:
    token = jwt.encode({**claims("u1"), claim: value}, SECRET, algorithm="HS256")
    response = client.get(tasks_url("u1"), headers=bearer(token))
    says = {"sub": "Subject", "exp": "exp is not a plausible time"}.get(claim, claim)
    assert_401(response, says)


@pytest.fixture
def secret_only_client(make_client: ClientFactory) -> TestClient:
    return make_client(BETTER_AUTH_SECRET=_secret(SECRET))


def test_a_key_pair_token_where_only_the_secret_is_set_says_what_is_accepted(
    secret_only_client: TestClient,
    keys: dict[str, SigningKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Better Auth's JWT plugin signs with EdDSA: with only the shared secret set,
    its tokens got "not accepted" and nothing more (a trial). The 401 names the
    token's algorithm and those accepted; the log says what to set."""
    client = secret_only_client
    caplog.set_level(logging.INFO, logger="app.auth")
    user = new_user_id()
    response = client.get(
        tasks_url(user), headers=bearer(signed_token(keys["EdDSA"], user))
    )
    assert_401(
        response, "(EdDSA) is not accepted; this server accepts HS256, HS384, HS512"
    )
    [logged] = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert logged.reason == "algorithm"  # type: ignore[attr-defined]
    assert "JWT_JWKS_URL" in logged.hint  # type: ignore[attr-defined]
    made_up = hs_token(user, algorithm="HS256").split(".", 1)[1]
    header = base64.urlsafe_b64encode(b'{"alg":"XX99"}').rstrip(b"=").decode()
    response = client.get(tasks_url(user), headers=bearer(f"{header}.{made_up}"))
    assert_401(response, "The token's signing algorithm is not accepted")  # not echoed
