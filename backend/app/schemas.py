"""Request and response bodies. Shape rules live here as reusable Annotated types."""

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypedDict

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.models import Priority

MAX_TASK_ID = 2**63 - 1
# The longest cursor issued: a `title` sort's holds the title, at worst 200
# characters of 6 JSON bytes each (`\u0001`), with the id and signature ~1,660
# characters of base64.
MAX_CURSOR = 2048
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$"
MAX_USER_ID = 128  # USER_ID_PATTERN's longest
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
# A value that does not match one of these patterns is told so in words, not in
# the pattern (pydantic's "String should match pattern '^[\x20-\x7e]{1,255}$'").
PATTERN_MESSAGES = {
    USER_ID_PATTERN: "must be 1-128 characters from A-Z a-z 0-9 _ - . @ :, "
    "starting with a letter or a digit",
    IDEMPOTENCY_KEY_PATTERN: "must be 1-255 printable ASCII characters",
}
READ_ONLY_FIELDS = frozenset(
    {"id", "user_id", "created_at", "updated_at", "completed_at"}
)
# A path id: any leading zeros, then at most 19 digits (all int() is given).
_DIGITS = re.compile(r"0*([0-9]{1,19})")


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL. (Nor UTF-8 a lone surrogate: pydantic
    refuses those before this runs, and `errors.validation_error` says so.)"""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Characters that render as nothing: whitespace, format characters (category Cf:
# zero-width space, word joiner, BOM, bidi marks, tag characters) and the
# default-ignorable or blank-looking ones that are not Cf (Hangul fillers, variation
# selectors, the combining grapheme joiner, the braille blank).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def _visible(value: str) -> str:
    """A title of zero-width characters is as empty as one of spaces."""
    if all(
        ch in _INVISIBLE or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
        for ch in value
    ):
        raise ValueError("must contain a visible character")
    return value


MAX_TAG_LENGTH = 50


def _tag(value: str) -> str:
    """Lower-cased, and still at most MAX_TAG_LENGTH long (U+0130 lower-cases to two
    code points): every stored tag is one a PUT of its task accepts again."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    lowered = value.lower()
    if len(lowered) > MAX_TAG_LENGTH:
        raise ValueError(
            f"must be at most {MAX_TAG_LENGTH} characters once lower-cased"
        )
    return lowered


def _unique_tags(tags: list[str]) -> list[str]:
    unique = list(dict.fromkeys(tags))
    if len(unique) > 20:
        raise ValueError("at most 20 distinct tags")
    return unique


# asyncpg sends datetime.min and datetime.max as -infinity and infinity, which come
# back without an offset: every datetime taken lies strictly between them.
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_OUT_OF_RANGE = (
    "must be after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z"
)


# The forms of ISO 8601 and RFC 3339 an input datetime may take: a calendar or week
# date, `T` (RFC 3339: `t` or a space), hours with optional minutes, seconds and a
# fraction (`.` or `,`), all in the extended form (`-` and `:`) or all in the basic
# one, then the offset (`Z`, `±hh`, `±hh:mm` or `±hhmm`, as strftime's `%z` writes
# it, after either form). Python's parser, which reads the values, also takes junk
# before the offset (`09:00:00xZ`), offsets with seconds, and a date and a time in
# different forms. The offset is optional here so that a naive value gets its message.
_OFFSET = r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"  # a final `z` is read as `Z`
_ISO_DATETIME = re.compile(
    r"[0-9]{4}-(?:[0-9]{2}-[0-9]{2}|W[0-9]{2}-[0-9])[Tt ]"
    r"[0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?)?" + _OFFSET + "|"
    r"[0-9]{4}(?:[0-9]{4}|W[0-9]{3})[Tt ]"
    r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[.,][0-9]+)?)?)?" + _OFFSET,
    re.ASCII,
)

# A time, then a space where the offset's sign was: a query's unencoded `+`.
_PLUS_READ_AS_SPACE = re.compile(
    r"[Tt][0-9]{2}(?::?[0-9]{2}){0,2}(?:[.,][0-9]+)? [0-9]{2}(?::?[0-9]{2})?$"
)


