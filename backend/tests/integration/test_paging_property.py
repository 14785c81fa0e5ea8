"""C4 property: for random data, filters and sorts, walking the pages with the cursor
yields exactly the filtered, sorted list: nothing skipped, nothing repeated."""

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import new_user_id, tasks_url

RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SORTS = [
    p + k
    for p in ("", "-")
    for k in ("created_at", "updated_at", "due_at", "priority", "title")
]

tasks = st.lists(
    st.fixed_dictionaries(
        {
            # lower-case ASCII letters only: every collation orders them alike
            "title": st.text(alphabet="abc", min_size=1, max_size=3),
            "priority": st.sampled_from(list(RANK)),
            "tags": st.lists(st.sampled_from(["x", "y", "z"]), max_size=2),
            "due_at": st.one_of(
                st.none(),
                st.integers(0, 5).map(lambda d: (BASE + timedelta(days=d)).isoformat()),
            ),
            "completed": st.booleans(),
        }
    ),
    max_size=14,
)
queries = st.fixed_dictionaries(
    {"sort": st.sampled_from(SORTS), "limit": st.integers(1, 4)},
    optional={
        "completed": st.sampled_from(["true", "false"]),
        "priority": st.sampled_from(list(RANK)),
        "tag": st.sampled_from(["x", "y"]),
        "q": st.sampled_from(["a", "b", "ab"]),
        "due_after": st.just((BASE + timedelta(days=2)).isoformat()),
    },
)


def _matches(task: dict[str, Any], query: dict[str, Any]) -> bool:
    if "completed" in query and task["completed"] != (query["completed"] == "true"):
        return False
    if "priority" in query and task["priority"] != query["priority"]:
        return False
    if "tag" in query and query["tag"] not in task["tags"]:
        return False
    if "q" in query and query["q"] not in task["title"]:
        return False
    if "due_after" in query:
        due = task["due_at"]
        return due is not None and datetime.fromisoformat(
            due
        ) >= datetime.fromisoformat(query["due_after"])
    return True


def _expected(stored: list[dict[str, Any]], query: dict[str, Any]) -> list[int]:
    key = query["sort"].removeprefix("-")
    descending = query["sort"].startswith("-")
    rows = [t for t in stored if _matches(t, query)]
    if key == "due_at":  # undated last in both directions
        dated = sorted(
            (t for t in rows if t["due_at"]),
            key=lambda t: (datetime.fromisoformat(t["due_at"]), t["id"]),
            reverse=descending,
        )
        undated = sorted(
            (t for t in rows if not t["due_at"]),
            key=lambda t: t["id"],
            reverse=descending,
        )
        return [t["id"] for t in dated + undated]

    def value(task: dict[str, Any]) -> Any:
        if key == "priority":
            return RANK[task["priority"]]
        if key == "title":
            return task["title"].lower()
        return datetime.fromisoformat(task[key])

    ordered = sorted(rows, key=lambda t: (value(t), t["id"]), reverse=descending)
    return [t["id"] for t in ordered]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=tasks, query=queries)
def test_pages_union_is_the_sorted_filtered_list(
    client: TestClient, data: list[dict[str, Any]], query: dict[str, Any]
) -> None:
    user = new_user_id()
    stored = []
    for body in data:
        response = client.post(tasks_url(user), json=body)
        assert response.status_code == 201
        stored.append(response.json())
    seen: list[int] = []
    params = dict(query)
    for _ in range(len(stored) + 2):
        response = client.get(tasks_url(user), params=params)
        assert response.status_code == 200
        page = [t["id"] for t in response.json()]
        assert len(page) <= query["limit"]
        seen.extend(page)
        if "x-next-cursor" not in response.headers:
            break
        params = {**query, "cursor": response.headers["x-next-cursor"]}
    assert seen == _expected(stored, query)
