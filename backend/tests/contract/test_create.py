"""C1/C2 E1: creating a task, and the field rules of the Task resource."""

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.factories import create_task, new_user_id, task_payload, tasks_url


def post(client: TestClient, body: object, user_id: str | None = None) -> Response:
    response: Response = client.post(tasks_url(user_id or new_user_id()), json=body)
    return response


def assert_validation_error(response: object, field: str) -> None:
    assert response.status_code == 400, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == "validation_error"
    assert field in [f["field"] for f in body["fields"]]


def test_create_returns_201_with_task_and_location(client: TestClient) -> None:
    user = new_user_id()
    response = client.post(tasks_url(user), json=task_payload())
    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"/api/{user}/tasks/{task['id']}"
    assert task["user_id"] == user
    assert isinstance(task["id"], int)
    assert task["id"] > 0


def test_create_applies_defaults(client: TestClient) -> None:
    task = create_task(client, new_user_id())
    assert task["description"] is None
    assert task["completed"] is False
    assert task["completed_at"] is None
    assert task["priority"] == "none"
    assert task["tags"] == []
    assert task["due_at"] is None
    assert task["created_at"] == task["updated_at"]


def test_create_datetimes_are_utc_with_offset(client: TestClient) -> None:
    task = create_task(client, new_user_id())
    created = datetime.fromisoformat(task["created_at"])
    offset = created.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_create_ids_are_unique_across_users(client: TestClient) -> None:
    ids = {create_task(client, new_user_id())["id"] for _ in range(3)}
    assert len(ids) == 3


def test_create_strips_title(client: TestClient) -> None:
    assert create_task(client, new_user_id(), title="  \t milk \n")["title"] == "milk"


@pytest.mark.parametrize("title", ["", "   ", "\n\t"])
def test_create_rejects_blank_title(client: TestClient, title: str) -> None:
    assert_validation_error(post(client, task_payload(title=title)), "title")


def test_create_requires_title(client: TestClient) -> None:
    assert_validation_error(post(client, {"description": "x"}), "title")


def test_create_rejects_null_title(client: TestClient) -> None:
    assert_validation_error(post(client, {"title": None}), "title")


def test_create_title_length_counts_code_points(client: TestClient) -> None:
    emoji = "\U0001f600" * 200  # 200 code points, 800 UTF-8 bytes
    assert create_task(client, new_user_id(), title=emoji)["title"] == emoji
    assert_validation_error(post(client, task_payload(title="x" * 201)), "title")


def test_create_title_length_is_after_stripping(client: TestClient) -> None:
    title = "  " + "x" * 200 + "  "
    assert create_task(client, new_user_id(), title=title)["title"] == "x" * 200


@pytest.mark.parametrize("title", [123, True, ["a"], {"a": 1}])
def test_create_rejects_non_string_title(client: TestClient, title: object) -> None:
    assert_validation_error(post(client, {"title": title}), "title")


def test_create_description_limit(client: TestClient) -> None:
    user = new_user_id()
    assert (
        create_task(client, user, description="d" * 1000)["description"] == "d" * 1000
    )
    assert_validation_error(
        post(client, task_payload(description="d" * 1001)), "description"
    )


@pytest.mark.parametrize("priority", ["none", "low", "medium", "high"])
def test_create_accepts_each_priority(client: TestClient, priority: str) -> None:
    assert create_task(client, new_user_id(), priority=priority)["priority"] == priority


@pytest.mark.parametrize("priority", ["HIGH", "urgent", "", 1])
def test_create_rejects_unknown_priority(client: TestClient, priority: object) -> None:
    assert_validation_error(post(client, task_payload(priority=priority)), "priority")


def test_create_normalises_tags(client: TestClient) -> None:
    task = create_task(
        client, new_user_id(), tags=[" Work ", "home", "WORK", "Äpfel", "home"]
    )
    assert task["tags"] == ["work", "home", "äpfel"]


def test_create_allows_twenty_distinct_tags_with_duplicates(client: TestClient) -> None:
    tags = [f"t{i}" for i in range(20)] + ["T0", "t1"]
    assert len(create_task(client, new_user_id(), tags=tags)["tags"]) == 20


