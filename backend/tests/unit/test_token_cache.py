"""The verified-token cache skips the crypto for repeats, never the time checks."""

import asyncio
import time

import jwt
import pytest

from app.config import Settings
from app.edge.auth import TokenVerifier
from app.errors import UnauthorizedError

SECRET = "unit-secret-" + "s" * 32


def verifier() -> TokenVerifier:
    return TokenVerifier(
        Settings(_env_file=None, JWT_SECRET=SECRET, JWT_LEEWAY_SECONDS=0)
    )


def test_a_cached_token_still_expires() -> None:
    check = verifier()
    token = jwt.encode({"sub": "u1", "exp": time.time() + 1}, SECRET, algorithm="HS256")
    assert asyncio.run(check.user_id(token)) == "u1"
    time.sleep(1.2)
    with pytest.raises(UnauthorizedError):
        asyncio.run(check.user_id(token))


def test_repeats_skip_the_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    check = verifier()
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, SECRET, "HS256")
    asyncio.run(check.user_id(token))

    def no_crypto(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(jwt, "decode", no_crypto)
    assert asyncio.run(check.user_id(token)) == "u1"


def test_the_cache_is_bounded() -> None:
    check = verifier()
    check.CACHE_SIZE = 3
    for i in range(5):
        token = jwt.encode(
            {"sub": f"u{i}", "exp": int(time.time()) + 60}, SECRET, "HS256"
        )
        asyncio.run(check.user_id(token))
    assert len(check._verified) == 3
