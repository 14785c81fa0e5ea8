"""The client behind a proxy: `X-Forwarded-For` and `X-Forwarded-Proto`, believed
from the peers `FORWARDED_ALLOW_IPS` names (the address keys the per-address rate
limits and the failed-authentication budget).

A proxy appends the address it saw to what the client sent, so only the entries
that trusted proxies added are true: the client is the last entry that is not a
trusted proxy's. With `*` (any peer is the proxy: a platform's, whose address is
not known), the proxy's own entry, the last, is the client. uvicorn took the
first one then, which the client writes itself: a new made-up address on each
request escaped every per-address limit."""

import ipaddress
from functools import lru_cache

from starlette.types import ASGIApp, Receive, Scope, Send


def _host(entry: str) -> str | None:
    """An entry's address, without the port some proxies add (`1.2.3.4:5678`,
    `[2001:db8::1]:443`), in one spelling (`2001:db8:0:0::2` is `2001:db8::2`,
    `::ffff:10.0.0.6` is `10.0.0.6`): one bucket per client, not per
    connection or per way of writing it. None for anything but an address
    (`unknown`, junk): no proxy appends one, and as a key it made a per-address
    counter of each made-up text, up to the 32 KiB a head holds (a trial: a
    worker grew to 960 MB in 40 s)."""
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    address = _address(entry)
    return None if address is None else str(address)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


class ForwardedMiddleware:
    def __init__(self, app: ASGIApp, trusted: str) -> None:
        self.app = app
        items = trusted.split(",")
        self.any_peer = "*" in items
        self.networks = [
            ipaddress.ip_network(i, strict=False) for i in items if i != "*"
        ]
        # The peer is the same few proxies on every request.
        self.trusted_peer = lru_cache(maxsize=64)(self._trusted)

    def _trusted(self, host: str) -> bool:
        if self.any_peer:
            return True
        address = _address(host)
        return address is not None and any(address in n for n in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and self.trusted_peer(client[0]):
            entries: list[str] = []
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    entries += (e.strip() for e in value.decode("latin-1").split(","))
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip().lower()
                    if proto in ("http", "https"):
                        scope["scheme"] = proto
            # An entry that is no address stands for the peer, a trusted proxy.
            hosts = [_host(entry) or client[0] for entry in entries if entry]
            if hosts:
                scope["client"] = (self._client(hosts), 0)
        await self.app(scope, receive, send)

    def _client(self, hosts: list[str]) -> str:
        """The last host that is not a trusted proxy's (with `*`: the last);
        when all are, the first: the client is itself a trusted proxy."""
        if self.any_peer:
            return hosts[-1]
        for host in reversed(hosts):
            if not self._trusted(host):
                return host
        return hosts[0]
