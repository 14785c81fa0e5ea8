"""The gateway's records-to-dicts functions, written for each set of columns."""

from typing import Any, cast

import pytest

from app.db.gateway import _dicts_for


@pytest.mark.parametrize(
    "names",
    [(), ("id",), ("id", "title", "due_at"), ("it's", 'say "hi"', "back\\slash")],
    ids=["none", "one", "several", "quotes"],
)
def test_each_record_becomes_a_dict_of_its_columns(names: tuple[str, ...]) -> None:
    records = [tuple(f"{name}-{row}" for name in names) for row in range(3)]
    dicts = _dicts_for(names)(cast(list[Any], records))
    assert dicts == [dict(zip(names, record, strict=True)) for record in records]
    assert dicts[0] is not dicts[1]


def test_the_function_is_written_once_per_set_of_columns() -> None:
    assert _dicts_for(("id", "title")) is _dicts_for(("id", "title"))
