"""`python -m app.devtoken USER [MINUTES]`: print an HS256 token for USER, signed
with BETTER_AUTH_SECRET / JWT_SECRET, for trying the API with curl. Development only."""

import os
import re
import sys
import time
from collections.abc import Mapping

import jwt
from dotenv import dotenv_values

from app.config import load_settings
from app.schemas import USER_ID_PATTERN

_PRODUCTION = "production"


def _environment(values: Mapping[str, str | None]) -> set[str]:
    """ENVIRONMENT's value in `values`, named in any case."""
    return {
        value.strip().lower()
        for name, value in values.items()
        if name.upper() == "ENVIRONMENT" and value and value.strip()
    }


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 2 or (len(argv) == 2 and not argv[1].isdecimal()):
        sys.exit("usage: python -m app.devtoken USER [MINUTES]")
    if not re.fullmatch(USER_ID_PATTERN, argv[0]):
        sys.exit(f"{argv[0]!r} is not a user id: 1-128 of A-Z a-z 0-9 _ - . @ :")
    # Said before the settings are read, too: production's own requirements
    # (DATABASE_URL, …) were what it said, as if meeting them would let it mint
    # one. Names in any case, as the settings read them.
    try:
        dotenv = dotenv_values(".env")
    except (OSError, ValueError):  # load_settings says what is wrong with it
        dotenv = {}
    # The environment's value, else .env's: a blank one is unset, as the
    # settings read it.
    said = _environment(os.environ) or _environment(dotenv)
    settings = None if _PRODUCTION in said else load_settings()
    if settings is None or settings.ENVIRONMENT == _PRODUCTION:
        sys.exit("refusing to mint tokens with ENVIRONMENT=production")
    if settings.jwt_secret is None:
        sys.exit("set BETTER_AUTH_SECRET (or JWT_SECRET) first, e.g. in .env")
    now = int(time.time())
    minutes = int(argv[1]) if len(argv) == 2 else 60
    claims: dict[str, object] = {
        settings.JWT_USER_CLAIM: argv[0],
        "iat": now,
        "exp": now + 60 * minutes,
    }
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE[0]
    secret = settings.jwt_secret.get_secret_value()
    sys.stdout.write(jwt.encode(claims, secret, algorithm="HS256") + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
