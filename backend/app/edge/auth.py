"""Bearer JWT verification (CONTRACT C6): HS* with a shared secret, EdDSA, ES*, RS*
and PS* from a JWKS URL (Better Auth's JWT plugin). Pure CPU except a JWKS fetch,
which runs on a thread of its own, single-flight, bounded by a timeout, and never
holds up a request whose key is already cached."""

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from app.config import Settings, url_forms
from app.errors import AuthUnavailable, UnauthorizedError
from app.schemas import MAX_USER_ID

logger = logging.getLogger("app.auth")

# Claims of the wrong type (`sub` 5, `iat` "x"), which PyJWT names itself.
_CLAIM_ERRORS = (
    jwt.exceptions.InvalidSubjectError,
    jwt.exceptions.InvalidJTIError,
    jwt.InvalidIssuedAtError,
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Every asymmetric JWS algorithm PyJWT verifies; Better Auth signs with EdDSA (its
# default), ES256, ES512, RS256 or PS256.
JWKS_ALGORITHMS = frozenset(
    {
        "EdDSA",
        "ES256",
        "ES384",
        "ES512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    }
)
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})  # never "oct": no HMAC key from a JWKS
_MAX_JWKS_BYTES = 1_000_000
# NumericDate claims beyond year 9999 (or before 1970) are no real token's: refused,
# and never handed to float() or datetime, which overflow on them.
_LATEST_TIMESTAMP = 253_402_300_800


# Unknown signing key ids remembered with when a token carrying one first came: at
# most this many, for this long (s); one longer than MAX_KID (no provider's is) is
# remembered as no `kid`.
MAX_UNKNOWN = 1_000
UNKNOWN_KEPT = 300.0
MAX_KID = 128


class JwksCache:
    """Signing keys by `kid`, fetched from the JWKS URL.

    - A request whose key is cached never waits: keys older than `ttl` keep being
      used while one background refresh replaces them.
    - An unknown `kid` triggers a refresh at once (key rotation), at most one per
      `min_refresh_interval`, single-flight: concurrent requests wait for the same
      fetch. Between refreshes an unknown `kid` is a 503 with Retry-After (the key
      may have been published since the last fetch), never a 401, which frontends
      take as "sign the user out". A 401 comes from a fetch that began after the
      request arrived and still lacks the key, and, between fetches too, once a
      fetch begun `absent_after` after a token with that `kid` first came lacked
      it: a provider publishes a key before it signs with it, and a key set seen
      through a cache may lag behind it, but not for that long: such a `kid` is
      not the provider's (a token of a reset or another Better Auth instance,
      which a page polls with: it got 503s between fetches, and retried forever).
    - The fetch (urllib) runs on a thread of its own and is awaited for at most
      `timeout`; one that outlives it is abandoned, and no other starts until its
      thread is done. So a slow key server and a flood of made-up kids cost one
      thread and at most one fetch per interval, and queue nothing.
    - A failed fetch keeps the known keys; a key the library cannot load is skipped
      with a warning and the others keep working.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 900.0,
        min_refresh_interval: float = 2.0,
        timeout: float = 3.0,
        absent_after: float = 10.0,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self.absent_after = absent_after
        self._keys: dict[str | None, PyJWK] = {}
        self._listed: dict[str | None, dict[str, Any]] = {}  # as the set lists them
        # Moves on when a fetch finds a key gone or replaced: a token verified with
        # an earlier generation's key is verified again (`TokenVerifier.known`).
        self.generation = 0
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._refresh: asyncio.Task[bool] | None = None
        self._refresh_began = float("-inf")
        self._download: concurrent.futures.Future[Any] | None = None
        # when the last fetch that succeeded began
        self._listed_began = float("-inf")
        # unknown kids, with when a token carrying each first came (in that order)
        self._unknown: dict[str | None, float] = {}

    async def key(self, kid: str | None) -> PyJWK:
        """The key for `kid`; AuthUnavailable (503) or UnauthorizedError (401)."""
        arrived = time.monotonic()
        key = self._lookup(kid)
        if key is not None:
            if arrived - self._fetched_at > self.ttl:
                self._start_refresh(arrived)  # in the background: nobody waits
            return key
        seen = self._first_seen(kid, arrived)
        refresh = self._start_refresh(arrived)
        after_arrival = False
        if refresh is not None:
            after_arrival = self._refresh_began >= arrived
            fetched = await asyncio.shield(refresh)
            key = self._lookup(kid)
            if key is not None:
                return key
            if not fetched:
                raise AuthUnavailable()
        if after_arrival or self._listed_began - seen >= self.absent_after:
            raise UnauthorizedError(
                "unknown_key", "The token's signing key (kid) is not in the key set"
            )
        # the last fetch may predate the key: ask again shortly
        raise self._not_yet(time.monotonic())

    def _first_seen(self, kid: str | None, now: float) -> float:
        """When a token with this unknown `kid` first came (`now` if new). Tokens
        without a `kid` (the set has several keys), or with one longer than any
        provider's, are remembered as one (None)."""
        name = kid if kid is not None and len(kid) <= MAX_KID else None
        seen = self._unknown.get(name)
        if seen is None:
            unknown = self._unknown
            while unknown and (
                len(unknown) >= MAX_UNKNOWN
                or now - next(iter(unknown.values())) > UNKNOWN_KEPT
            ):
                del unknown[next(iter(unknown))]
            unknown[name] = seen = now
        return seen

    def _not_yet(self, now: float) -> AuthUnavailable:
        wait = self.min_refresh_interval - (now - self._attempted_at)
        return AuthUnavailable(
            detail="The token's signing key (kid) is not known yet; the key set is "
            "fetched again shortly",
            retry_after=math.ceil(max(wait, 1)),
        )

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _start_refresh(self, now: float) -> "asyncio.Task[bool] | None":
        """Begin a refresh if none is running and one is allowed now."""
        if self._refresh is not None:
            return self._refresh
        if now - self._attempted_at < self.min_refresh_interval:
            return None
        if self._download is not None and not self._download.done():
            return None  # an abandoned fetch still holds its thread
        self._attempted_at = self._refresh_began = now
        self._refresh = asyncio.get_running_loop().create_task(self._run_refresh())
        return self._refresh

    async def _run_refresh(self) -> bool:
        try:
            self._download = _in_thread(self._fetch)
            document = await asyncio.wait_for(
                asyncio.wrap_future(self._download), self.timeout
            )
            keys, listed = self._usable_keys(document)
        except Exception as exc:  # any failure: keep the keys we have
            logger.warning(
                "JWKS fetch from %s failed: %s",
                self.url.partition("?")[0],  # a query may carry an API key
                "timed out" if isinstance(exc, TimeoutError) else repr(exc)[:200],
            )
            return False
        finally:
            self._refresh = None
        if any(listed.get(kid) != jwk for kid, jwk in self._listed.items()):
            self.generation += 1  # a key revoked or replaced
        self._keys, self._listed = keys, listed
        self._fetched_at = time.monotonic()
        self._listed_began = self._refresh_began
        return True

    def _fetch(self) -> Any:
        """The parsed JWKS document (on the fetch thread: no parsing on the loop)."""
        # no-cache: a cache in between must not answer with a set older than
        # the provider's (a key it has just published)
        request = urllib.request.Request(
            self.url,
            headers={"Accept": "application/json", "Cache-Control": "no-cache"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body: bytes = response.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {_MAX_JWKS_BYTES} bytes")
        return json.loads(body)

    def _usable_keys(
        self, document: Any
    ) -> tuple[dict[str | None, PyJWK], dict[str | None, dict[str, Any]]]:
        """The set's signing keys by kid, loaded and as listed."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('not a JWK set: no "keys" list')
        keys: dict[str | None, PyJWK] = {}
        listed: dict[str | None, dict[str, Any]] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict):
                continue
            if jwk.get("kty") not in _KEY_TYPES or jwk.get("use", "sig") != "sig":
                continue  # symmetric or encryption keys are never for us
            try:
                key = PyJWK(jwk)
            except Exception as exc:  # e.g. an X25519 (encryption) key without `use`
                logger.warning(
                    "JWKS key %r skipped, it cannot verify signatures: %s",
                    str(jwk.get("kid"))[:100],
                    str(exc)[:200],
                )
                continue
            kid = jwk.get("kid")
            name = kid if isinstance(kid, str) else None
            keys[name], listed[name] = key, jwk
        if not keys:  # never trade working keys for an empty set
            raise ValueError("no usable signing key in the JWK set")
        return keys, listed


def _in_thread(function: Callable[[], Any]) -> "concurrent.futures.Future[Any]":
    """Run `function` on a daemon thread of its own: a fetch that hangs past its
    timeout is abandoned without blocking a shared pool or the process's exit."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=run, name="jwks-fetch", daemon=True).start()
    return future


@dataclass(frozen=True)
class _Verified:
    user_id: str
    expires: float
    not_before: float
    generation: int | None  # of the key set whose key verified it (None: the secret)


def _digest(token: str) -> bytes:
    """What the cache keys a token by: 32 bytes, however long the token (10,000
    tokens of 8 KiB, signed for one user, held 80 MB: a trial)."""
    return hashlib.sha256(token.encode()).digest()


class TokenVerifier:
    # Clients send the same token for many requests (Better Auth's live 15 minutes):
    # a token whose signature and claims were verified is remembered with its
    # validity window, so repeats skip the crypto but not the time checks.
    CACHE_SIZE = 10_000

    def __init__(self, settings: Settings) -> None:
        secret = settings.jwt_secret
        self._secret = secret.get_secret_value() if secret else None
        self._jwks = JwksCache(settings.JWT_JWKS_URL) if settings.JWT_JWKS_URL else None
        issuer = settings.JWT_ISSUER
        self._issuer = url_forms(issuer) if issuer else None
        self._audience = settings.JWT_AUDIENCE
        self._user_claim = settings.JWT_USER_CLAIM
        self._leeway = settings.JWT_LEEWAY_SECONDS
        self._verified: dict[bytes, _Verified] = {}  # by `_digest`

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    def known(self, token: str) -> str | None:
        """The user of a token verified before and still within its validity
        window: no crypto, no I/O."""
        key = _digest(token)
        known = self._verified.get(key)
        if known is None:
            return None
        current = known.generation is None or (
            self._jwks is not None and known.generation == self._jwks.generation
        )
        if current and known.not_before <= time.time() <= known.expires:
            return known.user_id
        del self._verified[key]
        return None

    async def user_id(self, token: str) -> str:
        """The verified token's user id, or UnauthorizedError naming what failed."""
        known = self.known(token)
        if known is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthorizedError("malformed", "The token is not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):  # a list or an object is unhashable
            raise UnauthorizedError("malformed", "The token's alg is not a string")
        key: Any
        generation = None
        if algorithm in HMAC_ALGORITHMS and self._secret is not None:
            key = self._secret
        elif algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            generation = self._jwks.generation  # before the key: never a later one
            kid = header.get("kid")
            if not isinstance(kid, str | None):
                raise UnauthorizedError("malformed", "The token's kid is not a string")
            jwk = await self._jwks.key(kid)
            if jwk.algorithm_name != algorithm:  # the key decides, not the token
                raise UnauthorizedError(
                    "algorithm", "The token's alg is not its signing key's algorithm"
                )
            key = jwk.key
        else:
            raise self._not_accepted(algorithm)
        return self._decode(token, key, algorithm, generation)

    def _not_accepted(self, algorithm: str) -> UnauthorizedError:
        """Names the algorithms accepted, by what is configured: with only the
        shared secret, a Better Auth JWT plugin token (EdDSA) got "not accepted"
        and nothing more (a trial); the log says what to set."""
        accepted = sorted(HMAC_ALGORITHMS) if self._secret is not None else []
        if self._jwks is not None:
            accepted += sorted(JWKS_ALGORITHMS)
        known = algorithm in HMAC_ALGORITHMS | JWKS_ALGORITHMS
        context = {"token_alg": algorithm[:32]}
        if algorithm in JWKS_ALGORITHMS and self._jwks is None:
            # Not the other way round: an HMAC token where only a key set is
            # configured is as likely an algorithm-confusion probe.
            context["hint"] = "set JWT_JWKS_URL to verify tokens signed with a key pair"
        return UnauthorizedError(
            "algorithm",
            f"The token's signing algorithm{f' ({algorithm})' if known else ''} is "
            f"not accepted; this server accepts {', '.join(accepted)}",
            context=context,
        )

    def _decode(
        self, token: str, key: Any, algorithm: str, generation: int | None
    ) -> str:
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
        except jwt.PyJWTError as exc:
            raise self._failure(token, exc) from None
        times = {name: _timestamp(claims, name) for name in ("exp", "nbf", "iat")}
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not user_id:
            raise UnauthorizedError(
                "claim", f"The token has no '{self._user_claim}' claim (the user id)"
            )
        self._remember(token, user_id, times, generation)
        return user_id

    def _failure(self, token: str, exc: jwt.PyJWTError) -> UnauthorizedError:
        """The check that failed, for the client (detail) and the log (context)."""
        if isinstance(exc, jwt.ExpiredSignatureError | jwt.ImmatureSignatureError):
            # Signed, so its claims are the issuer's: PyJWT reads `exp: true` as 1
            # (expired in 1970), where the claim is not a time at all.
            claims = jwt.decode(token, options={"verify_signature": False})
            try:
                for name in ("exp", "nbf", "iat"):
                    _timestamp(claims, name)
            except UnauthorizedError as malformed:
                return malformed
        if isinstance(exc, jwt.ExpiredSignatureError):
            return UnauthorizedError(
                "expired", "The token has expired (exp): sign in again for a new one"
            )
        if isinstance(exc, jwt.ImmatureSignatureError):
            return UnauthorizedError(
                "not_yet_valid", "The token is not valid yet (nbf or iat in the future)"
            )
        if isinstance(exc, jwt.InvalidSignatureError):
            return UnauthorizedError("signature", "The token's signature is not valid")
        missing = getattr(exc, "claim", None)  # MissingRequiredClaimError
        if missing == "exp":
            return UnauthorizedError("claim", "The token has no expiry (exp)")
        # For issuer and audience the signature has verified (PyJWT checks it first),
        # so the claims are the issuer's: the log names them, which makes a mismatch
        # such as localhost against 127.0.0.1 plain to see.
        if isinstance(exc, jwt.InvalidIssuerError) or missing == "iss":
            claims = jwt.decode(token, options={"verify_signature": False})
            return UnauthorizedError(
                "issuer",
                "The token's issuer (iss) is not the one configured (JWT_ISSUER)",
                context={
                    "token_iss": str(claims.get("iss"))[:200],
                    "expected_iss": ", ".join(self._issuer or []),
                },
            )
        if isinstance(exc, jwt.InvalidAudienceError) or missing == "aud":
            claims = jwt.decode(token, options={"verify_signature": False})
            return UnauthorizedError(
                "audience",
                "The token's audience (aud) is not one configured (JWT_AUDIENCE)",
                context={
                    "token_aud": str(claims.get("aud"))[:200],
                    "expected_aud": ", ".join(self._audience or []),
                },
            )
        message = str(exc)[:200]
        if isinstance(exc, _CLAIM_ERRORS) or "claim (" in message:
            # PyJWT's own words name the claim and what it must be.
            return UnauthorizedError("malformed", f"The token is malformed: {message}")
        # Any other decoding failure (e.g. an unencoded payload, `b64: false`): the
        # library's words are about its API, not the token; they go to the log.
        return UnauthorizedError(
            "malformed",
            "The token is not a well-formed JWT",
            context={"error": message},
        )

    def _remember(
        self,
        token: str,
        user_id: str,
        times: dict[str, float],
        generation: int | None,
    ) -> None:
        if len(user_id) > MAX_USER_ID:  # no path's: every request with it is a 403
            return
        if len(self._verified) >= self.CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[_digest(token)] = _Verified(
            user_id,
            expires=times["exp"] + self._leeway,
            not_before=max(times["nbf"], times["iat"]) - self._leeway,
            generation=generation,
        )


def _timestamp(claims: dict[str, Any], name: str) -> float:
    """A NumericDate claim as a float (0 when absent), or UnauthorizedError."""
    value = claims.get(name, 0)
    plausible = isinstance(value, int | float) and not isinstance(value, bool)
    if not plausible or not 0 <= value < _LATEST_TIMESTAMP:
        raise UnauthorizedError(
            "malformed", f"The token's {name} is not a plausible time"
        )
    return float(value)
