// A full CRUD round trip through the client @hey-api/openapi-ts generates from the
// live /openapi.json (backend/tests/integration/test_clients.py). Type-checked with
// `tsc --noEmit`, then compiled and run with Node; any failed check throws.
import { client } from "./client/client.gen";
import {
  clearCompleted,
  createTask,
  deleteTask,
  getTask,
  health,
  listTasks,
  patchTask,
  replaceTask,
  toggleTask,
} from "./client";
import type { TaskPublic } from "./client";
import { BASE_URL, TOKEN, USER_ID } from "./config";

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function task(data: TaskPublic | undefined, what: string): TaskPublic {
  check(data !== undefined, `${what}: a task in the body`);
  return data;
}

async function main(): Promise<void> {
  client.setConfig({ baseUrl: BASE_URL, auth: () => TOKEN });

  const up = await health();
  check(up.response.status === 200 && up.data?.status === "healthy", "health");

  const created = await createTask({
    path: { user_id: USER_ID },
    body: { title: "from TypeScript", tags: ["Gen"], priority: "high" },
    headers: { "Idempotency-Key": `ts-${USER_ID}` },
  });
  check(created.response.status === 201, `create: ${created.response.status}`);
  const first = task(created.data, "create");
  check(first.tags[0] === "gen" && first.completed === false, "create: fields");
  check(
    created.response.headers.get("Location") === `/api/${USER_ID}/tasks/${first.id}`,
    "create: Location",
  );
  const ids = { user_id: USER_ID, id: first.id };

  const listed = await listTasks({
    path: { user_id: USER_ID },
    query: { completed: false, priority: ["high"], sort: "-created_at", limit: 10 },
  });
  check(listed.response.status === 200, "list");
  check(listed.data?.map((t) => t.id).join() === String(first.id), "list: ids");

  const one = await getTask({ path: ids });
  check(one.response.status === 200 && one.data?.title === "from TypeScript", "get");
  const etag = one.response.headers.get("ETag");
  check(etag !== null, "get: ETag");

  const replaced = await replaceTask({
    path: ids,
    body: { title: "replaced" },
    headers: { "If-Match": etag },
  });
  check(replaced.response.status === 200, `replace: ${replaced.response.status}`);
  check(task(replaced.data, "replace").priority === "none", "replace: defaults");

  const stale = await patchTask({
    path: ids,
    body: { title: "lost" },
    headers: { "If-Match": etag },
  });
  check(stale.response.status === 412, "patch with a stale ETag: 412");
  check(stale.error?.code === "precondition_failed", "412: typed error body");

  const patched = await patchTask({
    path: ids,
    body: { description: "patched", due_at: "2030-01-01T09:00:00+01:00" },
  });
  check(patched.data?.due_at === "2030-01-01T08:00:00Z", "patch: due_at in UTC");

  const done = await toggleTask({ path: ids }); // no body at all
  check(task(done.data, "toggle").completed === true, "toggle without a body");
  const undone = await toggleTask({ path: ids, body: {} });
  check(task(undone.data, "toggle").completed === false, "toggle with {}");

  await createTask({ path: { user_id: USER_ID }, body: { title: "done", completed: true } });
  const cleared = await clearCompleted({
    path: { user_id: USER_ID },
    query: { completed: true },
  });
  check(cleared.data?.deleted === 1, `clear completed: ${cleared.response.status}`);

  const deleted = await deleteTask({ path: ids });
  check(deleted.response.status === 204, `delete: ${deleted.response.status}`);
  const gone = await getTask({ path: ids });
  check(gone.response.status === 404 && gone.error?.code === "not_found", "gone");

  console.log("typescript client round trip: ok");
}

// Never called: tsc must reject it, as priority is an enum in the document.
export function typo(): unknown {
  // @ts-expect-error: "urgent" is not a Priority
  return listTasks({ path: { user_id: USER_ID }, query: { priority: ["urgent"] } });
}

main().catch((error: unknown) => {
  console.error(error);
  throw error;
});
