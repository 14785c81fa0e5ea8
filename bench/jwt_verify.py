"""Microseconds per token verification, as the API does it (TokenVerifier.user_id).

    PYTHONPATH=backend .venv/bin/python bench/jwt_verify.py [ROUNDS]

HS256 uses the shared secret; EdDSA (Better Auth's default) and RS256/ES256 use a key
already in the JWKS cache, as every request after the first does."""

import asyncio
import sys
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from app.config import Settings
from app.edge.auth import TokenVerifier

SECRET = "bench-secret-" + "x" * 40


def _verifier() -> TokenVerifier:
    settings = Settings(
        _env_file=None,
        BETTER_AUTH_SECRET=SECRET,
        JWT_JWKS_URL="http://127.0.0.1:9/unused",
    )
    return TokenVerifier(settings)


def _measure(verifier: TokenVerifier, token: str, rounds: int) -> float:
    async def run() -> float:
        await verifier.user_id(token)  # warm
        started = time.perf_counter()
        for _ in range(rounds):
            await verifier.user_id(token)
        return (time.perf_counter() - started) / rounds * 1e6

    return asyncio.run(run())


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    verifier = _verifier()
    claims = {
        "sub": "bench-user",
        "exp": int(time.time()) + 3600,
        "iat": int(time.time()),
    }
    keys: dict[str, tuple[Any, Any]] = {
        "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
        "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "RS256": (rsa.generate_private_key(65537, 2048), RSAAlgorithm),
    }
    jwks = verifier.jwks
    assert jwks is not None
    rows = [("HS256", _measure(verifier, jwt.encode(claims, SECRET, "HS256"), rounds))]
    for alg, (private, algorithm) in keys.items():
        jwk = {
            **algorithm.to_jwk(private.public_key(), as_dict=True),
            "kid": alg,
            "alg": alg,
        }
        jwks._keys[alg] = PyJWK(jwk)
        jwks._fetched_at = time.monotonic()
        token = jwt.encode(claims, private, alg, headers={"kid": alg})
        rows.append((alg, _measure(verifier, token, max(rounds // 4, 100))))
    print("| algorithm | µs per verify |\n|---|---|")
    for alg, micros in rows:
        print(f"| {alg} | {micros:.1f} |")


if __name__ == "__main__":
    main()