def _aware_datetime(value: object) -> datetime:
    """An ISO 8601 string with an explicit offset; the server never guesses."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        parsed = value
    elif isinstance(value, str):
        if value.endswith("z"):  # RFC 3339 allows it; Python's parser does not
            value = value[:-1] + "Z"
        try:
            if not _ISO_DATETIME.fullmatch(value):
                raise ValueError
            parsed = datetime.fromisoformat(value)
        except ValueError:
            hint = ""
            if _PLUS_READ_AS_SPACE.search(value):  # ?due_after=…09:00+01:00 unencoded
                hint = " (in a URL, send + as %2B: a bare + reads as a space)"
            raise ValueError(
                "must be an ISO 8601 datetime with a UTC offset, e.g. "
                f"2026-01-31T09:00:00Z{hint}"
            ) from None
        if parsed.tzinfo is None:
            raise ValueError("must include a UTC offset, e.g. 2026-01-31T09:00:00Z")
    else:
        raise ValueError("must be an ISO 8601 datetime string with a UTC offset")
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(_OUT_OF_RANGE) from None
    if not _EARLIEST < utc < _LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return utc


def _decimal(maximum: int) -> Callable[[object], object]:
    """A number as a path or a query writes it: decimal digits, 1 to `maximum`,
    one message for every way it can be wrong (int() would also take "+5", " 5"
    and "1_0", and pydantic "1.0")."""

    def parse(value: object) -> object:
        if isinstance(value, str):
            digits = _DIGITS.fullmatch(value)
            number = int(digits[1]) if digits else 0
            if not 1 <= number <= maximum:
                raise ValueError(f"must be a decimal integer from 1 to {maximum}")
            return number
        return value

    return parse


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_storable),
    AfterValidator(_visible),
]
Description = Annotated[
    str, StringConstraints(max_length=1000), AfterValidator(_storable)
]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LENGTH),
    AfterValidator(_storable),
    AfterValidator(_visible),
    AfterValidator(_tag),
]
Tags = Annotated[list[Tag], AfterValidator(_unique_tags)]
AwareDatetime = Annotated[
    datetime, BeforeValidator(_aware_datetime), Field(examples=["2026-12-01T09:00:00Z"])
]
# Documented as the ids the API sends (`TaskPublic.id`): an integer, with no
# maximum (FastAPI's document model would write it as a float,
# 9.223372036854776e+18, one past the largest id) and no `format: int64` (which
# hey-api makes a `bigint` it sends as a string, a 400, while the ids it reads are
# numbers: a trial).
_TASK_ID_SCHEMA = WithJsonSchema({"type": "integer", "minimum": 1, "examples": [1]})
TaskId = Annotated[
    int,
    Field(ge=1, le=MAX_TASK_ID),
    BeforeValidator(_decimal(MAX_TASK_ID)),
    _TASK_ID_SCHEMA,
]
# In a JSON body an id is a JSON integer: not `true`, `"1"` or `1.0`.
JsonTaskId = Annotated[StrictInt, Field(ge=1, le=MAX_TASK_ID), _TASK_ID_SCHEMA]
MAX_LIMIT = 1000
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(_decimal(MAX_LIMIT))]


def _document_read_only(schema: dict[str, Any]) -> None:
    """The read-only fields a client may send back (a whole task from a GET) are
    listed as such: a gateway or client validating requests against the document
    (`additionalProperties: false`) accepts what the service accepts."""
    task = TaskPublic.model_json_schema()["properties"]
    schema["properties"].update(
        {name: {**task[name], "readOnly": True} for name in sorted(READ_ONLY_FIELDS)}
    )


class _TaskInput(BaseModel):
    """Unknown fields are rejected by name; read-only ones are ignored."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_read_only)

    @model_validator(mode="before")
    @classmethod
    def _drop_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in READ_ONLY_FIELDS}
        return data

    @field_validator("title", check_fields=False)
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null")
        return value

    @field_validator("completed", mode="before", check_fields=False)
    @classmethod
    def _null_is_not_completed(cls, value: object) -> object:
        """`completed: null` is cleared, as every other optional field: false."""
        return False if value is None else value


def _query_bool(value: object) -> object:
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