def test_create_rejects_more_than_twenty_distinct_tags(client: TestClient) -> None:
    tags = [f"t{i}" for i in range(21)]
    assert_validation_error(post(client, task_payload(tags=tags)), "tags")


@pytest.mark.parametrize("tag", ["", "   ", "x" * 51])
def test_create_rejects_bad_tag_length(client: TestClient, tag: str) -> None:
    assert_validation_error(post(client, task_payload(tags=["ok", tag])), "tags[1]")


def test_create_tag_length_is_after_stripping(client: TestClient) -> None:
    assert create_task(client, new_user_id(), tags=[" " + "x" * 50 + " "])["tags"] == [
        "x" * 50
    ]


@pytest.mark.parametrize("tag", ["a\tb", "a\x00b", "a\x7fb", "a\x85b", "a\x1bb"])
def test_create_rejects_control_characters_in_tags(
    client: TestClient, tag: str
) -> None:
    assert_validation_error(post(client, task_payload(tags=[tag])), "tags[0]")


@pytest.mark.parametrize("tags", ["work", [1], None])
def test_create_tags_must_be_a_list_of_strings(
    client: TestClient, tags: object
) -> None:
    response = post(client, task_payload(tags=tags))
    if tags is None:  # null is the default, []
        assert response.status_code == 201
        assert response.json()["tags"] == []
    else:
        assert_validation_error(response, "tags" if tags == "work" else "tags[0]")


@pytest.mark.parametrize(
    "due_at",
    [
        "2026-12-01T09:30:00+02:00",
        "2026-12-01T09:30:00+0200",
        "2026-12-01T07:30:00Z",
        "2026-12-01t07:30:00z",  # RFC 3339 allows lower case
        "2026-12-01T07:30:00.000000999Z",  # Go's nanoseconds: to the microsecond
        "2026-12-01 07:30:00Z",  # RFC 3339 allows a space between date and time
        "20261201T073000Z",  # ISO 8601's basic format
        "20261201T093000.0+0200",
        "2026-12-01T07:30Z",  # minutes, or hours, are enough
        "2026-12-01T09:30+02",
        "2026-12-01T07:30:00,0Z",  # ISO 8601's decimal comma
        "2026-W49-2T07:30:00Z",  # a week date: Tuesday of week 49
    ],
)
def test_create_accepts_due_at_with_offset_and_returns_utc(
    client: TestClient, due_at: str
) -> None:
    task = create_task(client, new_user_id(), due_at=due_at)
    assert datetime.fromisoformat(task["due_at"]) == datetime(
        2026, 12, 1, 7, 30, tzinfo=UTC
    )
    assert task["due_at"].endswith(("Z", "+00:00"))


@pytest.mark.parametrize(
    "due_at",
    [
        "2026-12-01T09:30:00",
        "2026-12-01",
        1767225600,
        "1767225600",
        "tomorrow",
        "",
        "2026-12-01T09:30:00 Z",  # no space before the offset in ISO 8601
        "2026-12-01T09:30:00 +01:00",
        "2026-12-01T09:30:00\tZ",
        "2026-12-01T09:30\u000bZ",
        "2026-12-01  09:30:00Z",
        "2026-12-01\t09:30:00Z",
        "2026-12-01x09:30:00Z",  # Python's parser takes any separator
        "2026-12-01T09:30:00xZ",  # and any character before the offset
        "2026-12-01T09:30:00#+05:00",
        "2026-12-01T09:30:00,Z",
        "2026-12-01T09:30:00.Z",
        "2026-12-01T09_Z",
        "2026-12-01T09:30:00+01:00:30.5",  # an offset has no seconds
        "2026-12-01T09:30:00+01:00:30",
        "2026-12-01T0930Z",  # the extended and the basic form mixed
        "20261201T09:30Z",
    ],
)
def test_create_rejects_due_at_without_offset(
    client: TestClient, due_at: object
) -> None:
    assert_validation_error(post(client, task_payload(due_at=due_at)), "due_at")


