"""Real Better Auth tokens (CONTRACT C6). The pinned `better-auth` npm library (its JWT
plugin, backend/tests/betterauth/server.mjs, on PostgreSQL through pg) signs users
up and issues JWTs; the Task API, started with JWT_JWKS_URL at that server's
/api/auth/jwks and JWT_ISSUER / JWT_AUDIENCE at its base URL (what the plugin puts in
iss and aud), accepts them with `sub` (Better Auth's user id) as the path's user id,
refuses them on another user's path (403) and tampered (401), and follows a key
rotation. The library is pinned in backend/tests/betterauth/package-lock.json."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import fresh_database
from tests.server import BACKEND, free_port, running_server, stop

BETTER_AUTH = BACKEND / "tests" / "betterauth"


@dataclass(frozen=True)
class Stack:
    auth: str  # Better Auth's base URL: also the tokens' iss and aud
    api: str


@dataclass(frozen=True)
class User:
    id: str
    cookie: str  # the Better Auth session cookie, "name=value"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """`npm ci` from the committed lock file, again only when the lock changes."""
    npm = shutil.which("npm")
    assert npm, "the Better Auth check needs Node.js 20.19+ with npm"
    lock = (BETTER_AUTH / "package-lock.json").read_bytes()
    modules = BETTER_AUTH / "node_modules"
    stamp = modules / f".ci-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not stamp.exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=BETTER_AUTH,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}{result.stderr}"
        stamp.touch()
    return modules


@contextmanager
def better_auth_server(algorithm: str | None = None) -> Iterator[str]:
    """server.mjs on a free port and a fresh database; yields its base URL once its
    JWKS answers."""
    node = shutil.which("node")
    assert node, "the Better Auth check needs Node.js 20.19+"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "JWT_ALG": algorithm or ""}
    with (
        fresh_database() as database_url,
        tempfile.TemporaryFile() as output,
    ):
        process = subprocess.Popen(
            [node, "server.mjs", str(port), database_url],
            cwd=BETTER_AUTH,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(
                        f"better-auth server did not come up: {output.read().decode()}"
                    )
                try:
                    jwks = httpx.get(f"{base_url}/api/auth/jwks", timeout=2)
                    if jwks.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield base_url
        finally:
            stop(process, timeout=10)


@contextmanager
def stack(database_url: str, algorithm: str | None = None) -> Iterator[Stack]:
    with (
        better_auth_server(algorithm) as auth,
        running_server(
            database_url,
            JWT_JWKS_URL=f"{auth}/api/auth/jwks",
            JWT_ISSUER=auth,
            JWT_AUDIENCE=auth,
        ) as api,
    ):
        yield Stack(auth, api)


@pytest.fixture(scope="module")
def default_stack(
    node_modules: Path, database_url: str, engine: object
) -> Iterator[Stack]:
    """Better Auth with the JWT plugin's defaults (EdDSA, Ed25519)."""
    with stack(database_url) as running:
        yield running


def sign_up(auth: str, name: str) -> User:
    """POST /api/auth/sign-up/email, as a Better Auth client does."""
    response = httpx.post(
        f"{auth}/api/auth/sign-up/email",
        json={
            "email": f"{name}-{uuid.uuid4().hex[:12]}@example.com",
            "password": "correct-horse-battery-staple",
            "name": name,
        },
        headers={"Origin": auth},
    )
    assert response.status_code == 200, response.text
    cookies = [
        header.split(";", 1)[0]
        for header in response.headers.get_list("set-cookie")
        if header.startswith("better-auth.session_token=")
    ]
    assert len(cookies) == 1, response.headers
    user_id = response.json()["user"]["id"]
    assert isinstance(user_id, str)
    assert user_id
    return User(user_id, cookies[0])


