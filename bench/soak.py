"""Soak: two server processes on one database, a mixed workload for a while, every
connection killed once a minute (Neon scaling to zero), then a ledger check.

    PYTHONPATH=backend:. .venv/bin/python bench/soak.py [--minutes 10] [--workers 8]

Uses SOAK_DATABASE_URL (default: the local server's `soak_test` database, recreated).
Every create carries an Idempotency-Key and is retried until acknowledged, every
delete is retried until 204/404, so the client's ledger is exact: at the end the
database must hold exactly the ledger's tasks (nothing lost, nothing phantom). Reports
5xx inside and outside the fault windows and each process's RSS growth."""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
FAULT_WINDOW = 3.0  # seconds after a kill in which 503s are expected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
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
    rss_start = [psutil.Process(s.pid).memory_info().rss for s in servers]
    ledger: dict[str, set[int]] = {}
    lock = threading.Lock()
    kills: list[float] = []
    errors: list[tuple[float, int]] = []
    counts = {"requests": 0}
    stop = threading.Event()

    def request(
        client: httpx.Client, method: str, path: str, **kw: object
    ) -> httpx.Response:
        response = client.request(method, path, **kw)  # type: ignore[arg-type]
        with lock:
            counts["requests"] += 1
            if response.status_code >= 500:
                errors.append((time.monotonic(), response.status_code))
        return response

    def worker(n: int) -> None:
        user = f"soak-{n}"
        mine: set[int] = set()
        with lock:
            ledger[user] = mine
        clients = [httpx.Client(base_url=b, timeout=30) for b in bases]
        while not stop.is_set():
            client = random.choice(clients)
            roll = random.random()
            base = f"/api/{user}/tasks"
            if roll < 0.4 or not mine:
                key = uuid.uuid4().hex
                while True:  # retried until acknowledged: the key makes it safe
                    r = request(
                        client,
                        "POST",
                        base,
                        json={"title": "soak"},
                        headers={"Idempotency-Key": key},
                    )
                    if r.status_code == 201:
                        mine.add(r.json()["id"])
                        break
                    time.sleep(0.2)
            elif roll < 0.5:
                victim = random.choice(sorted(mine))
                while True:
                    r = request(client, "DELETE", f"{base}/{victim}")
                    if r.status_code in (204, 404):
                        mine.discard(victim)
                        break
                    time.sleep(0.2)
            elif roll < 0.7:
                request(
                    client, "PATCH", f"{base}/{random.choice(sorted(mine))}/complete"
                )
            elif roll < 0.9:
                request(client, "GET", f"{base}/{random.choice(sorted(mine))}")
            else:
                request(client, "GET", base, params={"limit": 50})
        for client in clients:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    killer = create_engine(url, isolation_level="AUTOCOMMIT")
    while time.monotonic() - started < args.minutes * 60:
        time.sleep(min(60, args.minutes * 60 - (time.monotonic() - started)))
        if time.monotonic() - started >= args.minutes * 60:
            break
        with killer.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        kills.append(time.monotonic())
    stop.set()
    for thread in threads:
        thread.join()
    rss_end = [psutil.Process(s.pid).memory_info().rss for s in servers]
    engine = create_engine(url)
    with engine.connect() as conn:
        stored: dict[str, set[int]] = {}
        for row in conn.execute(text("SELECT user_id, id FROM task")):
            stored.setdefault(row.user_id, set()).add(row.id)
    lost = sum(len(ids - stored.get(user, set())) for user, ids in ledger.items())
    phantom = sum(len(ids - ledger.get(user, set())) for user, ids in stored.items())
    in_window = sum(
        1 for t, _ in errors if any(0 <= t - k <= FAULT_WINDOW for k in kills)
    )
    for server in servers:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "minutes": args.minutes,
        "requests": counts["requests"],
        "kills": len(kills),
        "tasks_in_ledger": sum(len(v) for v in ledger.values()),
        "lost": lost,
        "phantom": phantom,
        "5xx_in_fault_windows": in_window,
        "5xx_outside_fault_windows": len(errors) - in_window,
        "rss_mb_start": [round(r / 2**20, 1) for r in rss_start],
        "rss_mb_end": [round(r / 2**20, 1) for r in rss_end],
    }
    print(json.dumps(report, indent=2))
    sys.exit(0 if lost == phantom == report["5xx_outside_fault_windows"] == 0 else 1)


if __name__ == "__main__":
    main()