@pytest.mark.parametrize("due_at", ["2026-12-01", "2026-12-01T09:30:00xZ"])
def test_a_refused_datetime_says_what_is_expected(
    client: TestClient, due_at: str
) -> None:
    """A date alone, or junk: the message names the form, offset included."""
    response = post(client, task_payload(due_at=due_at))
    [field] = response.json()["fields"]
    assert "UTC offset, e.g. 2026-01-31T09:00:00Z" in field["message"]


@pytest.mark.parametrize(
    "due_at",
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:00:00-05:00",
        # The range's ends: PostgreSQL would store them as -infinity / infinity.
        "0001-01-01T00:00:00Z",
        "0001-01-01T01:00:00+01:00",
        "9999-12-31T23:59:59.999999Z",
    ],
)
def test_create_rejects_due_at_outside_its_range(
    client: TestClient, due_at: str
) -> None:
    user = new_user_id()
    assert_validation_error(post(client, task_payload(due_at=due_at), user), "due_at")
    assert client.get(tasks_url(user)).json() == []


@pytest.mark.parametrize(
    "due_at", ["0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999998Z"]
)
def test_create_keeps_due_at_just_inside_its_range(
    client: TestClient, due_at: str
) -> None:
    user = new_user_id()
    task = create_task(client, user, due_at=due_at)
    assert task["due_at"] == due_at
    assert client.get(tasks_url(user, task["id"])).json()["due_at"] == due_at


def test_create_completed_sets_completed_at(client: TestClient) -> None:
    task = create_task(client, new_user_id(), completed=True)
    assert task["completed"] is True
    assert task["completed_at"] is not None


@pytest.mark.parametrize("completed", ["true", 1, 0, "false"])
def test_create_completed_must_be_boolean(
    client: TestClient, completed: object
) -> None:
    assert_validation_error(
        post(client, task_payload(completed=completed)), "completed"
    )


def test_create_ignores_read_only_fields(client: TestClient) -> None:
    user = new_user_id()
    body = task_payload(
        id=999999,
        user_id="someone-else",
        created_at="2000-01-01T00:00:00Z",
        updated_at="2000-01-01T00:00:00Z",
        completed_at="2000-01-01T00:00:00Z",
    )
    task = client.post(tasks_url(user), json=body).json()
    assert task["id"] != 999999
    assert task["user_id"] == user
    assert not task["created_at"].startswith("2000")
    assert task["completed_at"] is None


def test_create_accepts_a_task_sent_back_whole(client: TestClient) -> None:
    user = new_user_id()
    original = create_task(client, user, tags=["a"], priority="low")
    copy = client.post(tasks_url(user), json=original)
    assert copy.status_code == 201
    assert copy.json()["id"] != original["id"]
    assert copy.json()["tags"] == ["a"]


def test_create_rejects_unknown_field_by_name(client: TestClient) -> None:
    response = post(client, task_payload(colour="red"))
    assert_validation_error(response, "colour")
    assert "colour" in response.json()["detail"]


@pytest.mark.parametrize("escaped", ["nul\\u0000byte", "lone \\ud800 surrogate"])
@pytest.mark.parametrize("field", ["title", "description"])
def test_create_rejects_unstorable_text(
    client: TestClient, escaped: str, field: str
) -> None:
    body = '{"title": "ok", "%s": "%s"}' % (field, escaped)  # noqa: UP031 - raw JSON escapes
    response = client.post(
        tasks_url(new_user_id()),
        content=body,
        headers={"content-type": "application/json"},
    )
    assert_validation_error(response, field)
    if "surrogate" in escaped:  # not pydantic's "unable to parse raw data as …"
        message = response.json()["fields"][0]["message"]
        assert message.startswith("must not contain unpaired surrogates")


def test_a_lone_surrogate_in_a_name_says_so(client: TestClient) -> None:
    """An object whose name holds `\ud800` is not "not a JSON object" (a trial)."""
    response = client.post(
        tasks_url(new_user_id()),
        content=b'{"title": "ok", "\\ud800": 1}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    assert "unpaired surrogate" in response.json()["detail"]


def test_create_validation_failure_changes_nothing(client: TestClient) -> None:
    user = new_user_id()
    post(client, task_payload(title=""), user)
    assert client.get(tasks_url(user)).json() == []