def token(auth: str, user: User) -> str:
    """GET /api/auth/token with the session cookie: the JWT plugin's token."""
    response = httpx.get(f"{auth}/api/auth/token", headers={"Cookie": user.cookie})
    assert response.status_code == 200, response.text
    value = response.json()["token"]
    assert isinstance(value, str)
    return value


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def claims(value: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(value, options={"verify_signature": False})
    return decoded


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_better_auth_token_is_accepted_with_sub_as_the_user(
    default_stack: Stack,
) -> None:
    auth, api = default_stack.auth, default_stack.api
    alice = sign_up(auth, "alice")
    alice_token = token(auth, alice)
    assert jwt.get_unverified_header(alice_token)["alg"] == "EdDSA"
    issued = claims(alice_token)
    assert issued["sub"] == alice.id
    assert (issued["iss"], issued["aud"]) == (auth, auth)

    tasks = f"{api}/api/{alice.id}/tasks"
    with httpx.Client(headers=bearer(alice_token), timeout=10) as client:
        created = client.post(tasks, json={"title": "signed in with Better Auth"})
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["user_id"] == alice.id
        listed = client.get(tasks)
        assert listed.status_code == 200, listed.text
        assert [t["id"] for t in listed.json()] == [task["id"]]
        fetched = client.get(f"{tasks}/{task['id']}")
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["title"] == "signed in with Better Auth"
        patched = client.patch(f"{tasks}/{task['id']}", json={"completed": True})
        assert patched.status_code == 200, patched.text
        assert patched.json()["completed"] is True
        deleted = client.delete(f"{tasks}/{task['id']}")
        assert deleted.status_code == 204, deleted.text
        assert client.get(f"{tasks}/{task['id']}").status_code == 404
        assert client.get(tasks).json() == []


def test_the_set_auth_jwt_header_of_get_session_is_accepted(
    default_stack: Stack,
) -> None:
    auth, api = default_stack.auth, default_stack.api
    user = sign_up(auth, "carol")
    session = httpx.get(f"{auth}/api/auth/get-session", headers={"Cookie": user.cookie})
    assert session.status_code == 200, session.text
    header_token = session.headers["set-auth-jwt"]
    assert claims(header_token)["sub"] == user.id
    response = httpx.get(f"{api}/api/{user.id}/tasks", headers=bearer(header_token))
    assert response.status_code == 200, response.text


def test_a_token_for_one_user_is_refused_on_another_users_tasks(
    default_stack: Stack,
) -> None:
    auth, api = default_stack.auth, default_stack.api
    alice, bob = sign_up(auth, "alice"), sign_up(auth, "bob")
    alice_token, bob_token = token(auth, alice), token(auth, bob)
    bobs = httpx.post(
        f"{api}/api/{bob.id}/tasks", json={"title": "bob's"}, headers=bearer(bob_token)
    )
    assert bobs.status_code == 201, bobs.text
    for path in ("tasks", f"tasks/{bobs.json()['id']}"):
        refused = httpx.get(f"{api}/api/{bob.id}/{path}", headers=bearer(alice_token))
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
    refused = httpx.post(
        f"{api}/api/{alice.id}/tasks", json={"title": "x"}, headers=bearer(bob_token)
    )
    assert refused.status_code == 403, refused.text


def test_a_tampered_token_is_refused(default_stack: Stack) -> None:
    auth, api = default_stack.auth, default_stack.api
    alice, bob = sign_up(auth, "alice"), sign_up(auth, "bob")
    header, payload, signature = token(auth, alice).split(".")
    # Alice's token with its sub changed to Bob's, her signature kept.
    forged_claims = {**json.loads(unb64url(payload)), "sub": bob.id, "id": bob.id}
    forged = f"{header}.{b64url(json.dumps(forged_claims).encode())}.{signature}"
    # Alice's token with one bit of its signature flipped.
    flipped = bytearray(unb64url(signature))
    flipped[10] ^= 0x01
    corrupted = f"{header}.{payload}.{b64url(bytes(flipped))}"
    for value, user in ((forged, bob), (corrupted, alice)):
        response = httpx.get(f"{api}/api/{user.id}/tasks", headers=bearer(value))
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "The token's signature is not valid"


def test_a_rotated_signing_key_is_picked_up(default_stack: Stack) -> None:
    auth, api = default_stack.auth, default_stack.api
    user = sign_up(auth, "dave")
    tasks = f"{api}/api/{user.id}/tasks"
    old_token = token(auth, user)
    assert httpx.get(tasks, headers=bearer(old_token)).status_code == 200
    rotated = httpx.post(f"{auth}/test/rotate-key")
    assert rotated.status_code == 200, rotated.text
    new_token = token(auth, user)
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid == rotated.json()["kid"]
    assert new_kid != jwt.get_unverified_header(old_token)["kid"]
    # The new kid makes the API fetch the key set again; within 2 s of its last
    # fetch it answers 503 with Retry-After (never 401), and then accepts the token.
    for _ in range(3):
        response = httpx.get(tasks, headers=bearer(new_token))
        if response.status_code != 503:
            break
        assert response.json()["code"] == "auth_unavailable"
        time.sleep(float(response.headers["Retry-After"]))
    assert response.status_code == 200, response.text
    # The old key is still published (Better Auth's grace period): its tokens too.
    assert httpx.get(tasks, headers=bearer(old_token)).status_code == 200


@pytest.mark.parametrize("algorithm", ["ES256", "ES512", "RS256", "PS256"])
def test_better_auth_tokens_of_other_key_algorithms_are_accepted(
    node_modules: Path, database_url: str, engine: object, algorithm: str
) -> None:
    """The plugin's jwks.keyPairConfig set to each of its other algorithms."""
    with stack(database_url, algorithm) as running:
        user = sign_up(running.auth, "erin")
        user_token = token(running.auth, user)
        assert jwt.get_unverified_header(user_token)["alg"] == algorithm
        response = httpx.post(
            f"{running.api}/api/{user.id}/tasks",
            json={"title": algorithm},
            headers=bearer(user_token),
        )
        assert response.status_code == 201, response.text
        assert response.json()["user_id"] == user.id
