"""Keys, a local JWKS server and token minting for the auth tests."""

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "test-secret-" + "0123456789abcdef" * 4  # 75 bytes: enough for HS512


@dataclass
class SigningKey:
    algorithm: str
    private: Any
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def jwk(self) -> dict[str, Any]:
        to_jwk = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
        data: dict[str, Any] = json.loads(
            to_jwk[self.algorithm].to_jwk(self.private.public_key())  # type: ignore[attr-defined]
        )
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def new_key(algorithm: str) -> SigningKey:
    if algorithm == "RS256":
        return SigningKey(algorithm, rsa.generate_private_key(65537, 2048))
    if algorithm == "ES256":
        return SigningKey(algorithm, ec.generate_private_key(ec.SECP256R1()))
    return SigningKey(algorithm, ed25519.Ed25519PrivateKey.generate())


def claims(subject: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(
    subject: str, algorithm: str = "HS256", secret: str = SECRET, **kw: Any
) -> str:
    return jwt.encode(claims(subject, **kw), secret, algorithm=algorithm)


def signed_token(
    key: SigningKey, subject: str, kid: str | None = None, **kw: Any
) -> str:
    return jwt.encode(
        claims(subject, **kw),
        key.private,
        algorithm=key.algorithm,
        headers={"kid": kid or key.kid},
    )


class JwksServer:
    """Serves {"keys": [...]} on loopback, `delay` seconds late, and counts the
    fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                time.sleep(server.delay)
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have stopped waiting (a timeout under test).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/auth/jwks"

    @contextmanager
    def running(self) -> Iterator["JwksServer"]:
        thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
