"""Hostile input never produces a 500: random bodies, paths, queries and headers."""

from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import create_task, new_user_id, tasks_url

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["title", "description", "priority", "tags", "due_at", "completed", "id", "user_id"]
) | st.text(max_size=10)
bodies = st.dictionaries(field_names, json_values, max_size=7) | json_values
segments = st.text(max_size=40).map(lambda s: quote(s, safe=""))
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
)
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=list(HealthCheck)
)


def assert_calm(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.status_code != 405:
        body = response.json()
        assert isinstance(body["error"], str)
        assert isinstance(body["code"], str)


@FUZZ
@given(body=bodies, method=st.sampled_from(["POST", "PUT", "PATCH"]))
def test_random_bodies(client: TestClient, body: Any, method: str) -> None:
    user = "fuzz-user"
    url = tasks_url(user) if method == "POST" else tasks_url(user, 1)
    assert_calm(client.request(method, url, json=body))


@FUZZ
@given(user=segments, task=segments, suffix=st.sampled_from(["", "/complete", "/x"]))
def test_random_paths(client: TestClient, user: str, task: str, suffix: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        assert_calm(client.request(method, f"/api/{user}/tasks/{task}{suffix}"))


@FUZZ
@given(
    params=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "completed",
                    "priority",
                    "tag",
                    "q",
                    "due_before",
                    "due_after",
                    "sort",
                    "limit",
                    "cursor",
                    "other",
                ]
            ),
            st.text(max_size=40),
        ),
        max_size=6,
    )
)
def test_random_query_strings(
    client: TestClient, params: list[tuple[str, str]]
) -> None:
    assert_calm(client.get(tasks_url("fuzz-user"), params=params))


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "If-Match",
                "If-None-Match",
                "Idempotency-Key",
                "X-Request-ID",
                "Content-Type",
                "Authorization",
                "Origin",
            ]
        ),
        header_values,
        max_size=4,
    )
)
def test_random_headers(client: TestClient, headers: dict[str, str]) -> None:
    user = new_user_id()
    task = create_task(client, user)
    for method, url, body in (
        ("POST", tasks_url(user), {"title": "x"}),
        ("GET", tasks_url(user, task["id"]), None),
        ("PATCH", tasks_url(user, task["id"]), {"title": "y"}),
        ("DELETE", tasks_url(user, task["id"]), None),
    ):
        assert_calm(client.request(method, url, json=body, headers=headers))
