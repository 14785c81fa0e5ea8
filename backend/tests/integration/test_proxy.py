"""Behind a proxy, over a real socket: the trailing-slash path is served, not
redirected to a plain-http absolute URL; FORWARDED_ALLOW_IPS decides whose
X-Forwarded-For is believed (seen here through the per-address rate limit);
HEAD answers without a body and the connection stays usable."""

import httpx

from tests.factories import new_user_id, tasks_url
from tests.server import running_server

# The client a TLS proxy reports; 203.0.113.0/24 is reserved for documentation and
# only ever appears in a header here, never as an address anything is sent to.
VISITORS = ("203.0.113.7", "203.0.113.8")


def _forwarded(base_url: str, client_ip: str) -> int:
    headers = {"X-Forwarded-For": client_ip, "X-Forwarded-Proto": "https"}
    path = tasks_url(new_user_id()) + "/"
    return httpx.get(base_url + path, headers=headers).status_code


def test_trusted_proxy_slash_path_is_served_and_clients_are_told_apart(
    database_url: str, engine: object
) -> None:
    # The default trusts loopback, where this test's "proxy" connects from.
    with running_server(database_url, RATE_LIMIT="2/day") as base_url:
        first, second = VISITORS
        assert [_forwarded(base_url, first) for _ in range(2)] == [200, 200]
        assert _forwarded(base_url, first) == 429
        assert _forwarded(base_url, second) == 200  # its own bucket


def test_untrusted_peer_forwarded_for_is_ignored(
    database_url: str, engine: object
) -> None:
    # 192.0.2.1 (a documentation address) is the only trusted proxy; this test's
    # requests come from loopback, so their X-Forwarded-For is not believed.
    with running_server(
        database_url, RATE_LIMIT="2/day", FORWARDED_ALLOW_IPS="192.0.2.1"
    ) as base_url:
        first, second = VISITORS
        assert [_forwarded(base_url, first) for _ in range(2)] == [200, 200]
        assert _forwarded(base_url, second) == 429  # one bucket: the peer's address


def test_behind_any_proxy_a_client_cannot_write_its_own_address(
    database_url: str, engine: object
) -> None:
    """With `*` (a platform's proxy, its address unknown), the entry the proxy
    appends is the client: one that makes up a new first entry on every request
    stays in its own bucket."""
    with running_server(
        database_url, RATE_LIMIT="2/day", FORWARDED_ALLOW_IPS="*"
    ) as base_url:
        first, second = VISITORS
        made_up = [_forwarded(base_url, f"10.0.{i}.1, {first}") for i in range(3)]
        assert made_up == [200, 200, 429]
        assert _forwarded(base_url, second) == 200


def test_head_over_a_socket_keeps_the_connection_usable(
    database_url: str, engine: object
) -> None:
    with (
        running_server(database_url) as base_url,
        httpx.Client(base_url=base_url) as client,
    ):
        head = client.head("/health")
        get = client.get("/health")  # same keep-alive connection
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]
        assert get.json()["status"] == "healthy"
