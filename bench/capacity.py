"""`make bench` (second part): many users, open connections and overload.

    PYTHONPATH=backend:. .venv/bin/python bench/capacity.py [--quick]

One service worker started as production starts it (`python -m app`: auth on, JSON
logs, the HTTP edge limits) pinned to core 0 with PostgreSQL, loaded by wrk on core 1
through bench/users.lua: users each on their own keep-alive connection listing,
reading and toggling in turn after exponential think times. Reports per run the
offered and answered rates, p50/p95/p99, non-2xx by status, connect and socket
errors, the fewest responses in any one second, and the worker's peak RSS.

- think:    1,000 users at ~10 s think time; 250…2,000 users at ~1 s.
- open:     10,000 open connections at 300 and 1,000 req/s.
- overload: the peak (64 connections, no think time), then 2x that rate offered
            by 4,000 users; the answered 2xx rate under overload against the peak."""

import argparse
import json
import sys
import threading
import time
from typing import Any

from bench.bench import (
    ROOT,
    Server,
    database_url,
    environment,
    log,
    pin,
    postgres_processes,
    run_wrk,
    save,
    seed,
    write_data,
)


class PeakRss:
    """Samples the server's worker RSS every 100 ms while a run goes on."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0.0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(0.1)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.peak


def users_run(
    server: Server, users: int, think_ms: float, seconds: float
) -> dict[str, Any]:
    script = ROOT / "bench" / "users.lua"
    rss = PeakRss(server)
    try:
        result = run_wrk(server.url, users, seconds, script, str(think_ms), "42")
    finally:
        peak = rss.stop()
    per_second = result.pop("per_second")[1:-1]  # drop the partial first and last
    result.update(
        users=users,
        think_ms=think_ms,
        offered_rps=round(users / (think_ms / 1000), 1) if think_ms else None,
        ok_rps=(result["requests"] - result["non2xx"]) / result["seconds"],
        min_per_second=min(per_second, default=0),
        peak_rss_mb=round(peak, 1),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    scale = 0.5 if args.quick else 1.0
    users, per_user_search = 1_000, 10_000
    url = database_url()
    seed(url, users, per_user_search)
    data = ROOT / ".data" / "bench-data.lua"
    write_data(data, users, users + 1)
    pin(postgres_processes(), "0")
    env = {**environment(url, data, workers=1), "PORT": "8111"}
    command = [sys.executable, "-m", "app"]
    runs: list[tuple[str, int, float, float]] = [
        ("think", 1_000, 10_000, 40),
        *[("think", u, 1_000, 20) for u in (250, 500, 1_000, 1_500, 2_000)],
        ("open", 10_000, 10_000 / 300 * 1000, 90),
        ("open", 10_000, 10_000 / 1_000 * 1000, 60),
        ("peak", 64, 0, 15),
    ]
    results: dict[str, Any] = {"kind": "capacity", "rows": []}
    try:
        for kind, n, think_ms, seconds in runs:
            server = Server("service", command, env)
            try:
                log(f"{kind}: {n} users, think {think_ms:.0f} ms")
                row = users_run(server, n, think_ms, seconds * scale)
            finally:
                server.stop()
            results["rows"].append({"run": kind, **row})
            save(results)
        peak = results["rows"][-1]["ok_rps"]
        overload_users = 4_000
        think_ms = overload_users / (2 * peak) * 1000
        server = Server("service", command, env)
        try:
            log(f"overload: {overload_users} users offering 2x the peak {peak:.0f}")
            row = users_run(server, overload_users, think_ms, 30 * scale)
        finally:
            server.stop()
        row["ok_vs_peak"] = round(row["ok_rps"] / peak, 2)
        results["rows"].append({"run": "overload", **row})
    finally:
        pin(postgres_processes(), "0-1")
    path = save(results)
    print(report(results["rows"]))
    log(f"wrote {path}")


def report(rows: list[dict[str, Any]]) -> str:
    header = (
        "run | users | think | offered req/s | answered req/s | 2xx req/s | p50 ms | "
        "p95 ms | p99 ms | non-2xx | connect errors | socket errors | "
        "fewest in a second | peak RSS MB"
    )
    lines = [header, " | ".join("---" for _ in header.split(" | "))]
    for r in rows:
        lines.append(
            " | ".join(
                [
                    r["run"],
                    f"{r['users']:,}",
                    f"{r['think_ms'] / 1000:.1f} s",
                    f"{r['offered_rps']:,.0f}" if r["offered_rps"] else "closed loop",
                    f"{r['rps']:,.0f}",
                    f"{r['ok_rps']:,.0f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p95_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    json.dumps({k: v for k, v in r["statuses"].items() if k[0] != "2"}),
                    str(r["connect_errors"]),
                    str(r["socket_errors"]),
                    str(r["min_per_second"]),
                    f"{r['peak_rss_mb']:.0f}",
                ]
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
