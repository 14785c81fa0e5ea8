"""Validation rules of C1, without HTTP or a database."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.schemas import TaskCreate, TaskPatch, TaskReplace


def test_title_is_stripped() -> None:
    assert TaskCreate(title="  a  ").title == "a"


def test_tags_are_lowercased_deduplicated_in_first_order() -> None:
    assert TaskCreate(title="t", tags=["B", " a", "b", "A "]).tags == ["b", "a"]


def test_tag_lowercasing_is_unicode_aware() -> None:
    assert TaskCreate(title="t", tags=["ÉCOLE", "Straße"]).tags == ["école", "straße"]


def test_a_tag_is_at_most_50_characters_once_lower_cased() -> None:
    """U+0130 lower-cases to two code points: a stored tag is one a PUT of the
    task it came from accepts again."""
    assert TaskCreate(title="t", tags=["\u0130" * 25]).tags == ["i\u0307" * 25]
    with pytest.raises(ValidationError, match="once lower-cased"):
        TaskCreate(title="t", tags=["\u0130" * 26])


def test_control_character_categories_are_rejected() -> None:
    for ch in ("\x00", "\x1f", "\x7f", "\x80", "\x9f"):
        with pytest.raises(ValidationError):
            TaskCreate(title="t", tags=[f"a{ch}b"])


def test_non_control_unicode_is_fine_in_tags() -> None:
    tags = ["emoji-😀", "zero\u200bwidth"]
    assert TaskCreate(title="t", tags=tags).tags == tags


def test_due_at_is_normalised_to_utc() -> None:
    task = TaskCreate(title="t", due_at="2026-06-01T12:00:00-04:00")
    assert task.due_at == datetime(2026, 6, 1, 16, 0, tzinfo=UTC)
    assert task.due_at is not None
    assert task.due_at.tzinfo is UTC


def test_due_at_rejects_datetime_without_offset() -> None:
    with pytest.raises(ValidationError, match="offset"):
        TaskCreate(title="t", due_at="2026-06-01T12:00:00")


def test_read_only_fields_are_dropped_before_validation() -> None:
    data = TaskReplace.model_validate({"title": "t", "id": 5, "created_at": "garbage"})
    assert data.model_fields_set == {"title"}


def test_patch_records_which_fields_were_given() -> None:
    patch = TaskPatch.model_validate({"description": None})
    assert patch.model_fields_set == {"description"}


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        TaskPatch.model_validate({"titel": "typo"})


def test_service_records_have_exactly_the_documented_fields() -> None:
    """Responses are built from table rows (fast path); the documented shape is
    TaskPublic. Any column added to the table must be added to the docs, too."""
    from app.schemas import TaskPublic
    from app.services.statements import COLUMNS, TASK

    assert [column.name for column in COLUMNS] == list(TaskPublic.model_fields)
    assert {column.name for column in TASK.c} - set(TaskPublic.model_fields) == {
        "change_xid"  # delta sync's bookkeeping, never sent
    }
