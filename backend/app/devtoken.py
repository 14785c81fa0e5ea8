"""`python -m app.devtoken USER [MINUTES]`: print an HS256 token for USER, signed
with BETTER_AUTH_SECRET / JWT_SECRET, for trying the API with curl. Development only."""

import sys
import time

import jwt

from app.config import load_settings


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 2:
        sys.exit("usage: python -m app.devtoken USER [MINUTES]")
    settings = load_settings()
    if settings.jwt_secret is None:
        sys.exit("set BETTER_AUTH_SECRET (or JWT_SECRET) first, e.g. in .env")
    if settings.ENVIRONMENT == "production":
        sys.exit("refusing to mint tokens with ENVIRONMENT=production")
    now = int(time.time())
    minutes = int(argv[1]) if len(argv) == 2 else 60
    claims: dict[str, object] = {"sub": argv[0], "iat": now, "exp": now + 60 * minutes}
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE[0]
    secret = settings.jwt_secret.get_secret_value()
    sys.stdout.write(jwt.encode(claims, secret, algorithm="HS256") + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