def _search_text(value: str) -> str:
    """`q`: no control characters."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _empty_is_none(value: str | None) -> str | None:
    """`q`, `cursor` and `since` sent empty: not sent. An empty `q` is no filter
    (every text holds the empty string), an empty page token the first page or a
    first sync, as page tokens go: a search box or a stored token bound to a
    generated client sends it empty until there is one (trials: a 400 for each)."""
    return value or None


SortKey = Literal[
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "due_at",
    "-due_at",
    "priority",
    "-priority",
    "title",
    "-title",
]


class TaskListQuery(BaseModel):
    """E2's query options (CONTRACT C4). Unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    completed: Annotated[bool | None, BeforeValidator(_query_bool)] = None
    priority: list[Priority] = Field(default_factory=list)
    tag: list[Tag] = Field(default_factory=list)
    q: Annotated[
        str | None,
        StringConstraints(max_length=200),
        AfterValidator(_search_text),
        AfterValidator(_empty_is_none),
    ] = None
    due_before: AwareDatetime | None = None
    due_after: AwareDatetime | None = None
    sort: SortKey = "-created_at"
    limit: Limit = MAX_LIMIT
    cursor: Annotated[
        str | None,
        StringConstraints(max_length=MAX_CURSOR),
        AfterValidator(_empty_is_none),
    ] = None

    def filters(self) -> dict[str, Any]:
        """The filter set in a canonical form: a cursor is bound to it."""
        return {
            "completed": self.completed,
            "priority": sorted(set(self.priority)),
            "tag": sorted(set(self.tag)),
            "q": self.q,
            "due_before": self.due_before.isoformat() if self.due_before else None,
            "due_after": self.due_after.isoformat() if self.due_after else None,
        }


class ChangesQuery(BaseModel):
    """E10's query options (CONTRACT C9). Unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    since: Annotated[
        str | None, StringConstraints(max_length=16_000), AfterValidator(_empty_is_none)
    ] = None
    limit: Limit = MAX_LIMIT


class ClearQuery(BaseModel):
    """E12's query (CONTRACT C9). Unknown parameters are ignored; E2's other
    options are refused (routes/sync.py)."""

    model_config = ConfigDict(extra="ignore")

    # A boolean in the document, as E2's `completed` is: generated clients take
    # `true` (they typed the string "true", and refused `true`), and send "true".
    completed: Annotated[
        Literal["true"], WithJsonSchema({"type": "boolean", "const": True})
    ] = Field(
        description="Required, and only `true`: never delete everything",
        examples=[True],
    )


# Absent: unchanged (PATCH, PUT) or false (POST); null: false, as "cleared".
Completed = StrictBool | None


class TaskCreate(_TaskInput):
    title: Title
    description: Description | None = None
    priority: Priority | None = None
    tags: Tags | None = None
    due_at: AwareDatetime | None = None
    completed: Completed = None


class TaskReplace(TaskCreate):
    """PUT: the whole content; omitted optional fields return to their defaults."""


class TaskPatch(_TaskInput):
    """PATCH: absent = unchanged, null = cleared."""

    title: Annotated[
        Title | None,
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200}),
    ] = None
    description: Description | None = None
    priority: Priority | None = None
    tags: Tags | None = None
    due_at: AwareDatetime | None = None
    completed: Completed = None


class ToggleBody(_TaskInput):
    """E6 takes no fields: an empty body or `{}`."""


UtcDatetime = Annotated[datetime, AfterValidator(lambda value: value.astimezone(UTC))]


class TaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    completed_at: UtcDatetime | None
    priority: Priority
    tags: list[str]
    due_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ChangesPublic(BaseModel):
    """E10: changed tasks (latest version), deleted ids, and where to go on."""

    tasks: list[TaskPublic]
    deleted: list[int]
    next: str = Field(description="`since` for the next page, or the next sync")
    has_more: bool = Field(description="true: more of this sync; follow `next` now")


Ref = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_storable)
]
# A task's body nests two levels (an object, its tags); an op's body deeper than
# this is refused whole, before anything walks it recursively.
MAX_BODY_DEPTH = 32


def _nested_within(value: Any, levels: int) -> bool:
    """Whether `value` (parsed JSON) nests at most `levels` arrays and objects."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return True
    return levels > 0 and all(_nested_within(item, levels - 1) for item in value)


BatchOp = Literal["create", "replace", "patch", "toggle", "delete"]


_OP_BODY_SCHEMA = {
    "anyOf": [
        *(
            {"$ref": f"#/components/schemas/{model.__name__}"}
            for model in (TaskCreate, TaskReplace, TaskPatch)
        ),
        {"type": "null"},
    ]
}


