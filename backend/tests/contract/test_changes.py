"""C9 E10: delta sync. Every change once, at its latest version; deletions as ids;
pages; signed tokens; expiry (410)."""

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text

from app.services import sync
from app.services.cursor import CursorCodec
from app.services.sync import SyncToken
from tests.conftest import ClientFactory
from tests.factories import create_task, new_user_id, tasks_url
from tests.jwt_helpers import SECRET, hs_token

CURSOR_SECRET = "sync-test-secret-" + "c" * 32


def changes(
    client: TestClient, user: str, since: str | None = None, **params: Any
) -> dict[str, Any]:
    if since is not None:
        params["since"] = since
    response = client.get(tasks_url(user) + "/changes", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_first_sync_returns_every_task_and_no_deletions(client: TestClient) -> None:
    user = new_user_id()
    created = [create_task(client, user, title=f"t{i}") for i in range(3)]
    body = changes(client, user)
    assert sorted(body["tasks"], key=lambda t: t["id"]) == created
    assert body["deleted"] == []
    assert body["has_more"] is False
    assert isinstance(body["next"], str)


def test_an_empty_since_is_a_first_sync(client: TestClient) -> None:
    """As an empty page token starts a list: a generated client bound to a stored
    token sends `since=` before it has one (a trial: a 400)."""
    user = new_user_id()
    create_task(client, user)
    first = changes(client, user, since="")
    assert first["tasks"] == changes(client, user)["tasks"] != []
    assert first["deleted"] == []


def test_sync_returns_only_changes_since_the_token(client: TestClient) -> None:
    user = new_user_id()
    untouched = create_task(client, user, title="old")
    changed = create_task(client, user, title="to change")
    token = changes(client, user)["next"]
    updated = client.patch(tasks_url(user, changed["id"]), json={"title": "new"})
    added = create_task(client, user, title="added")
    body = changes(client, user, token)
    assert sorted(body["tasks"], key=lambda t: t["id"]) == [updated.json(), added]
    assert untouched["id"] not in [t["id"] for t in body["tasks"]]


def test_nothing_changed_is_an_empty_sync(client: TestClient) -> None:
    user = new_user_id()
    create_task(client, user)
    token = changes(client, user)["next"]
    body = changes(client, user, token)
    assert (body["tasks"], body["deleted"], body["has_more"]) == ([], [], False)
    assert changes(client, user, body["next"])["tasks"] == []


def test_a_task_changed_twice_comes_once_at_its_latest_version(
    client: TestClient,
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    token = changes(client, user)["next"]
    client.patch(tasks_url(user, task["id"]), json={"title": "v2"})
    latest = client.patch(tasks_url(user, task["id"]), json={"title": "v3"}).json()
    assert changes(client, user, token)["tasks"] == [latest]


def test_every_write_is_a_change(client: TestClient) -> None:
    """Create, replace, patch and toggle each make the task a change."""
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    writes: list[Callable[[], httpx.Response]] = [
        lambda: client.put(url, json={"title": "replaced"}),
        lambda: client.patch(url, json={"priority": "high"}),
        lambda: client.patch(url + "/complete"),
    ]
    for write in writes:
        token = changes(client, user)["next"]
        written = write().json()
        assert changes(client, user, token)["tasks"] == [written]


def test_deleted_tasks_are_reported_as_ids(client: TestClient) -> None:
    user = new_user_id()
    kept, gone = create_task(client, user), create_task(client, user)
    token = changes(client, user)["next"]
    assert client.delete(tasks_url(user, gone["id"])).status_code == 204
    body = changes(client, user, token)
    assert (body["tasks"], body["deleted"]) == ([], [gone["id"]])
    assert kept["id"] not in body["deleted"]


def test_a_task_created_and_deleted_between_syncs_is_only_deleted(
    client: TestClient,
) -> None:
    user = new_user_id()
    token = changes(client, user)["next"]
    task = create_task(client, user)
    client.delete(tasks_url(user, task["id"]))
    body = changes(client, user, token)
    assert body["tasks"] == []
    assert body["deleted"] in ([task["id"]], [])


def test_limit_pages_tasks_and_deletions_without_repeats(client: TestClient) -> None:
    user = new_user_id()
    tasks = [create_task(client, user, title=f"t{i}") for i in range(5)]
    token = changes(client, user)["next"]
    for task in tasks[:3]:
        client.delete(tasks_url(user, task["id"]))
    for task in tasks[3:]:
        client.patch(tasks_url(user, task["id"]), json={"title": "changed"})
    seen: list[int] = []
    pages = 0
    while True:
        body = changes(client, user, token, limit=2)
        assert len(body["tasks"]) + len(body["deleted"]) <= 2
        seen += body["deleted"] + [t["id"] for t in body["tasks"]]
        token, pages = body["next"], pages + 1
        if not body["has_more"]:
            break
    assert pages == 3
    assert sorted(seen) == sorted(t["id"] for t in tasks)
    assert changes(client, user, token)["tasks"] == []


def test_a_change_made_while_paging_comes_in_the_next_sync(client: TestClient) -> None:
    user = new_user_id()
    first, second = create_task(client, user), create_task(client, user)
    page = changes(client, user, limit=1)
    assert page["has_more"] is True
    sent = page["tasks"][0]
    other = second if sent["id"] == first["id"] else first
    changed = client.patch(tasks_url(user, sent["id"]), json={"title": "again"})
    rest = changes(client, user, page["next"], limit=1)
    assert rest["tasks"] == [other]
    assert rest["has_more"] is False
    assert changes(client, user, rest["next"])["tasks"] == [changed.json()]


def test_default_limit_is_1000(client: TestClient, engine: Engine) -> None:
    user = new_user_id()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO task (user_id, title) "
                "SELECT :u, 't' || g FROM generate_series(1, 1001) AS g"
            ),
            {"u": user},
        )
    first = changes(client, user)
    assert (len(first["tasks"]), first["has_more"]) == (1000, True)
    rest = changes(client, user, first["next"])
    assert (len(rest["tasks"]), rest["has_more"]) == (1, False)


