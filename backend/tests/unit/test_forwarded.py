"""Who the client is behind a proxy (ForwardedMiddleware): the last address
that a trusted proxy did not write, never one the client wrote itself."""

import asyncio

import pytest
from starlette.types import Message, Scope

from app.edge.forwarded import ForwardedMiddleware


def _client_seen(
    trusted: str, peer: str, forwarded_for: list[str], proto: str | None = None
) -> tuple[str, str]:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: object, send: object) -> None:
        seen.append(scope)

    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto.encode()))
    scope = {"type": "http", "client": (peer, 4711), "headers": headers}

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    asyncio.run(ForwardedMiddleware(app, trusted)(scope, nothing, ignore))
    return seen[0]["client"][0], seen[0].get("scheme", "http")


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        (["203.0.113.7"], "203.0.113.7"),
        (["10.9.9.9, 203.0.113.7"], "203.0.113.7"),  # the first, the client's own
        (["10.9.9.9", "203.0.113.7"], "203.0.113.7"),  # one header per hop
        (["203.0.113.7:5555"], "203.0.113.7"),  # a port some proxies add
        (["[2001:db8::7]:443"], "2001:db8::7"),
        (["2001:db8:0:0::7"], "2001:db8::7"),  # one spelling, one bucket
        (["::ffff:203.0.113.7"], "203.0.113.7"),
    ],
)
def test_behind_any_peer_the_entry_its_proxy_appended_is_the_client(
    forwarded_for: list[str], client: str
) -> None:
    assert _client_seen("*", "10.0.0.2", forwarded_for) == (client, "http")


@pytest.mark.parametrize("trusted", ["*", "127.0.0.1"])
def test_an_entry_that_is_no_address_is_never_the_client(trusted: str) -> None:
    """Made-up text was a per-address counter's key of its own, up to 32 KiB
    each (a trial): it stands for the peer, which wrote the header."""
    for junk in ("unknown", "x" * 30_000, "_hidden", "1.2.3.4.5"):
        assert _client_seen(trusted, "127.0.0.1", [junk])[0] == "127.0.0.1"
    chain = ["203.0.113.7, not-an-address"]
    expected = "203.0.113.7" if trusted != "*" else "127.0.0.1"
    assert _client_seen(trusted, "127.0.0.1", chain)[0] == expected


def test_behind_listed_proxies_the_last_unlisted_entry_is_the_client() -> None:
    trusted = "127.0.0.1,192.0.2.0/24"
    chain = ["10.9.9.9, 203.0.113.7, 192.0.2.5"]  # client-written, client, a proxy
    assert _client_seen(trusted, "127.0.0.1", chain)[0] == "203.0.113.7"
    assert _client_seen(trusted, "127.0.0.1", ["192.0.2.9"])[0] == "192.0.2.9"


def test_a_proxy_writing_its_address_ipv4_mapped_is_still_trusted() -> None:
    chain = ["203.0.113.7, ::ffff:127.0.0.1"]
    assert _client_seen("127.0.0.1", "::ffff:127.0.0.1", chain)[0] == "203.0.113.7"


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    seen = _client_seen("192.0.2.1", "127.0.0.1", ["203.0.113.7"], "https")
    assert seen == ("127.0.0.1", "http")


def test_a_trusted_peer_tells_the_scheme() -> None:
    assert _client_seen("*", "10.0.0.2", [], "HTTPS")[1] == "https"
    assert _client_seen("*", "10.0.0.2", [], "gopher")[1] == "http"
