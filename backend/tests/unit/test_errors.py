"""C3: how validation errors become the error body."""

from app.errors import InvalidJSON, ValidationFailed, validation_error


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