def test_a_token_lists_few_transactions_in_flight_and_misses_nothing(
    make_client: ClientFactory, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot lists the transactions in flight when it was taken: with ~1,000
    a `next` was longer than `since` takes (an outside trial). Past
    MAX_SNAPSHOT_TEXT characters, a token's snapshot is taken as if before the
    first in flight that does not fit: a change it does not see comes in the
    next sync, once. (Here room for two.)"""
    client = _client_with_known_secret(make_client)
    codec = CursorCodec(CURSOR_SECRET.encode())
    user = new_user_id()
    insert = text("INSERT INTO task (user_id, title) VALUES (:u, :t)")
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(engine.connect()) for _ in range(4)]
        for n, writer in enumerate(writers):  # in flight, ids taken in this order
            writer.execute(insert, {"u": user, "t": f"slow {n}"})
        done = create_task(client, user)  # after them all, committed
        with engine.connect() as reader:
            now = reader.execute(text("SELECT pg_current_snapshot()::text")).scalar()
        xmin, xmax, in_flight = str(now).split(":")
        two = ",".join(in_flight.split(",")[:2])
        monkeypatch.setattr(sync, "MAX_SNAPSHOT_TEXT", len(f"{xmin}:{xmax}:{two}"))
        first = changes(client, user)
        snapshot = SyncToken.decode(codec, user, first["next"]).since
        assert snapshot is not None
        assert len(snapshot.split(":")[2].split(",")) == 2
        for writer in writers:
            writer.commit()
    # With room for two still, a busy cluster's own transactions in flight (in
    # another database) would push the rest to a later sync as well.
    monkeypatch.undo()
    rest = changes(client, user, first["next"])
    sent = [task["title"] for task in first["tasks"] + rest["tasks"]]
    assert sorted(sent) == sorted([done["title"], *(f"slow {n}" for n in range(4))])


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x", "+5", "1_0", "1.0"])
def test_limit_out_of_range_is_400(client: TestClient, limit: str) -> None:
    response = client.get(tasks_url(new_user_id()) + "/changes?limit=" + limit)
    assert_error(response, 400, "validation_error")


def test_another_users_changes_never_appear(client: TestClient) -> None:
    user, other = new_user_id(), new_user_id()
    create_task(client, other)
    token = changes(client, user)["next"]
    create_task(client, other)
    assert changes(client, user)["tasks"] == []
    assert changes(client, user, token)["tasks"] == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2],
        lambda t: "x" + t,
        str.upper,
        lambda t: t + "!!",  # outside base64url: it was skipped, and the token passed
        lambda t: t + "==",
        lambda t: t.replace("-", "+").replace("_", "/") + "+/",
    ],
)
def test_tampered_token_is_400(client: TestClient, mangle: Any) -> None:
    user = new_user_id()
    token = changes(client, user)["next"]
    response = client.get(tasks_url(user) + "/changes", params={"since": mangle(token)})
    assert_error(response, 400, "validation_error")
    assert response.json()["fields"][0]["field"] == "since"


def test_overlong_token_is_400(client: TestClient) -> None:
    response = client.get(
        tasks_url(new_user_id()) + "/changes", params={"since": "a" * 16_001}
    )
    assert_error(response, 400, "validation_error")
    assert response.json()["fields"][0]["field"] == "since"


def test_another_users_token_is_400(client: TestClient) -> None:
    token = changes(client, new_user_id())["next"]
    response = client.get(
        tasks_url(new_user_id()) + "/changes", params={"since": token}
    )
    assert_error(response, 400, "validation_error")


def test_a_list_cursor_is_not_a_sync_token(client: TestClient) -> None:
    user = new_user_id()
    create_task(client, user)
    create_task(client, user)
    cursor = client.get(tasks_url(user), params={"limit": 1}).headers["x-next-cursor"]
    response = client.get(tasks_url(user) + "/changes", params={"since": cursor})
    assert_error(response, 400, "validation_error")


def test_without_cursor_secret_servers_sharing_the_auth_secret_share_tokens(
    make_client: ClientFactory,
) -> None:
    """Without CURSOR_SECRET (development), the signing key derives from the auth
    shared secret: every worker of `uvicorn --workers N`, and the same server
    restarted, accepts the list cursors and sync tokens the others issued. Each
    had a random key of its own: 7 of 10 next pages were a 400 (a trial)."""
    env = {"BETTER_AUTH_SECRET": SecretStr(SECRET)}
    first, second = make_client(**env), make_client(**env)
    user = new_user_id()
    headers = {"Authorization": f"Bearer {hs_token(user)}"}
    for title in ("one", "two"):
        first.post(tasks_url(user), json={"title": title}, headers=headers)
    page = first.get(tasks_url(user), params={"limit": 1}, headers=headers)
    cursor = page.headers["x-next-cursor"]
    params = {"limit": 1, "cursor": cursor}
    assert (
        second.get(tasks_url(user), params=params, headers=headers).status_code == 200
    )
    token = first.get(tasks_url(user) + "/changes", headers=headers).json()["next"]
    since = {"since": token}
    synced = second.get(tasks_url(user) + "/changes", params=since, headers=headers)
    assert synced.status_code == 200, synced.text


def _client_with_known_secret(make_client: ClientFactory, **env: Any) -> TestClient:
    return make_client(CURSOR_SECRET=SecretStr(CURSOR_SECRET), **env)


def test_cursors_and_tokens_outlive_a_rotated_cursor_secret(
    make_client: ClientFactory,
) -> None:
    """CURSOR_SECRET rotated with the old key kept in CURSOR_SECRET_FALLBACKS: the
    sync tokens and list cursors it signed still work, and new ones are signed
    with the new key. Without it, every offline client's sync was a 400 (a
    scale-out trial)."""
    user = new_user_id()
    old = _client_with_known_secret(make_client)
    for title in "ab":
        create_task(old, user, title=title)
    token = changes(old, user)["next"]
    cursor = old.get(tasks_url(user), params={"limit": 1}).headers["x-next-cursor"]
    new_secret = "rotated-cursor-secret-" + "r" * 32
    new = make_client(
        CURSOR_SECRET=SecretStr(new_secret),
        CURSOR_SECRET_FALLBACKS=[SecretStr(CURSOR_SECRET)],
    )
    create_task(new, user, title="c")
    assert [t["title"] for t in changes(new, user, token)["tasks"]] == ["c"]
    page = new.get(tasks_url(user), params={"limit": 1, "cursor": cursor})
    assert page.status_code == 200, page.text
    fresh = changes(new, user)["next"]
    SyncToken.decode(CursorCodec(new_secret.encode()), user, fresh)
    unrotated = make_client(CURSOR_SECRET=SecretStr(new_secret))
    response = unrotated.get(tasks_url(user) + "/changes", params={"since": token})
    assert_error(response, 400, "validation_error")


def test_token_older_than_retention_is_410(make_client: ClientFactory) -> None:
    client = _client_with_known_secret(make_client, SYNC_RETENTION_DAYS=7)
    user = new_user_id()
    fresh = SyncToken.decode(
        CursorCodec(CURSOR_SECRET.encode()), user, changes(client, user)["next"]
    )
    codec = CursorCodec(CURSOR_SECRET.encode())
    for age_days, status in ((6.9, 200), (7.1, 410)):
        since_at = int(time.time() - age_days * 86400)
        token = SyncToken(since_at, fresh.since).encode(codec, user)
        response = client.get(tasks_url(user) + "/changes", params={"since": token})
        assert response.status_code == status, response.text
    assert response.json()["code"] == "sync_token_expired"


def test_a_token_issued_before_sync_reset_at_is_410(
    make_client: ClientFactory,
) -> None:
    """After a restore from a logical backup, an operator sets SYNC_RESET_AT:
    every token issued before it is a 410, so clients start over as the contract
    says (rotating CURSOR_SECRET, the way before, made them 400s, which a client
    does not read as "start over", and broke every list cursor too: a re-trial).
    A token issued after it syncs."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    before = changes(client, user)["next"]
    time.sleep(1.1)  # tokens carry whole seconds
    reset_at = datetime.now(UTC)
    client = _client_with_known_secret(make_client, SYNC_RESET_AT=reset_at)
    response = client.get(tasks_url(user) + "/changes", params={"since": before})
    assert_error(response, 410, "sync_token_expired")
    # Starting over in the reset's own second: a first sync is never expired.
    assert client.get(tasks_url(user) + "/changes").status_code == 200
    time.sleep(1)  # a token from the reset's own second is expired too
    after = changes(client, user)["next"]  # from scratch: never a 410
    assert changes(client, user, after)["tasks"] == []


