"""C3: how validation errors become the error body."""

import json

from app.edge.protocol import (
    HEAD_TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    canned_response,
    timed_out,
)
from app.errors import (
    AppError,
    InvalidJSON,
    ValidationFailed,
    undecodable_body,
    validation_error,
)


def test_field_paths_are_readable() -> None:
    error = validation_error(
        [
            {
                "loc": ("body", "tags", 2),
                "msg": "String should have at least 1 character",
                "type": "x",
            },
            {
                "loc": ("path", "user_id"),
                "msg": "Value error, bad",
                "type": "value_error",
            },
            {
                "loc": ("body", "colour"),
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            },
        ]
    )
    assert isinstance(error, ValidationFailed)
    assert error.fields is not None
    assert [(f.field, f.message) for f in error.fields] == [
        ("tags[2]", "String should have at least 1 character"),
        ("user_id", "bad"),
        ("colour", "Unknown field"),
    ]


def test_whole_body_errors_are_invalid_json() -> None:
    assert isinstance(
        validation_error([{"loc": ("body",), "msg": "x", "type": "dict_type"}]),
        InvalidJSON,
    )
    assert isinstance(
        validation_error([{"loc": ("body", 0), "msg": "x", "type": "json_invalid"}]),
        InvalidJSON,
    )


def _subclasses(cls: type[AppError]) -> set[type[AppError]]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


def test_every_error_has_a_detail_of_its_own() -> None:
    """Frontends show `body.detail`: every error class says more than its message."""
    for error in _subclasses(AppError):
        assert error.detail, error
        assert error.detail != error.message, error
        # Not the 500's "something unexpected failed", inherited by oversight.
        assert error.status_code == 500 or error.detail != AppError.detail, error


def test_errors_answered_before_the_app_carry_detail_too() -> None:
    for error in (HEAD_TOO_LARGE, timed_out(10), TOO_MANY_CONNECTIONS):
        body = json.loads(canned_response(error, "an-id").partition(b"\r\n\r\n")[2])
        assert body["detail"], body


def test_fastapis_undecodable_body_400_is_invalid_json_naming_the_cause() -> None:
    causes = {
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"): "UTF-8",
        RecursionError(): "nested",
        ValueError("Exceeds the limit (4300 digits)"): "digits",
    }
    for cause, says in causes.items():
        invalid = undecodable_body(cause)  # FastAPI's 400 is raised from it
        assert isinstance(invalid, InvalidJSON)
        assert says in invalid.detail
