"""Idempotency-Key (E1, E11): a keyed request's first answer is stored with its
effects, in one transaction, and replayed to every repeat for 24 hours."""

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypedDict, TypeVar, cast

import orjson
from sqlalchemy import Table, bindparam, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from app.db.gateway import (
    Database,
    LockTimeout,
    Transaction,
    again_on_conflict,
    compile_query,
)
from app.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from app.models import IdempotencyKey
from app.schemas import TaskPublic, TaskRecord
from app.services.statements import NoRows, owned

IDEMPOTENCY: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_TTL = timedelta(hours=24)
# How long a keyed request waits for a lock: the key's (another in-flight request
# with it: 409), or one its work needs (a row, the table: 503).
IDEMPOTENCY_WAIT_MS = 5000


class _Claim(TypedDict):
    key: str


class _FirstResponse(TypedDict):
    request_hash: str
    response: str | None


_Answer = TypeVar("_Answer")


def digest(values: object) -> str:
    canonical = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_from_json(value: Any) -> TaskRecord:
    """A task read back from a stored response (datetimes parsed)."""
    return cast(TaskRecord, TaskPublic.model_validate(value).model_dump())


_this_key = IDEMPOTENCY.c.key == bindparam("key")
CLAIM_KEY = compile_query(
    insert(IDEMPOTENCY)
    .values(
        user_id=bindparam("user_id"),
        key=bindparam("key"),
        request_hash=bindparam("request_hash"),
    )
    .on_conflict_do_update(
        index_elements=[IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key],
        set_={
            "request_hash": bindparam("request_hash"),
            "response": None,
            "created_at": func.now(),
        },
        where=IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL,
    )
    .returning(IDEMPOTENCY.c.key),
    _Claim,
)
FIRST_RESPONSE = compile_query(
    select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
        owned(table=IDEMPOTENCY), _this_key
    ),
    _FirstResponse,
)
STORE_RESPONSE = compile_query(
    update(IDEMPOTENCY)
    .where(owned(table=IDEMPOTENCY), _this_key)
    .values(response=bindparam("response", type_=IDEMPOTENCY.c.response.type)),
    NoRows,
)


def _expire_keys_statement() -> Any:
    """Keys older than 24 h go without a cron: every keyed create deletes up to
    100 expired keys (anyone's: not filtered by owner, like the tombstone sweep,
    and it only deletes), oldest first. When none has expired this is a single probe of
    the created_at index (the order makes the planner take it whatever its
    statistics say); SKIP LOCKED keeps concurrent creates from queueing."""
    expired = IDEMPOTENCY.c.created_at < func.now() - IDEMPOTENCY_TTL
    key = tuple_(IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key)
    batch = select(  # owner-filter: exempt
        IDEMPOTENCY.c.user_id, IDEMPOTENCY.c.key
    )
    batch = batch.where(expired).order_by(IDEMPOTENCY.c.created_at).limit(100)
    batch = batch.with_for_update(skip_locked=True)
    sweep = delete(IDEMPOTENCY)  # owner-filter: exempt
    return sweep.where(key.in_(batch))


EXPIRE_KEYS = compile_query(_expire_keys_statement(), NoRows)


async def once(
    database: Database,
    user_id: str,
    key: str,
    request_hash: str,
    run: Callable[[Transaction], Awaitable[_Answer]],
    replay: Callable[[str], _Answer],
) -> tuple[_Answer, bool]:
    """Claim (user, key) by inserting its row, `run` and store the answer in
    the same transaction. A concurrent request with the same key waits on that
    row until this transaction ends (409 after IDEMPOTENCY_WAIT_MS), then
    `replay`s the stored answer; another body under the key is a 422. An
    expired key (older than 24 h) is claimed afresh. Run again on a Conflict
    (the whole transaction, claim included, was rolled back). The answer, and
    whether it is a replay."""
    owner = {"user_id": user_id, "key": key}

    async def claim_and_run() -> tuple[_Answer, bool]:
        claiming = True
        try:
            async with database.transaction(lock_timeout_ms=IDEMPOTENCY_WAIT_MS) as tx:
                claimed = await tx.fetch_one(
                    CLAIM_KEY, **owner, request_hash=request_hash
                )
                claiming = False
                if claimed is None:
                    first = await tx.fetch_one(FIRST_RESPONSE, **owner)
                    # The claim conflicted with this row, committed with its answer.
                    assert first is not None
                    assert first["response"] is not None
                    if first["request_hash"] != request_hash:
                        raise IdempotencyKeyReused()
                    return replay(first["response"]), True
                answer = await run(tx)
                response = orjson.dumps(answer, option=orjson.OPT_UTC_Z).decode()
                await tx.execute(STORE_RESPONSE, **owner, response=response)
                await tx.execute(EXPIRE_KEYS)
        except LockTimeout:
            if claiming:  # on the key's row: its first request is still running
                raise IdempotencyKeyInUse() from None
            raise  # the work itself waited on another lock (a task's row): a 503
        return answer, False

    return await again_on_conflict(claim_and_run)
