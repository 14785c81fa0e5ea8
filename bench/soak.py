"""Soak: a mixed workload for a while, every database connection killed once a minute
(Neon scaling to zero), then a ledger check.

    PYTHONPATH=backend:. .venv/bin/python bench/soak.py [--minutes 10] [--workers 8]
        [--hostile]
    scripts/scale-out.sh .venv/bin/python bench/soak.py --scale-out [--minutes 3]

Default: two server processes on one database, SOAK_DATABASE_URL (default: the local
server's `soak_test` database, recreated), the load spread over both.

--scale-out (what `make scale-out-soak` runs): drives the setup scripts/scale-out.sh
started (its SCALE_OUT_* variables, tokens signed with its BETTER_AUTH_SECRET). First
the cross-instance checks of backend/tests/cross_instance.py against the instances
directly, then the load through the load balancer, with one instance SIGKILLed
half-way: its traffic must move to the others.

--hostile: the same, with a hostile load beside it for the whole run (oversized request
heads, clients trickling headers, idle connections, forged tokens); compare its
authenticated p99 and RSS with a run without.

Every create carries an Idempotency-Key and is retried until acknowledged, every
delete is retried until 204/404, and so is every batch (two creates, a toggle and a
delete, all or none by a coin) with its key, the ledger following its results: so
the client's ledger is exact, and at the end the database must hold exactly the
ledger's tasks for this run's users (nothing lost, nothing phantom). Each user also
keeps an offline replica by delta sync (pages of 50, a failed page retried later
from the same token); after a last sync it must equal the user's rows, each task's
`completed` and `updated_at` included (no change missed). Reports failures (5xx, or
no response) inside and outside the fault windows and each process's RSS growth."""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import jwt
import psutil
from sqlalchemy import create_engine, make_url, text

from app.config import Settings
from tests.cross_instance import check_across_instances

ROOT = Path(__file__).resolve().parents[1]
# A failed request is put down to a fault when it was in flight at the fault or
# started within this many seconds after it.
FAULT_WINDOW = 3.0
# A write unacknowledged this long after it was first sent is given up (the run fails).
RETRY_FOR_S = 60.0
SOAK_SECRET = "soak-secret-" + "s" * 40


def signer(secret: str) -> Callable[[str], dict[str, str]]:
    """Bearer headers for a user, each token signed once."""
    tokens: dict[str, dict[str, str]] = {}

    def auth(user: str) -> dict[str, str]:
        if user not in tokens:
            now = int(time.time())
            claims = {"sub": user, "iat": now, "exp": now + 3600}
            token = jwt.encode(claims, secret, algorithm="HS256")
            tokens[user] = {"Authorization": f"Bearer {token}"}
        return tokens[user]

    return auth


@dataclass
class Target:
    bases: list[str]  # where the load goes
    database_url: str  # the database itself, for the ledger check and the kills
    pids: list[int]  # the server processes
    auth: Callable[[str], dict[str, str]]
    victim: int | None = None  # the pid SIGKILLed half-way


