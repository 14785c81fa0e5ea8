"""C5: ETags, If-None-Match, If-Match, and Idempotency-Key on create."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.factories import create_task, new_user_id, task_payload, tasks_url

UPDATES = [
    ("PUT", "", {"title": "new"}),
    ("PATCH", "", {"title": "new"}),
    ("PATCH", "/complete", None),
]


def test_single_task_responses_carry_an_etag(client: TestClient) -> None:
    user = new_user_id()
    created = client.post(tasks_url(user), json=task_payload())
    task = created.json()
    url = tasks_url(user, task["id"])
    etags = [created.headers["etag"], client.get(url).headers["etag"]]
    assert etags[0] == etags[1]
    for method, suffix, body in UPDATES:
        response = client.request(method, url + suffix, json=body)
        assert response.headers["etag"] not in etags
        etags.append(response.headers["etag"])
    assert all(e.startswith('"') and e.endswith('"') for e in etags)


def test_if_none_match_current_etag_is_304(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        response = client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == etag
    client.patch(url, json={"title": "changed"})
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 200


def _variants(etag: str) -> list[str]:
    """Values that name the current version only if read loosely: RFC 9110 compares
    entity-tags character by character (a leading zero, a missing quote), and `*`
    is a wildcard only as the whole header."""
    task_id, micros = etag.strip('"').split(".")
    return [
        f'"{task_id}.0{micros}"',
        f'"0{task_id}.{micros}"',
        f'"{task_id}.{micros}',
        f"{task_id}.{micros}",
        f'"{task_id}.{micros} "',
        '"zzz", *',
    ]


@pytest.mark.parametrize(("method", "suffix", "body"), [*UPDATES, ("DELETE", "", None)])
def test_if_match_not_the_current_etag_is_412_and_changes_nothing(
    client: TestClient, method: str, suffix: str, body: Any
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    stale = client.get(url).headers["etag"]
    client.patch(url, json={"description": "someone else's edit"})
    current = client.get(url).json()
    etag = client.get(url).headers["etag"]
    # Stale, weak, not ours, or the current one only if read loosely (_variants).
    for header in (stale, f"W/{etag}", '"garbage"', *_variants(etag)):
        response = client.request(
            method, url + suffix, json=body, headers={"If-Match": header}
        )
        assert response.status_code == 412, header
        assert response.json()["code"] == "precondition_failed"
    assert client.get(url).json() == current


@pytest.mark.parametrize(("method", "suffix", "body"), [*UPDATES, ("DELETE", "", None)])
def test_if_match_current_etag_succeeds(
    client: TestClient, method: str, suffix: str, body: Any
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    response = client.request(
        method, url + suffix, json=body, headers={"If-Match": etag}
    )
    assert response.status_code in (200, 204)


def test_if_match_star_and_lists(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    response = client.patch(
        url, json={"title": "x"}, headers={"If-Match": f'"a", {etag}'}
    )
    assert response.status_code == 200
    assert (
        client.patch(url, json={"title": "y"}, headers={"If-Match": "*"}).status_code
        == 200
    )


def test_if_none_match_compares_etags_exactly(client: TestClient) -> None:
    user = new_user_id()
    url = tasks_url(user, create_task(client, user)["id"])
    for header in _variants(client.get(url).headers["etag"]):
        response = client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 200, header


def test_a_412_for_an_if_match_that_is_no_etag_of_the_task_says_so(
    client: TestClient,
) -> None:
    """A stale ETag: the task changed. A value that is no ETag of this task (the
    quotes left out, another task's): re-reading the task will not help."""
    user = new_user_id()
    url = tasks_url(user, create_task(client, user)["id"])
    stale = client.get(url).headers["etag"]
    client.patch(url, json={"title": "edited"})
    changed = client.patch(url, json={"title": "x"}, headers={"If-Match": stale})
    assert "changed" in changed.json()["detail"]
    unquoted = client.patch(
        url, json={"title": "x"}, headers={"If-Match": stale.strip('"')}
    )
    assert unquoted.status_code == 412
    assert "changed" not in unquoted.json()["detail"]
    assert "quotes" in unquoted.json()["detail"]


@pytest.mark.parametrize(("method", "suffix", "body"), [*UPDATES, ("DELETE", "", None)])
def test_if_none_match_on_a_write_is_412_when_it_matches(
    client: TestClient, method: str, suffix: str, body: Any
) -> None:
    """RFC 9110 13.1.2: a write whose If-None-Match holds the current ETag (or
    `*`: the task exists) is not performed: 412, nothing changes."""
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    for header in (etag, f"W/{etag}", f'"a", {etag}', "*"):
        response = client.request(
            method, url + suffix, json=body, headers={"If-None-Match": header}
        )
        assert response.status_code == 412, header
        assert response.json()["code"] == "precondition_failed"
        assert "If-None-Match" in response.json()["error"]
    assert client.get(url).headers["etag"] == etag


@pytest.mark.parametrize(("method", "suffix", "body"), [*UPDATES, ("DELETE", "", None)])
def test_if_none_match_on_a_write_with_another_etag_succeeds(
    client: TestClient, method: str, suffix: str, body: Any
) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    stale = client.get(url).headers["etag"]
    client.patch(url, json={"description": "edited"})
    response = client.request(
        method, url + suffix, json=body, headers={"If-None-Match": stale}
    )
    assert response.status_code in (200, 204), response.text


def test_get_with_a_stale_if_match_is_412(client: TestClient) -> None:
    """RFC 9110 13.1.1: If-Match on any method; a GET with a stale one is 412."""
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    assert client.get(url, headers={"If-Match": etag}).status_code == 200
    client.patch(url, json={"title": "changed"})
    response = client.get(url, headers={"If-Match": etag})
    assert response.status_code == 412
    assert response.json()["code"] == "precondition_failed"


def test_if_match_is_evaluated_before_if_none_match(client: TestClient) -> None:
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    both = {"If-Match": '"stale"', "If-None-Match": '"other"'}
    assert client.patch(url, json={"title": "x"}, headers=both).status_code == 412
    both = {"If-Match": etag, "If-None-Match": '"other"'}
    assert client.patch(url, json={"title": "x"}, headers=both).status_code == 200


def test_if_none_match_on_another_users_task_is_404(client: TestClient) -> None:
    owner, other = new_user_id(), new_user_id()
    task = create_task(client, owner)
    response = client.delete(
        tasks_url(other, task["id"]), headers={"If-None-Match": "*"}
    )
    assert response.status_code == 404
    assert client.get(tasks_url(owner, task["id"])).status_code == 200


def test_if_match_on_missing_task_is_404(client: TestClient) -> None:
    response = client.delete(
        tasks_url(new_user_id(), 424242), headers={"If-Match": "*"}
    )
    assert response.status_code == 404


def test_etag_of_another_task_never_matches(client: TestClient) -> None:
    user = new_user_id()
    first, second = create_task(client, user), create_task(client, user)
    other_etag = client.get(tasks_url(user, first["id"])).headers["etag"]
    response = client.delete(
        tasks_url(user, second["id"]), headers={"If-Match": other_etag}
    )
    assert response.status_code == 412


def idempotent_post(client: TestClient, user: str, key: str, **body: Any) -> Any:
    return client.post(
        tasks_url(user), json=task_payload(**body), headers={"Idempotency-Key": key}
    )


def test_idempotent_repeat_returns_the_first_response(client: TestClient) -> None:
    user = new_user_id()
    first = idempotent_post(client, user, "key-1", tags=["A"])
    client.patch(tasks_url(user, first.json()["id"]), json={"title": "edited later"})
    again = idempotent_post(client, user, "key-1", tags=["A"])
    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # byte for byte, key order too
    assert again.headers["location"] == first.headers["location"]
    assert len(client.get(tasks_url(user)).json()) == 1
    # Marked as a repeat's (Stripe's header): its task is as it was then.
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotent_repeat_with_equivalent_body_is_a_repeat(client: TestClient) -> None:
    user = new_user_id()
    first = idempotent_post(client, user, "k", title=" x ", tags=None)
    again = idempotent_post(client, user, "k", title="x", tags=[])
    assert again.json().get("id") == first.json()["id"], again.text


def test_same_key_different_body_is_422(client: TestClient) -> None:
    user = new_user_id()
    idempotent_post(client, user, "key-2", title="one")
    response = idempotent_post(client, user, "key-2", title="two")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert len(client.get(tasks_url(user)).json()) == 1


def test_keys_are_per_user(client: TestClient) -> None:
    alice, bob = new_user_id(), new_user_id()
    first = idempotent_post(client, alice, "shared-key")
    second = idempotent_post(client, bob, "shared-key")
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["user_id"] == bob


def _age_keys(engine: Engine, user: str) -> None:
    """Make the user's idempotency keys 25 hours old (past the 24 h retention)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE idempotency_key SET created_at = now() - interval '25 hours' "
                "WHERE user_id = :u"
            ),
            {"u": user},
        )


def test_expired_key_creates_anew(client: TestClient, engine: Engine) -> None:
    user = new_user_id()
    first = idempotent_post(client, user, "old-key")
    _age_keys(engine, user)
    again = idempotent_post(client, user, "old-key")
    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"]


def test_failed_validation_does_not_consume_the_key(client: TestClient) -> None:
    user = new_user_id()
    assert idempotent_post(client, user, "k", title="").status_code == 400
    assert idempotent_post(client, user, "k", title="ok").status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ünicode"])
def test_bad_idempotency_key_is_400(client: TestClient, key: str) -> None:
    user = new_user_id()
    response = client.post(
        tasks_url(user),
        json=task_payload(),
        headers={"Idempotency-Key": key.encode("utf-8")},
    )
    assert response.status_code == 400
    [field] = response.json()["fields"]
    assert field["field"] == "Idempotency-Key"
    assert field["message"] == "must be 1-255 printable ASCII characters"
    assert client.get(tasks_url(user)).json() == []


def test_an_idempotency_key_sent_twice_is_400(client: TestClient) -> None:
    """Two keys: a proxy and the app could each read another one."""
    user = new_user_id()
    response = client.post(
        tasks_url(user),
        json=task_payload(),
        headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert response.status_code == 400
    assert response.json()["fields"][0]["field"] == "Idempotency-Key"
    assert client.get(tasks_url(user)).json() == []


def test_longest_printable_key_is_accepted(client: TestClient) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3
    assert idempotent_post(client, new_user_id(), key[:255]).status_code == 201


def test_expired_keys_of_other_users_are_swept(
    client: TestClient, engine: Engine
) -> None:
    idle, active = new_user_id(), new_user_id()
    idempotent_post(client, idle, "forgotten")
    _age_keys(engine, idle)
    assert idempotent_post(client, active, "fresh").status_code == 201
    with engine.connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM idempotency_key WHERE user_id = :u"), {"u": idle}
        ).scalar_one()
    assert left == 0


def test_a_precondition_header_sent_twice_is_read_as_one_list(
    client: TestClient,
) -> None:
    """RFC 9110: a header repeated is the comma-joined list of its values, so the
    current ETag in either line counts (each line alone would be read otherwise)."""
    user = new_user_id()
    task = create_task(client, user)
    url = tasks_url(user, task["id"])
    etag = client.get(url).headers["etag"]
    for current_first in (True, False):
        lines = [etag, '"other"'] if current_first else ['"other"', etag]
        repeated = [("If-None-Match", line) for line in lines]
        assert client.get(url, headers=repeated).status_code == 304
        repeated = [("If-Match", line) for line in lines]
        response = client.patch(url, json={"title": "both"}, headers=repeated)
        assert response.status_code == 200
        etag = response.headers["etag"]
