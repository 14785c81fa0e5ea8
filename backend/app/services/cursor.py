"""Opaque, signed keyset cursors (CONTRACT C4) and sync tokens (C9).

A cursor carries the last row's sort value and id. Its HMAC also covers the user, the
sort and the filter set it was issued for, so a cursor that is edited, forged, or used
by another user or for another listing fails verification: a 400, never other data."""

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from app.errors import InvalidCursor

_SIGNATURE_BYTES = 16
# What `encode` writes: unpadded base64url. The decoder would skip anything else.
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


class CursorCodec:
    def __init__(self, secret: bytes, fallbacks: Sequence[bytes] = ()) -> None:
        self._secret = secret
        # Earlier secrets (a rotation): what they signed still verifies.
        self._fallbacks = tuple(fallbacks)

    def _sign(
        self, payload: bytes, binding: dict[str, Any], secret: bytes | None = None
    ) -> bytes:
        message = json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()
        key = secret or self._secret
        mac = hmac.new(key, message + b"\n" + payload, hashlib.sha256)
        return mac.digest()[:_SIGNATURE_BYTES]

    def _signed(
        self, signature: bytes, payload: bytes, binding: dict[str, Any]
    ) -> bool:
        return any(
            hmac.compare_digest(signature, self._sign(payload, binding, secret))
            for secret in (self._secret, *self._fallbacks)
        )

    def encode(self, position: list[Any], binding: dict[str, Any]) -> str:
        # UTF-8, not \u escapes: a title's emoji take 4 bytes, not 12 (MAX_CURSOR).
        payload = json.dumps(
            position, separators=(",", ":"), ensure_ascii=False
        ).encode()
        token = payload + self._sign(payload, binding)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def decode(
        self, cursor: str, binding: dict[str, Any], lengths: tuple[int, ...] = (2,)
    ) -> list[Any]:
        """The position `encode` was given (a list of one of `lengths` items)."""
        if not _ALPHABET.fullmatch(cursor):
            raise InvalidCursor()
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raise InvalidCursor() from None
        payload, signature = raw[:-_SIGNATURE_BYTES], raw[-_SIGNATURE_BYTES:]
        if len(raw) <= _SIGNATURE_BYTES or not self._signed(
            signature, payload, binding
        ):
            raise InvalidCursor()
        position = json.loads(payload)
        if not (isinstance(position, list) and len(position) in lengths):
            raise InvalidCursor()
        return position
