"""Schemathesis against the live service's own /openapi.json, with a valid token:
no 5xx, and every response conforms to the documented statuses, headers and schemas."""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.jwt_helpers import SECRET, hs_token
from tests.server import running_server

USER = "schemathesis-user"
# What the contract promises of every response: no 5xx, and each documented status,
# content type, header and body schema is the one actually sent.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(database_url: str, engine: object) -> Iterator[str]:
    with running_server(database_url, BETTER_AUTH_SECRET=SECRET) as base_url:
        yield base_url


def _check(operation: Any, live: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        if case.path_parameters and "user_id" in case.path_parameters:
            case.path_parameters["user_id"] = USER  # the token's user: past auth
        case.call_and_validate(
            base_url=live,
            headers={"Authorization": f"Bearer {hs_token(USER)}"},
            checks=CHECKS,
        )

    run()


def test_api_conforms_to_its_openapi(live: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [
        result.ok()  # type: ignore[union-attr]
        for result in schema.get_all_operations()
    ]
    assert len(operations) >= 7
    for operation in operations:
        _check(operation, live)
