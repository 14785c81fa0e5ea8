"""`make bench`: the service against the typical implementation, side by side.

    PYTHONPATH=backend:. .venv/bin/python bench/bench.py [--large] [--duration S]
        [--warmup S] [--connections 16,64,256,1000] [--workers N] [--scenarios a,b]

Seeds PostgreSQL (BENCH_DATABASE_URL, else a private one under .data/bench-postgres),
starts each server as production runs it (uvicorn, auth on with HS256, JSON logs) pinned
to core 0 with PostgreSQL, drives it with wrk pinned to core 1, and reports per scenario
requests/s, p50/p99, non-2xx, RSS, server and PostgreSQL CPU, beside the framework
ceiling (no database) and the database ceiling (pgbench -M prepared, the same SQL).
Writes bench/results/<time>.json and prints a markdown table."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-" + "b" * 40
PER_USER = 100
SERVER_CORE, LOAD_CORE = "0", "1"
SCENARIOS = [
    "list",
    "get",
    "filtered",
    "search",
    "pages",
    "replace",
    "toggle",
    "mixed",
    "create",
    "delete",
]
REFERENCE_SCENARIOS = {"list", "get", "replace", "toggle", "mixed", "create", "delete"}
COLUMNS = (
    "user_id, id, title, description, completed, completed_at, priority, tags, "
    "due_at, created_at, updated_at"
)
# The exact SQL of each scenario, for pgbench (:u user number, :id task id).
OWNED = "user_id = 'u' || :u"
BUMP = "updated_at = greatest(clock_timestamp(), updated_at + interval '1 microsecond')"
PGBENCH = {
    "list": f"SELECT {COLUMNS} FROM task WHERE {OWNED} "
    "ORDER BY created_at DESC, id DESC LIMIT 1001;",
    "get": f"SELECT {COLUMNS} FROM task WHERE {OWNED} AND id = :id;",
    "create": "INSERT INTO task (user_id, title, description, priority, tags, "
    "created_at, updated_at) VALUES ('u' || :u, 'bench task', 'from wrk', 'high', "
    f"'{{bench}}', now(), now()) RETURNING {COLUMNS};",
    "replace": "UPDATE task SET title = 'bench task', description = 'from wrk', "
    f"priority = 'high', tags = '{{bench}}', due_at = NULL, {BUMP} "
    f"WHERE {OWNED} AND id = :id RETURNING {COLUMNS};",
    "toggle": "UPDATE task SET completed = NOT completed, completed_at = CASE WHEN "
    f"completed THEN NULL ELSE clock_timestamp() END, {BUMP} "
    f"WHERE {OWNED} AND id = :id RETURNING {COLUMNS};",
}
REF_TABLE = """
CREATE TABLE IF NOT EXISTS ref_task (
    id serial PRIMARY KEY, user_id varchar NOT NULL, title varchar NOT NULL,
    description varchar, completed boolean NOT NULL, priority varchar NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS ix_ref_task_user_id ON ref_task (user_id);
TRUNCATE ref_task;
"""
SEED = """
INSERT INTO {table} (id, user_id, title, description, completed, priority,
                     created_at, updated_at{extra_columns})
SELECT g, 'u' || ((g - 1) / {per_user} + 1), 'task ' || md5(g::text),
       'note ' || md5((g * 7)::text), mod(g, 5) = 0,
       (ARRAY['none','low','medium','high'])[1 + mod(g, 4)]{priority_cast},
       now() - g * interval '1 second', now() - g * interval '1 second'{extra_values}
FROM generate_series(1, {rows}) AS g
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(url: str, data: Path, workers: int) -> dict[str, str]:
    """Production settings, auth on (HS256), JSON logs at info."""
    os.environ["BENCH_DATA"] = str(data)
    return {
        "BENCH_DATA": str(data),
        "DATABASE_URL": url,
        "ENVIRONMENT": "production",
        "BETTER_AUTH_SECRET": SECRET,
        "CURSOR_SECRET": "c" * 40,
        "LOG_LEVEL": "info",
        "PYTHONPATH": f"{ROOT / 'backend'}:{ROOT}",
        "WEB_CONCURRENCY": str(workers),
    }


def database_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        from app.db.embedded import embedded_database_url

        url = embedded_database_url(ROOT / ".data" / "bench-postgres")
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(False)


def seed(url: str, users: int, search_tasks: int) -> None:
    from app.db.migrations import migrate

    engine = create_engine(url)
    migrate(engine)
    total = users * PER_USER
    log(f"seeding {total:,} tasks + {search_tasks:,} for the search user...")
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE task, task_tombstone, idempotency_key"))
        conn.exec_driver_sql(REF_TABLE)
        for table, ours in (("task", True), ("ref_task", False)):
            sql = SEED.format(
                table=table,
                per_user=PER_USER,
                rows=total + search_tasks,
                extra_columns=", tags, due_at" if ours else "",
                priority_cast="::task_priority" if ours else "",
                extra_values=", '{work}', CASE WHEN mod(g, 2) = 0 THEN "
                "now() + g * interval '1 minute' END"
                if ours
                else "",
            )
            conn.exec_driver_sql(sql)
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE task"))
        conn.execute(text("VACUUM ANALYZE ref_task"))
    engine.dispose()


def write_data(path: Path, users: int, search_user: int) -> None:
    exp = int(time.time()) + 86400
    tokens = ",".join(
        f'"{jwt.encode({"sub": f"u{u}", "exp": exp}, SECRET, "HS256")}"'
        for u in range(1, max(users, search_user) + 1)
    )
    path.write_text(
        f"return {{users={users}, per_user={PER_USER}, search_user={search_user}, "
        f'search_terms={{"abc","e1","7f0","task%200"}}, tokens={{{tokens}}}}}\n'
    )


def postgres_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name"])
        if p.info["name"] in ("postgres", "postmaster")
    ]


