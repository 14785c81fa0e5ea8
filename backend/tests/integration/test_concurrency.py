"""C5 under real concurrency: parallel requests at real server processes."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from tests.factories import create_task, new_user_id, tasks_url
from tests.server import running_server


@pytest.fixture(scope="module")
def servers(database_url: str, engine: object) -> Iterator[list[str]]:
    """Two server processes on one database, as behind a load balancer."""
    with (
        running_server(database_url) as first,
        running_server(database_url) as second,
    ):
        yield [first, second]


def _post_with_key(base_url: str, user: str, key: str) -> httpx.Response:
    return httpx.post(
        base_url + tasks_url(user),
        json={"title": "once"},
        headers={"Idempotency-Key": key},
        timeout=30,
    )


def test_ten_concurrent_requests_with_one_key_make_one_task(servers: list[str]) -> None:
    user = new_user_id()
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(
                lambda i: _post_with_key(servers[i % 2], user, "one-key"), range(10)
            )
        )
    created = [r for r in responses if r.status_code == 201]
    assert {r.status_code for r in responses} <= {201, 409}
    assert len({r.json()["id"] for r in created}) == 1
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.headers["retry-after"]
    assert len(httpx.get(servers[0] + tasks_url(user)).json()) == 1


def test_key_sent_to_both_processes_is_one_task(servers: list[str]) -> None:
    user = new_user_id()
    first = _post_with_key(servers[0], user, "cross-process")
    second = _post_with_key(servers[1], user, "cross-process")
    assert second.status_code == 201
    assert second.json() == first.json()


def test_concurrent_updates_keep_updated_at_strictly_increasing(
    servers: list[str],
) -> None:
    user = new_user_id()
    with httpx.Client(base_url=servers[0], timeout=30) as client:
        task = create_task(client, user)
    url = tasks_url(user, task["id"])

    def patch(i: int) -> str:
        response = httpx.patch(
            servers[i % 2] + url, json={"title": f"v{i}"}, timeout=30
        )
        assert response.status_code == 200
        stamp: str = response.json()["updated_at"]
        return stamp

    with ThreadPoolExecutor(max_workers=16) as pool:
        stamps = list(pool.map(patch, range(40)))
    parsed = sorted(datetime.fromisoformat(s) for s in stamps)
    assert len(set(parsed)) == 40  # every acknowledged change has its own version
    final = httpx.get(servers[0] + url).json()
    assert datetime.fromisoformat(final["updated_at"]) == parsed[-1]


def test_concurrent_if_match_lets_exactly_one_writer_win(servers: list[str]) -> None:
    user = new_user_id()
    with httpx.Client(base_url=servers[0], timeout=30) as client:
        task = create_task(client, user)
        etag = client.get(tasks_url(user, task["id"])).headers["etag"]

    def patch(i: int) -> int:
        return httpx.patch(
            servers[i % 2] + tasks_url(user, task["id"]),
            json={"title": f"writer {i}"},
            headers={"If-Match": etag},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(patch, range(10)))
    assert sorted(statuses) == [200] + [412] * 9


def test_concurrent_toggles_across_processes_leave_the_parity(
    servers: list[str],
) -> None:
    user = new_user_id()
    with httpx.Client(base_url=servers[0], timeout=30) as client:
        task = create_task(client, user)
    url = tasks_url(user, task["id"]) + "/complete"
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(
            pool.map(
                lambda i: httpx.patch(servers[i % 2] + url, timeout=30).status_code,
                range(24),
            )
        )
    assert statuses == [200] * 24
    final = httpx.get(servers[1] + tasks_url(user, task["id"])).json()
    assert final["completed"] is False  # 24 toggles: even
    assert final["completed_at"] is None
