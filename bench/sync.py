"""`make bench` (offline-first part): delta sync and batches, against their targets.

    PYTHONPATH=backend:. .venv/bin/python -m bench.sync [--duration S] [--rounds N]

One service worker started as production starts it (`python -m app`: auth on, JSON
logs) pinned to core 0 with PostgreSQL (BENCH_DATABASE_URL, else the private one
under .data/bench-postgres); wrk on core 1.

- changes-1000: `GET …/changes?since=<token>` answering 1,000 changed tasks, by wrk
  at 16 connections (target: p95 < 50 ms), and alone (1 connection).
- changes-empty against get-one: a sync with nothing changed and a single-task read,
  both at 16 connections. Target: the empty sync costs no more than the read.
- batch-100 against creates-100: one batch of 100 creates, and 100 separate
  creates, each over one keep-alive connection (httpx), median of `--rounds`.
  Target: the batch at least 10x faster.

Each wrk run also reports the CPU time the worker and PostgreSQL spent per request."""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt

from bench.bench import (
    ROOT,
    SECRET,
    Server,
    cpu_seconds,
    cpu_used,
    database_url,
    environment,
    log,
    pin,
    postgres_processes,
    run_wrk,
)

PORT = "8121"
# wrk reports p50/p95/p99 in ms; status errors are non-2xx/3xx answers.
REPORT = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p95_ms": %.3f, '
    .. '"p99_ms": %.3f, "non2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def wrk(url: str, token: str, connections: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(REPORT)
        script.flush()
        headers = [f"Authorization: Bearer {token}"]
        result = run_wrk(url, connections, seconds, script.name, headers=headers)
    result["rps"] = round(result["rps"])
    return result


def measured(
    server: Server, url: str, token: str, connections: int, seconds: float
) -> dict[str, Any]:
    """A wrk run, with the CPU time the worker and PostgreSQL spent per request:
    steadier from run to run than req/s on a shared machine."""
    ours, postgres = server.processes(), postgres_processes()
    server_before, pg_before = cpu_seconds(ours), cpu_seconds(postgres)
    result = wrk(url, token, connections, seconds)
    per_request = 1e6 / result["requests"]
    server_used = cpu_used(server_before, cpu_seconds(ours))
    pg_used = cpu_used(pg_before, cpu_seconds(postgres))
    result["server_us"] = round(server_used * per_request)
    result["pg_us"] = round(pg_used * per_request)
    return result


def creates(count: int) -> list[dict[str, Any]]:
    return [
        {"op": "create", "body": {"title": f"task {i}", "tags": ["bench"]}}
        for i in range(count)
    ]


def prepare(http: httpx.Client, base: str) -> tuple[str, str, int]:
    """A token 1,000 changes behind, one with nothing to catch up, a task id."""
    behind = http.get(f"{base}/changes").json()["next"]
    for _ in range(10):
        response = http.post(f"{base}/batch", json={"operations": creates(100)})
        response.raise_for_status()
    first = http.get(f"{base}/changes", params={"since": behind}).json()
    assert len(first["tasks"]) == 1000
    assert not first["has_more"]
    return behind, first["next"], first["tasks"][0]["id"]


def batch_against_singles(
    http: httpx.Client, base: str, rounds: int
) -> dict[str, float]:
    """Seconds for 100 creates: one batch, and 100 requests (one connection)."""
    batch, singles = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        http.post(f"{base}/batch", json={"operations": creates(100)}).raise_for_status()
        batch.append(time.perf_counter() - started)
        started = time.perf_counter()
        for operation in creates(100):
            http.post(base, json=operation["body"]).raise_for_status()
        singles.append(time.perf_counter() - started)
    batch_ms = statistics.median(batch) * 1000
    singles_ms = statistics.median(singles) * 1000
    return {
        "batch_ms": round(batch_ms, 1),
        "singles_ms": round(singles_ms, 1),
        "speedup": round(singles_ms / batch_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    url = database_url()
    # (bench.py's wrk script reads BENCH_DATA; this one needs none.)
    env = {**environment(url, Path(os.devnull), workers=1), "PORT": PORT}
    user = f"sync-{uuid.uuid4().hex[:8]}"
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, "HS256")
    results: dict[str, Any] = {"args": vars(args)}
    pin(postgres_processes(), "0")
    server = Server("service", [sys.executable, "-m", "app"], env)
    try:
        base = f"{server.url}/api/{user}/tasks"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(headers=headers, timeout=30) as http:
            behind, current, task_id = prepare(http, base)
            runs = {
                "changes-1000": (f"{base}/changes?since={behind}", 16),
                "changes-1000 alone": (f"{base}/changes?since={behind}", 1),
                "changes-empty": (f"{base}/changes?since={current}", 16),
                "get-one": (f"{base}/{task_id}", 16),
            }
            for name, (target, connections) in runs.items():
                log(f"{name} c={connections}")
                wrk(target, token, connections, 1)  # warm-up
                results[name] = measured(
                    server, target, token, connections, args.duration
                )
                results[name]["c"] = connections
            log(f"batch-100 against creates-100, {args.rounds} rounds")
            results["batch"] = batch_against_singles(http, base, args.rounds)
    finally:
        server.stop()
        pin(postgres_processes(), f"0-{(os.cpu_count() or 1) - 1}")
    print(report(results))
    out = ROOT / "bench" / "results" / f"sync-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log(f"wrote {out}")


def report(results: dict[str, Any]) -> str:
    lines = [
        "| run | connections | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| server CPU us/req | PG CPU us/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("changes-1000", "changes-1000 alone", "changes-empty", "get-one"):
        r = results[name]
        lines.append(
            f"| {name} | {r['c']} | {r['rps']:,} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['non2xx'] + r['socket_errors']} | {r['server_us']:,} | "
            f"{r['pg_us']:,} |"
        )
    b = results["batch"]
    lines += [
        "",
        f"100 creates, one keep-alive connection: batch {b['batch_ms']} ms, "
        f"100 requests {b['singles_ms']} ms: {b['speedup']}x",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