def pin(processes: list[psutil.Process], cores: str) -> None:
    for process in processes:
        subprocess.run(
            ["taskset", "-a", "-cp", cores, str(process.pid)],
            capture_output=True,
            check=False,
        )


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; processes born in between count from 0."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.port = env["PORT"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/docs", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start")
        self.startup_seconds = time.monotonic() - started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def rss_mb(self) -> float:
        workers = [
            p for p in self.processes() if p.pid != self.process.pid
        ] or self.processes()
        return max(p.memory_info().rss for p in workers) / 2**20

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a stalled server (the reference can)
            self.process.kill()
            self.process.wait()
        self.log.close()


def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    script: Path | str,
    *script_args: str,
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run on the load core: the JSON its script's `done()` prints after
    `WRKJSON`, plus `rps`."""
    command = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        *(arg for header in headers for arg in ("-H", header)),
        "-s",
        str(script),
        url,
        "--",
        *script_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"WRKJSON (\{.*\})", done.stdout)
    if match is None:
        raise RuntimeError(f"wrk failed: {done.stdout} {done.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def wrk(
    url: str, scenario: str, connections: int, seconds: float, start: int
) -> dict[str, Any]:
    script = ROOT / "bench" / "load.lua"
    return run_wrk(url, connections, seconds, script, scenario, "42", str(start))


def _first(value: str | tuple[str, ...]) -> str:
    """A URL query parameter's value (its first, when given several)."""
    return value if isinstance(value, str) else value[0]


