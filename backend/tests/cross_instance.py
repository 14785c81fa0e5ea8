"""What must hold across instances that share one database, one Redis and one
CURSOR_SECRET: within each check, consecutive requests go to different instances.
Used by tests/integration/test_scale_out.py and by bench/soak.py --scale-out."""

import time
import uuid
from collections.abc import Callable
from itertools import cycle

import httpx

Auth = Callable[[str], dict[str, str]]


def check_across_instances(
    instances: list[str], auth: Auth, rate_limit: tuple[int, int]
) -> None:
    """Every check below, each with a user of its own; AssertionError says which
    property failed."""
    clients = [httpx.Client(base_url=url, timeout=10) for url in instances]
    try:
        assert len(clients) >= 2, "needs at least two instances"
        check_cursor(clients, auth)
        check_etag(clients, auth)
        check_idempotency(clients, auth)
        check_rate_limit(clients, auth, *rate_limit)
    finally:
        for client in clients:
            client.close()


def _user(auth: Auth) -> tuple[str, dict[str, str]]:
    user = f"cross-{uuid.uuid4().hex[:12]}"
    return f"/api/{user}/tasks", auth(user)


def check_cursor(clients: list[httpx.Client], auth: Auth) -> None:
    """Each page fetched on the next instance: every task once, in order."""
    url, headers = _user(auth)
    created = []
    for n in range(5):
        r = clients[n % len(clients)].post(
            url, json={"title": f"page {n}"}, headers=headers
        )
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    seen: list[int] = []
    params = {"limit": "2"}
    for client in cycle(clients):
        r = client.get(url, params=params, headers=headers)
        assert r.status_code == 200, f"cursor from another instance: {r.text}"
        seen += [task["id"] for task in r.json()]
        if "x-next-cursor" not in r.headers:
            break
        params = {"limit": "2", "cursor": r.headers["x-next-cursor"]}
    assert seen == created[::-1], f"paging across instances gave {seen}"


def check_etag(clients: list[httpx.Client], auth: Auth) -> None:
    """An ETag from one instance is honoured by the others, for reads and If-Match."""
    a, b, c = (clients * 2)[:3]
    url, headers = _user(auth)
    task = a.post(url, json={"title": "etag"}, headers=headers).json()
    etag = a.get(f"{url}/{task['id']}", headers=headers).headers["etag"]
    r = b.get(f"{url}/{task['id']}", headers={**headers, "If-None-Match": etag})
    assert r.status_code == 304, f"If-None-Match with another instance's ETag: {r}"
    r = b.patch(
        f"{url}/{task['id']}",
        json={"title": "changed"},
        headers={**headers, "If-Match": etag},
    )
    assert r.status_code == 200, f"If-Match with another instance's ETag: {r.text}"
    r = c.patch(
        f"{url}/{task['id']}",
        json={"title": "lost update"},
        headers={**headers, "If-Match": etag},
    )
    assert r.status_code == 412, f"stale ETag on a third instance: {r.text}"


def check_idempotency(clients: list[httpx.Client], auth: Auth) -> None:
    """A keyed create replayed on other instances returns the first response and
    creates nothing; the key with another body is refused."""
    a, b, c = (clients * 2)[:3]
    url, headers = _user(auth)
    keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    first = a.post(url, json={"title": "once"}, headers=keyed)
    assert first.status_code == 201, first.text
    replay = b.post(url, json={"title": "once"}, headers=keyed)
    assert (replay.status_code, replay.json()) == (201, first.json()), (
        f"replay on another instance: {replay.text}"
    )
    assert replay.headers["etag"] == first.headers["etag"]
    reused = c.post(url, json={"title": "other"}, headers=keyed)
    assert reused.status_code == 422, f"key reused on a third instance: {reused.text}"
    assert [t["id"] for t in c.get(url, headers=headers).json()] == [first.json()["id"]]


def check_rate_limit(
    clients: list[httpx.Client], auth: Auth, limit: int, window: int
) -> None:
    """3 x limit requests spread over the instances: one budget for all of them
    (per-process counters would allow every one). The burst may straddle one window
    boundary, so at most 2 x limit pass."""
    url, headers = _user(auth)
    started = time.monotonic()
    statuses = [
        clients[n % len(clients)].get(url, headers=headers).status_code
        for n in range(3 * limit)
    ]
    assert time.monotonic() - started < window, "burst longer than the window"
    allowed, refused = statuses.count(200), statuses.count(429)
    assert allowed + refused == len(statuses), f"unexpected statuses: {set(statuses)}"
    assert limit <= allowed <= 2 * limit, (
        f"{allowed} of {len(statuses)} allowed with a shared limit of {limit}"
    )
