"""Bearer JWT verification (CONTRACT C6): HS* with a shared secret, RS256/ES256/EdDSA
from a JWKS URL (Better Auth's JWT plugin). Pure CPU except a JWKS fetch, which runs
on a worker thread, is bounded by a timeout and happens at most once per interval."""

import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
from jwt import PyJWK

from app.config import Settings
from app.errors import AuthUnavailable, UnauthorizedError

logger = logging.getLogger("app.auth")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})  # never "oct": no HMAC key from a JWKS


class JwksCache:
    """Signing keys by `kid`. An unknown `kid` (or keys older than `ttl`) triggers a
    refresh, but never more than one per `min_refresh_interval`: a flood of made-up
    kids is not a flood of fetches. If a refresh fails, known keys keep working."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 900.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def cached(self, kid: str | None) -> PyJWK | None:
        """The key, if known and fresh: no I/O."""
        if time.monotonic() - self._fetched_at > self.ttl:
            return None
        return self._lookup(kid)

    def get(self, kid: str | None) -> PyJWK:
        """The key, refreshing the set first when allowed (blocking I/O)."""
        with self._lock:
            key = self.cached(kid)
            if (
                key is None
                and time.monotonic() - self._attempted_at >= self.min_refresh_interval
            ):
                self._refresh()
            key = self._lookup(kid)
        if key is None:
            if not self._keys:
                raise AuthUnavailable()
            raise UnauthorizedError(detail="Unknown signing key")
        return key

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            request = urllib.request.Request(
                self.url, headers={"Accept": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.loads(response.read(1_000_000))
            keys = {
                jwk.get("kid"): PyJWK(jwk)
                for jwk in document["keys"]
                if jwk.get("kty") in _KEY_TYPES and jwk.get("use", "sig") == "sig"
            }
        except Exception as exc:  # any failure: keep the keys we have
            logger.warning(
                "JWKS fetch from %s failed: %s", self.url, type(exc).__name__
            )
            return
        self._keys = keys
        self._fetched_at = time.monotonic()


@dataclass(frozen=True)
class _Verified:
    user_id: str
    expires: float
    not_before: float


class TokenVerifier:
    # Clients send the same token for many requests (Better Auth's live 15 minutes):
    # a token whose signature and claims were verified is remembered with its
    # validity window, so repeats skip the crypto but not the time checks.
    CACHE_SIZE = 10_000

    def __init__(self, settings: Settings) -> None:
        secret = settings.jwt_secret
        self._secret = secret.get_secret_value() if secret else None
        self._jwks = JwksCache(settings.JWT_JWKS_URL) if settings.JWT_JWKS_URL else None
        self._issuer = settings.JWT_ISSUER
        self._audience = settings.JWT_AUDIENCE
        self._user_claim = settings.JWT_USER_CLAIM
        self._leeway = settings.JWT_LEEWAY_SECONDS
        self._verified: dict[str, _Verified] = {}

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def user_id(self, token: str) -> str:
        """The verified token's user id, or UnauthorizedError."""
        known = self._verified.get(token)
        if known is not None:
            if known.not_before <= time.time() <= known.expires:
                return known.user_id
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthorizedError(detail="Malformed token") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm in HMAC_ALGORITHMS and self._secret is not None:
            key = self._secret
        elif algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str | None):
                raise UnauthorizedError(detail="Malformed token")
            jwk = self._jwks.cached(kid)
            if jwk is None:
                jwk = await anyio.to_thread.run_sync(self._jwks.get, kid)
            if jwk.algorithm_name != algorithm:  # the key decides, not the token
                raise UnauthorizedError(detail="Algorithm does not match the key")
            key = jwk.key
        else:
            raise UnauthorizedError(detail="Signing algorithm not accepted")
        return self._decode(token, key, algorithm)

    def _decode(self, token: str, key: Any, algorithm: str) -> str:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError(detail="Token expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError(detail="Token not yet valid") from None
        except jwt.PyJWTError:
            raise UnauthorizedError(detail="Invalid token") from None
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not user_id:
            raise UnauthorizedError(detail=f"Token has no '{self._user_claim}' claim")
        self._remember(token, user_id, claims)
        return user_id

    def _remember(self, token: str, user_id: str, claims: dict[str, Any]) -> None:
        if len(self._verified) >= self.CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        not_before = max(float(claims.get("nbf", 0)), float(claims.get("iat", 0)))
        self._verified[token] = _Verified(
            user_id,
            expires=float(claims["exp"]) + self._leeway,
            not_before=not_before - self._leeway,
        )