class BatchOperation(BaseModel):
    """One operation of an E11 batch, the twin of a single request: `create` (`body`
    as POST's), `replace` (as PUT's), `patch` (as PATCH's), and `toggle` and `delete`
    (no `body`, or `{}`: as theirs). Every op but `create` names its task by exactly
    one of `id` and `target`, the `ref` of an earlier create in the same batch;
    `if_match` goes with `id` only. Refs are unique within a batch."""

    model_config = ConfigDict(extra="forbid")

    op: BatchOp
    ref: Ref | None = Field(default=None, description="The client's name for it")
    id: JsonTaskId | None = Field(default=None, description="The task (all but create)")
    target: Ref | None = Field(
        default=None, description="Or: the task an earlier create (by its ref) made"
    )
    if_match: Annotated[str | None, StringConstraints(max_length=1000)] = Field(
        default=None, description="As the If-Match header (with `id` only)"
    )
    # Validated as its op's body when the op runs (a bad one fails that op alone);
    # documented as the bodies it may be, so generated clients type it.
    body: Annotated[Any, WithJsonSchema(_OP_BODY_SCHEMA)] = Field(
        default=None, description="The single request's body (create, replace, patch)"
    )

    @field_validator("body")
    @classmethod
    def _shallow(cls, body: Any) -> Any:
        if not _nested_within(body, MAX_BODY_DEPTH):
            raise ValueError(f"nests deeper than {MAX_BODY_DEPTH} levels")
        return body

    @model_validator(mode="after")
    def _names_its_task(self) -> "BatchOperation":
        if self.op == "create":
            if self.id is not None or self.target is not None:
                raise ValueError("create takes neither id nor target")
            if self.if_match is not None:
                raise ValueError("create takes no if_match")
        elif (self.id is None) == (self.target is None):
            raise ValueError(f"{self.op} needs exactly one of id and target")
        if self.target is not None and self.if_match is not None:
            raise ValueError(
                "if_match needs an id: a task made in this batch has no ETag"
            )
        return self


def _operation_error(index: int, field: str, message: str) -> PydanticCustomError:
    """An error found across operations, named as one operation's own field
    (`operations[1].ref`) by the 400: `errors.validation_error` reads `at`."""
    return PydanticCustomError("batch_operation", message, {"at": (index, field)})


class BatchRequest(BaseModel):
    """E11: 1-100 operations, applied in order."""

    model_config = ConfigDict(extra="forbid")

    atomic: StrictBool = Field(default=False, description="All or nothing")
    operations: list[BatchOperation] = Field(min_length=1, max_length=100)

    @field_validator("operations")
    @classmethod
    def _refs(cls, operations: list[BatchOperation]) -> list[BatchOperation]:
        """Refs are unique; a target is the ref of an earlier create."""
        refs: set[str] = set()
        created: set[str] = set()
        for index, operation in enumerate(operations):
            if operation.target is not None and operation.target not in created:
                raise _operation_error(
                    index, "target", "no earlier create has this ref"
                )
            if operation.ref is not None:
                if operation.ref in refs:
                    raise _operation_error(index, "ref", "used twice")
                refs.add(operation.ref)
                if operation.op == "create":
                    created.add(operation.ref)
        return operations


class Cleared(BaseModel):
    """E12: how many completed tasks were deleted."""

    deleted: int


class TaskRecord(TypedDict):
    """A task row as the service hands it to the HTTP layer: TaskPublic's fields,
    straight from the database and serialised with orjson (see api/http.py).
    TaskPublic stays the documented shape; a unit test keeps the two in step, in
    the same order (a replayed create, read back through TaskPublic, is then the
    first response byte for byte)."""

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    completed_at: datetime | None
    priority: str
    tags: list[str]
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error response, whatever produced it (CONTRACT C3)."""

    error: str
    code: str
    detail: str = Field(description="What failed, and what to do about it")
    fields: list[FieldError] | None = None
    request_id: str | None = None


class Health(BaseModel):
    status: str
    database: str
    error: str | None = None
    code: str | None = None
    detail: str | None = None


class BatchResult(BaseModel):
    ref: str | None = None
    status: int = Field(description="The status the single request would have had")
    task: TaskPublic | None = None
    etag: str | None = None
    error: ErrorBody | None = None


class BatchResults(BaseModel):
    results: list[BatchResult]