def test_a_token_from_the_resets_own_second_is_410(make_client: ClientFactory) -> None:
    """SYNC_RESET_AT in whole seconds (Unix seconds are): a token issued in that
    second may predate the reset, and is expired (it was accepted: a restore
    trial)."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    token = changes(client, user)["next"]
    codec = CursorCodec(CURSOR_SECRET.encode())
    issued = datetime.fromtimestamp(SyncToken.decode(codec, user, token).since_at, UTC)
    client = _client_with_known_secret(make_client, SYNC_RESET_AT=issued)
    response = client.get(tasks_url(user) + "/changes", params={"since": token})
    assert_error(response, 410, "sync_token_expired")


def test_token_from_another_database_cluster_is_410(make_client: ClientFactory) -> None:
    """A snapshot from the future (a token issued before a logical restore into
    another cluster) cannot be compared with this cluster's transactions."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    future = "9000000000000:9000000000000:"
    token = SyncToken(int(time.time()), future).encode(
        CursorCodec(CURSOR_SECRET.encode()), user
    )
    response = client.get(tasks_url(user) + "/changes", params={"since": token})
    assert_error(response, 410, "sync_token_expired")


NOW = int(time.time())


def test_a_token_issued_before_origins_still_syncs(make_client: ClientFactory) -> None:
    """A token of five items (no `origin`, issued before 2026-12-07) goes on as
    before: a client updated across that release keeps its replica."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    codec = CursorCodec(CURSOR_SECRET.encode())
    since = SyncToken.decode(codec, user, changes(client, user)["next"]).since
    task = create_task(client, user)
    old = codec.encode([NOW, since, None, None, None], {"user": user, "sync": True})
    assert changes(client, user, old)["tasks"] == [task]


def test_a_page_may_end_at_any_task_id(make_client: ClientFactory) -> None:
    """The token that goes on from a page ending at the largest id (C1: up to
    2^63-1) is read back: it was refused as malformed past 10^18."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    codec = CursorCodec(CURSOR_SECRET.encode())
    upto = SyncToken.decode(codec, user, changes(client, user)["next"]).since
    token = SyncToken(NOW, None, NOW, upto, (1, 2**63 - 1)).encode(codec, user)
    response = client.get(tasks_url(user) + "/changes", params={"since": token})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "state",
    [
        (str(NOW), None, None, None, None),  # since_at a string
        (True, None, None, None, None),
        (NOW, 5, None, None, None),  # a snapshot that is not text
        (NOW, "1:2:x", None, None, None),  # nor a snapshot's text
        (NOW, None, NOW, "1:2:", ("a", 1)),
        (NOW, None, NOW, "1:2:", (1,)),
        # a first page's snapshot without the change it goes on from: a 500
        # once a missing parameter was an error (a review), never issued
        (NOW, "1:2:", NOW, "1:3:", None),
        (NOW, None, None, "1:3:", (1, 2)),
    ],
)
def test_a_signed_token_of_another_shape_is_400(
    make_client: ClientFactory, state: tuple[Any, ...]
) -> None:
    """A token signed with the secret but not of this version's shape (one a
    future or past release wrote, say) is a 400 like any bad token, never a 500."""
    client = _client_with_known_secret(make_client)
    user = new_user_id()
    token = SyncToken(*state).encode(CursorCodec(CURSOR_SECRET.encode()), user)
    response = client.get(tasks_url(user) + "/changes", params={"since": token})
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "/changes", None),
        ("POST", "/batch", {"operations": [{"op": "create", "body": {"title": "x"}}]}),
        ("DELETE", "?completed=true", None),
    ],
)
def test_offline_routes_need_the_users_token_when_auth_is_on(
    make_client: ClientFactory, method: str, suffix: str, body: Any
) -> None:
    """E10-E12 are owner-scoped like the rest: 401 without a token, 403 with
    another user's, and then nothing is written."""
    client = make_client(BETTER_AUTH_SECRET=SecretStr(SECRET))
    user = new_user_id()
    url = tasks_url(user) + suffix
    assert_error(client.request(method, url, json=body), 401, "unauthorized")
    other = {"Authorization": f"Bearer {hs_token(new_user_id())}"}
    assert_error(
        client.request(method, url, json=body, headers=other), 403, "forbidden"
    )
    own = {"Authorization": f"Bearer {hs_token(user)}"}
    assert client.request(method, url, json=body, headers=own).status_code == 200
