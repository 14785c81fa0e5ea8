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


def test_the_cache_holds_a_digest_and_no_user_id_longer_than_a_path_takes() -> None:
    """10,000 tokens of 8 KiB, signed for one user, held 80 MB (a trial): each is
    remembered by 32 bytes. A user id no path can hold (its requests are all
    403s) is not remembered at all."""
    check = verifier()
    exp = int(time.time()) + 60
    padded = jwt.encode({"sub": "u1", "exp": exp, "pad": "p" * 6000}, SECRET, "HS256")
    asyncio.run(check.user_id(padded))
    assert [len(key) for key in check._verified] == [32]
    assert check.known(padded) == "u1"
    long_id = jwt.encode({"sub": "u" * 129, "exp": exp}, SECRET, "HS256")
    assert asyncio.run(check.user_id(long_id)) == "u" * 129
    assert len(check._verified) == 1