@contextmanager
def two_servers() -> Iterator[Target]:
    url = os.environ.get(
        "SOAK_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/soak_test"
    )
    admin = create_engine(
        make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    name = make_url(url).database
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PYTHONPATH": str(ROOT / "backend"),
        "LOG_LEVEL": "warning",
        "ENVIRONMENT": "test",
        "BETTER_AUTH_SECRET": SOAK_SECRET,
    }
    servers = []
    for port in (8201, 8202):
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "app"],
                cwd=ROOT / "backend",
                env={**env, "PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(2)
    bases = ["http://127.0.0.1:8201", "http://127.0.0.1:8202"]
    for base in bases:
        for _ in range(100):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    try:
        yield Target(bases, url, [s.pid for s in servers], signer(SOAK_SECRET))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


@contextmanager
def scale_out() -> Iterator[Target]:
    auth = signer(os.environ["BETTER_AUTH_SECRET"])
    pids = [int(pid) for pid in os.environ["SCALE_OUT_PIDS"].split(",")]
    rate_limit = Settings(_env_file=None).rate_limit
    assert rate_limit is not None, "scale-out runs with RATE_LIMIT set"
    started = time.monotonic()
    check_across_instances(
        os.environ["SCALE_OUT_INSTANCES"].split(","), auth, rate_limit
    )
    print(f"cross-instance checks passed in {time.monotonic() - started:.1f} s")
    yield Target(
        [os.environ["SCALE_OUT_URL"]],
        os.environ["SCALE_OUT_DATABASE_URL"],
        pids,
        auth,
        victim=pids[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=8)
    # Many users per worker keep each user's request rate under RATE_LIMIT.
    parser.add_argument("--users-per-worker", type=int, default=20)
    parser.add_argument("--scale-out", action="store_true")
    parser.add_argument("--hostile", action="store_true")
    args = parser.parse_args()
    with scale_out() if args.scale_out else two_servers() as target:
        hostile = Hostile(target.bases) if args.hostile else None
        report = soak(target, args.minutes, args.workers, args.users_per_worker)
        if hostile:
            report["hostile"] = hostile.stop()
    print(json.dumps(report, indent=2))
    ok = report["lost"] == report["phantom"] == report["writes_given_up"] == 0
    ok = ok and report["replica_tasks_stale"] == report["replicas_unsynced"] == 0
    ok = ok and report["failures_outside_fault_windows"] == 0
    sys.exit(0 if ok else 1)


def soak(
    target: Target, minutes: float, workers: int, users_per_worker: int
) -> dict[str, object]:
    run = uuid.uuid4().hex[:6]
    rss_start = [psutil.Process(pid).memory_info().rss for pid in target.pids]
    ledger: dict[str, set[int]] = {}
    lock = threading.Lock()
    faults: list[float] = []
    failures: list[tuple[float, float, str]] = []  # (start, end, what): 5xx, no answer
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    served: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    victim_killed_at: list[float] = []
    replicas: dict[str, Replica] = {}
    # Writes never acknowledged: (user, last status). Their users' tasks are left
    # out of lost and phantom: such a write may or may not have been made.
    given_up: list[tuple[str, int | None]] = []
    stop = threading.Event()

    def request(
        client: httpx.Client,
        method: str,
        path: str,
        user: str,
        headers: dict[str, str] | None = None,
        **kw: object,
    ) -> httpx.Response | None:
        """The response, or None when the connection closed without one (an
        instance died mid-request): a failure, like a 5xx, never acknowledged."""
        headers = {**target.auth(user), **(headers or {})}
        start = time.monotonic()
        try:
            response = client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
        except httpx.TransportError:
            response = None
        now = time.monotonic()
        with lock:
            status = "no response" if response is None else str(response.status_code)
            statuses[status] += 1
            if response is not None:
                latencies.append(now - start)
            if response is None or response.status_code >= 500:
                failures.append((start, now, f"{method} {status}"))
            if response is not None and "x-served-by" in response.headers:
                phase = "after" if victim_killed_at else "before"
                served[phase][response.headers["x-served-by"]] += 1
        return response

    def until(
        user: str, send: Callable[[], httpx.Response | None], *done: int
    ) -> httpx.Response | None:
        """A write sent again until its status is one of `done` (a create's key,
        a delete's idempotence make that safe), every 0.2 s for RETRY_FOR_S at
        most: then given up (None), and the run fails, rather than hang on a
        server that never recovers."""
        deadline = time.monotonic() + RETRY_FOR_S
        while (r := send()) is None or r.status_code not in done:
            if time.monotonic() > deadline:
                with lock:
                    given_up.append((user, r.status_code if r is not None else None))
                return None
            time.sleep(0.2)
        return r

    def batch(client: httpx.Client, user: str, mine: set[int]) -> None:
        """Two creates, a toggle and a delete in one batch (all or none, by a coin),
        retried with its key until answered; the ledger follows the results."""
        toggled, victim = random.sample(sorted(mine), 2)
        body = {
            "atomic": random.random() < 0.5,
            "operations": [
                {"op": "create", "body": {"title": "soak batch"}},
                {"op": "create", "body": {"title": "soak batch"}},
                {"op": "toggle", "id": toggled},
                {"op": "delete", "id": victim},
            ],
        }
        key = {"Idempotency-Key": uuid.uuid4().hex}
        path = f"/api/{user}/tasks/batch"
        r = until(
            user, partial(request, client, "POST", path, user, key, json=body), 200
        )
        if r is None:
            return
        for result in r.json()["results"][:2]:
            if result["status"] == 201:
                mine.add(result["task"]["id"])
        if r.json()["results"][3]["status"] in (204, 404):
            mine.discard(victim)

    def worker(n: int) -> None:
        users = [f"soak-{run}-{n}-{u}" for u in range(users_per_worker)]
        with lock:
            for user in users:
                ledger[user] = set()
                replicas[user] = Replica()
        clients = [httpx.Client(base_url=b, timeout=30) for b in target.bases]
        while not stop.is_set():
            client = random.choice(clients)
            user = random.choice(users)
            mine = ledger[user]
            roll = random.random()
            base = f"/api/{user}/tasks"
            if roll < 0.4 or not mine:
                key = {"Idempotency-Key": uuid.uuid4().hex}
                title = {"title": "soak"}
                post = partial(request, client, "POST", base, user, key, json=title)
                r = until(user, post, 201)
                if r is not None:
                    mine.add(r.json()["id"])
            elif roll < 0.45 and len(mine) > 1:
                batch(client, user, mine)
            elif roll < 0.5:
                victim = random.choice(sorted(mine))
                gone = partial(request, client, "DELETE", f"{base}/{victim}", user)
                if until(user, gone, 204, 404) is not None:
                    mine.discard(victim)
            elif roll < 0.7:
                request(
                    client,
                    "PATCH",
                    f"{base}/{random.choice(sorted(mine))}/complete",
                    user,
                )
            elif roll < 0.85:
                request(client, "GET", f"{base}/{random.choice(sorted(mine))}", user)
            elif roll < 0.9:
                replicas[user].sync(partial(request, client, "GET", user=user), base)
            else:
                request(client, "GET", base, user, params={"limit": 50})
        for client in clients:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    killer = create_engine(target.database_url, isolation_level="AUTOCOMMIT")
    end = started + minutes * 60
    next_kill = started + 60
    victim_at = started + minutes * 30 if target.victim else end
    while (now := time.monotonic()) < end:
        time.sleep(max(0.0, min(next_kill, victim_at, end) - now))
        now = time.monotonic()
        if now >= end:
            break
        if target.victim and now >= victim_at and not victim_killed_at:
            victim = psutil.Process(target.victim)  # with its workers, if any
            for process in [*victim.children(recursive=True), victim]:
                process.kill()
            with lock:
                victim_killed_at.append(now)
            faults.append(now)
            victim_at = end
        if now >= next_kill:
            faults.append(now)
            with killer.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            next_kill += 60
    stop.set()
    for thread in threads:
        thread.join()
    with httpx.Client(base_url=target.bases[-1], timeout=30) as client:
        get = partial(request, client, "GET")
        unsynced = [
            user
            for user, replica in replicas.items()
            if not any(
                replica.sync(partial(get, user=user), f"/api/{user}/tasks")
                for _ in range(10)
            )
        ]
    alive = [pid for pid in target.pids if pid != target.victim]
    rss_end = [psutil.Process(pid).memory_info().rss for pid in alive]
    engine = create_engine(target.database_url)
    with engine.connect() as conn:
        stored: dict[str, set[int]] = {}
        versions: dict[str, dict[int, tuple[bool, datetime]]] = {}
        rows = conn.execute(
            text(
                "SELECT user_id, id, completed, updated_at FROM task "
                "WHERE user_id LIKE :run"
            ),
            {"run": f"soak-{run}-%"},
        )
        for row in rows:
            stored.setdefault(row.user_id, set()).add(row.id)
            versions.setdefault(row.user_id, {})[row.id] = (
                row.completed,
                row.updated_at,
            )
    # Every task whose version the replica has wrong, lacks, or still holds.
    stale = sum(
        len(
            {
                i
                for i, _ in set(replica.tasks.items())
                ^ set(versions.get(u, {}).items())
            }
        )
        for u, replica in replicas.items()
    )
    unsure = {user for user, _ in given_up}
    lost = sum(
        len(ids - stored.get(user, set()))
        for user, ids in ledger.items()
        if user not in unsure
    )
    phantom = sum(
        len(ids - ledger.get(user, set()))
        for user, ids in stored.items()
        if user not in unsure
    )
    outside = [
        {
            "request": what,
            "started_after_last_fault_s": round(
                start - max((f for f in faults if f <= start), default=started), 2
            ),
            "duration_s": round(end - start, 2),
        }
        for start, end, what in failures
        if not any(start <= f + FAULT_WINDOW and end >= f for f in faults)
    ]
    latencies.sort()
    report: dict[str, object] = {
        "minutes": minutes,
        "requests": sum(statuses.values()),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "statuses": dict(sorted(statuses.items())),
        "connection_kills": len(faults) - len(victim_killed_at),
        "tasks_in_ledger": sum(len(v) for v in ledger.values()),
        "lost": lost,
        "phantom": phantom,
        "writes_given_up": len(given_up),
        "writes_given_up_last_status": Counter(s for _, s in given_up).most_common(5),
        "syncs": sum(replica.syncs for replica in replicas.values()),
        "replica_tasks_stale": stale,
        "replicas_unsynced": len(unsynced),
        "failures_in_fault_windows": len(failures) - len(outside),
        "failures_outside_fault_windows": len(outside),
        "failures_outside_detail": outside[:10],
        "rss_mb_start": [round(r / 2**20, 1) for r in rss_start],
        "rss_mb_end": [round(r / 2**20, 1) for r in rss_end],
    }
    if victim_killed_at:
        report["instance_killed_after_s"] = round(victim_killed_at[0] - started, 1)
        report["served_by_before_kill"] = dict(sorted(served["before"].items()))
        report["served_by_after_kill"] = dict(sorted(served["after"].items()))
    return report


class Replica:
    """A user's tasks as an offline client holds them: each task's `completed` and
    `updated_at`, kept by delta sync."""

    def __init__(self) -> None:
        self.tasks: dict[int, tuple[bool, datetime]] = {}
        self.token: str | None = None
        self.syncs = 0
        self.lock = threading.Lock()  # one sync at a time (the final one, say)

    def sync(self, get: Callable[..., httpx.Response | None], base: str) -> bool:
        """Whether it caught up; a page that fails is asked again next time, from
        the token of the page before it."""
        with self.lock:
            while True:
                params: dict[str, str | int] = {"limit": 50}
                if self.token is not None:
                    params["since"] = self.token
                r = get(f"{base}/changes", params=params)
                if r is None or r.status_code != 200:
                    return False
                page = r.json()
                for task in page["tasks"]:
                    updated_at = datetime.fromisoformat(task["updated_at"])
                    self.tasks[task["id"]] = (task["completed"], updated_at)
                for deleted in page["deleted"]:
                    self.tasks.pop(deleted, None)
                self.token = page["next"]
                if not page["has_more"]:
                    self.syncs += 1
                    return True


# The hostile load comes from another loopback address than the users, as an
# attacker would: the limit on failed authentications is per client address.
ATTACKER = "127.0.0.2"


class Hostile:
    """Unauthenticated abuse beside the soak, each kind on its own thread: request
    heads of 256 KiB (10/s), 200 clients trickling a header line every 5 s, 1,000
    idle connections, and forged tokens (50/s). Counts what the service answered."""

    def __init__(self, bases: list[str]) -> None:
        self.hosts = [tuple(b.removeprefix("http://").split(":")) for b in bases]
        self.stop_event = threading.Event()
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        kinds = (self._big_heads, self._trickle, self._idle, self._forged)
        self.threads = [threading.Thread(target=k, daemon=True) for k in kinds]
        for thread in self.threads:
            thread.start()

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
        return dict(sorted(self.seen.items()))

    def _count(self, what: str) -> None:
        with self.lock:
            self.seen[what] += 1

    def _connect(self) -> socket.socket:
        host, port = random.choice(self.hosts)
        return socket.create_connection(
            (host, int(port)), timeout=15, source_address=(ATTACKER, 0)
        )

    def _big_heads(self) -> None:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 262_144
        while not self.stop_event.wait(0.1):
            try:
                with self._connect() as sock:
                    sock.sendall(head + b"\r\n\r\n")
                    self._count("big head: " + sock.recv(64).split(b" ")[1].decode())
            except OSError:
                self._count("big head: closed")

    def _trickle(self) -> None:
        socks: list[socket.socket] = []
        while not self.stop_event.wait(5):
            for sock in list(socks):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    socks.remove(sock)
                    self._count("trickle: cut off")
            while len(socks) < 200:
                try:
                    sock = self._connect()
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    socks.append(sock)
                except OSError:
                    self._count("trickle: refused")
                    break
        for sock in socks:
            sock.close()

    def _idle(self) -> None:
        socks: list[socket.socket] = []
        while not self.stop_event.wait(1):
            for sock in list(socks):
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        raise OSError
                except BlockingIOError:
                    continue
                except OSError:
                    socks.remove(sock)
                    sock.close()
                    self._count("idle: closed by the server")
            while len(socks) < 1000:
                try:
                    socks.append(self._connect())
                except OSError:
                    self._count("idle: refused")
                    break
        for sock in socks:
            sock.close()

    def _forged(self) -> None:
        forged = jwt.encode({"sub": "victim", "exp": 2**31}, "not-the-secret" * 3)
        headers = {"Authorization": f"Bearer {forged}"}
        bases = ["http://{}:{}".format(*h) for h in self.hosts]
        transport = httpx.HTTPTransport(local_address=ATTACKER)
        with httpx.Client(timeout=15, transport=transport) as client:
            while not self.stop_event.wait(0.02):
                url = random.choice(bases) + "/api/victim/tasks"
                try:
                    status = client.get(url, headers=headers).status_code
                    self._count(f"forged token: {status}")
                except httpx.TransportError:
                    self._count("forged token: no response")


if __name__ == "__main__":
    main()