def pgbench(
    url: str, scenario: str, connections: int, seconds: float, users: int
) -> float | None:
    sql = PGBENCH.get(scenario)
    if sql is None:
        return None
    script = (
        f"\\set u random(1, {users})\n"
        f"\\set id (:u - 1) * {PER_USER} + random(1, {PER_USER})\n{sql}\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(script)
        file.flush()
        parsed = make_url(url)
        command = [
            "taskset",
            "-c",
            LOAD_CORE,
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-j",
            "1",
            f"-c{connections}",
            f"-T{int(seconds)}",
            "-f",
            file.name,
            "-h",
            parsed.host or _first(parsed.query.get("host", "/tmp")),
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.database or "postgres",
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=False
        ).stdout
    match = re.search(r"tps = ([\d.]+)", output)
    return float(match.group(1)) if match else None


def measure(
    server: Server, scenario: str, connections: int, args: Any, ids: range
) -> dict[str, Any]:
    """`ids`: the task ids this run may delete, the first fifth for the warm-up."""
    wrk(server.url, scenario, connections, args.warmup, ids.start)
    pg_before = cpu_seconds(postgres_processes())
    mine_before = cpu_seconds(server.processes())
    result = wrk(
        server.url, scenario, connections, args.duration, ids.start + len(ids) // 5
    )
    seconds = result["seconds"]
    mine = cpu_used(mine_before, cpu_seconds(server.processes()))
    result["server_cpu"] = mine / seconds
    result["postgres_cpu"] = (
        cpu_used(pg_before, cpu_seconds(postgres_processes())) / seconds
    )
    result["rss_mb"] = server.rss_mb()
    return result


RESULTS = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.json"


def save(results: dict[str, Any]) -> Path:
    """Written after every measurement, so a crash loses nothing measured."""
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return RESULTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", default="16,64,256,1000")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    connections = [int(c) for c in args.connections.split(",")]
    users = 10_000 if args.large else 1_000
    search_tasks = 100_000 if args.large else 10_000
    url = database_url()
    seed(url, users, search_tasks)
    search_user = users + 1
    data = ROOT / ".data" / "bench-data.lua"
    data.parent.mkdir(exist_ok=True)
    write_data(data, users, search_user)
    pin(postgres_processes(), SERVER_CORE)
    env = environment(url, data, args.workers)
    uvicorn = [
        sys.executable,
        "-m",
        "uvicorn",
        "--no-access-log",
        "--workers",
        str(args.workers),
    ]
    # The service as production runs it; the ceiling with the same HTTP protocol;
    # the floor, FastAPI's bare async route, on uvicorn's defaults.
    servers = {
        "service": ("8101", [sys.executable, "-m", "app"]),
        "reference": ("8102", [*uvicorn, "--port", "8102", "bench.reference.app:app"]),
        "ceiling": (
            "8103",
            [
                *uvicorn,
                "--port",
                "8103",
                "--http",
                "app.edge.protocol:BoundedHttpToolsProtocol",
                "--factory",
                "bench.ceiling:create_app",
            ],
        ),
        "bare": (
            "8104",
            [*uvicorn, "--port", "8104", "--factory", "bench.ceiling:create_bare_app"],
        ),
    }
    results: dict[str, Any] = {"args": vars(args), "rows": [], "startup_s": {}}
    # The delete scenario's ids: the seeded tasks split between the connection
    # levels, so no run deletes what another already has.
    share = users * PER_USER // len(connections)
    ids = [range(1 + i * share, 1 + (i + 1) * share) for i in range(len(connections))]
    try:
        for name, (port, command) in servers.items():
            if name == "reference" and args.skip_reference:
                continue
            todo = (
                ["ceiling"]
                if name in ("ceiling", "bare")
                else [
                    s
                    for s in scenarios
                    if name == "service" or s in REFERENCE_SCENARIOS
                ]
            )
            for scenario in todo:
                for i, conc in enumerate(connections):
                    # A fresh server per measurement: one that stalls (the reference
                    # does, at 64 connections) cannot spoil the runs after it.
                    server = Server(name, command, {**env, "PORT": port})
                    results["startup_s"][name] = round(server.startup_seconds, 2)
                    try:
                        log(f"{name} {scenario} c={conc}")
                        row = measure(server, scenario, conc, args, ids[i])
                    finally:
                        server.stop()
                    row["stalled"] = row["requests"] == 0 or row["timeouts"] > 0
                    results["rows"].append(
                        {"impl": name, "scenario": scenario, "c": conc, **row}
                    )
                    save(results)
        for scenario in scenarios:
            for conc in connections:
                tps = pgbench(url, scenario, conc, args.duration, users)
                if tps is not None:
                    results["rows"].append(
                        {"impl": "pgbench", "scenario": scenario, "c": conc, "rps": tps}
                    )
    finally:
        pin(postgres_processes(), f"0-{(os.cpu_count() or 1) - 1}")
    path = save(results)
    print(report(results))
    log(f"wrote {path}")


HEADER = (
    "scenario",
    "c",
    "req/s",
    "reference req/s",
    "ratio",
    "p50 ms",
    "p99 ms",
    "non-2xx",
    "socket errors",
    "stalled",
    "RSS MB",
    "server CPU",
    "PG CPU",
    "DB ceiling (pgbench tps)",
)


def _ratio(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    if ref is None:
        return "n/a"
    if ref.get("stalled") or not ref["rps"]:
        return "ref stalled"
    return f"{r['rps'] / ref['rps']:.1f}x"


def _cells(r: dict[str, Any], ref: dict[str, Any] | None, pg: Any) -> list[str]:
    return [
        r["scenario"],
        str(r["c"]),
        f"{r['rps']:,.0f}",
        f"{ref['rps']:,.0f}" if ref else "-",
        _ratio(r, ref),
        f"{r['p50_ms']:.1f}",
        f"{r['p99_ms']:.1f}",
        str(r["non2xx"]),
        str(r.get("socket_errors", "")),
        "yes" if r.get("stalled") else "no",
        f"{r['rss_mb']:.0f}",
        f"{r['server_cpu']:.0%}",
        f"{r.get('postgres_cpu', 0):.0%}",
        f"{pg['rps']:,.0f}" if pg else "-",
    ]


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    find = {(r["impl"], r["scenario"], r["c"]): r for r in rows}
    table = [HEADER, tuple("---" for _ in HEADER)]
    for r in rows:
        if r["impl"] in ("service", "ceiling"):
            ref = find.get(("reference", r["scenario"], r["c"]))
            pg = find.get(("pgbench", r["scenario"], r["c"]))
            table.append(tuple(_cells(r, ref, pg)))
    lines = ["| " + " | ".join(row) + " |" for row in table]
    for c in sorted({r["c"] for r in rows if r["impl"] == "bare"}):
        full, bare = find.get(("ceiling", "ceiling", c)), find[("bare", "ceiling", c)]
        if full:
            lines.append(
                f"\nframework ceiling @{c}: every feature {full['rps']:,.0f} req/s, "
                f"bare FastAPI route {bare['rps']:,.0f} req/s "
                f"({full['rps'] / bare['rps']:.2f}x)"
            )
    lines.append(f"\nstart-up (spawn to first answer), s: {results['startup_s']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
