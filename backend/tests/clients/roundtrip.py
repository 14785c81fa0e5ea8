"""A full CRUD round trip through the client openapi-python-client generates from the
live /openapi.json (backend/tests/integration/test_clients.py runs it, with the
generated package on PYTHONPATH): `python roundtrip.py BASE_URL TOKEN USER_ID`.
Any failed check raises."""

import sys
from datetime import datetime, timedelta, timezone

from task_api_client import AuthenticatedClient
from task_api_client.api.health import health
from task_api_client.api.sync import clear_completed
from task_api_client.api.tasks import (
    create_task,
    delete_task,
    get_task,
    list_tasks,
    patch_task,
    replace_task,
    toggle_task,
)
from task_api_client.models import (
    Cleared,
    ErrorBody,
    Priority,
    TaskCreate,
    TaskPatch,
    TaskPublic,
    TaskReplace,
    ToggleBody,
)


def task(parsed: object) -> TaskPublic:
    assert isinstance(parsed, TaskPublic), parsed
    return parsed


def main(base_url: str, token: str, user: str) -> None:
    client = AuthenticatedClient(base_url=base_url, token=token)
    up = health.sync_detailed(client=client)
    assert up.status_code == 200, up

    created = create_task.sync_detailed(
        user,
        client=client,
        body=TaskCreate(title="from Python", tags=["Gen"], priority=Priority.HIGH),
        idempotency_key=f"py-{user}",
    )
    assert created.status_code == 201, created.content
    first = task(created.parsed)
    assert first.tags == ["gen"]
    assert created.headers["Location"] == f"/api/{user}/tasks/{first.id}"

    listed = list_tasks.sync(user, client=client, completed=False, limit=10)
    assert isinstance(listed, list)
    assert [t.id for t in listed] == [first.id]

    one = get_task.sync_detailed(user, first.id, client=client)
    assert task(one.parsed).title == "from Python"
    etag = one.headers["ETag"]

    replaced = replace_task.sync(
        user, first.id, client=client, body=TaskReplace(title="replaced"), if_match=etag
    )
    assert task(replaced).priority == Priority.NONE

    stale = patch_task.sync(
        user, first.id, client=client, body=TaskPatch(title="lost"), if_match=etag
    )
    assert isinstance(stale, ErrorBody)
    assert stale.code == "precondition_failed"

    due = datetime(2030, 1, 1, 9, tzinfo=timezone(timedelta(hours=1)))
    patched = patch_task.sync(
        user, first.id, client=client, body=TaskPatch(description="patched", due_at=due)
    )
    assert task(patched).due_at == due

    done = toggle_task.sync(user, first.id, client=client)  # no body at all
    assert task(done).completed is True
    undone = toggle_task.sync(user, first.id, client=client, body=ToggleBody())
    assert task(undone).completed is False

    done_body = TaskCreate(title="done", completed=True)
    assert create_task.sync_detailed(user, client=client, body=done_body).parsed
    cleared = clear_completed.sync(user, client=client, completed=True)
    assert isinstance(cleared, Cleared), cleared
    assert cleared.deleted == 1

    deleted = delete_task.sync_detailed(user, first.id, client=client)
    assert deleted.status_code == 204
    gone = get_task.sync(user, first.id, client=client)
    assert isinstance(gone, ErrorBody)
    assert gone.code == "not_found"
    print("python client round trip: ok")  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:4])
