"""A noisy neighbour: one user's searches of a 100,000-task list at 24 connections,
beside other users' reads at 4, with each user's share of a worker
(USER_MAX_ACTIVE) as set by default and, side by side, as large as the pool
(no share). One worker, production settings, as bench/bench.py runs it.
`--flood`: the user sends its cheapest read (one task of its list) instead, from
`--noisy` connections: past ~2,000 its requests waiting for their turn would fill
the worker's in-flight places (HTTP_MAX_IN_FLIGHT) but for `edge/shares.py`.

    BENCH_DATABASE_URL=postgresql://… PYTHONPATH=backend:. python -m bench.neighbour
    … python -m bench.neighbour --flood --noisy 2200
"""

import argparse
import os
import sys
import threading
import time
from typing import Any

from bench.bench import (
    ROOT,
    SERVER_CORE,
    Server,
    database_url,
    environment,
    pin,
    postgres_processes,
    seed,
    write_data,
    wrk,
)

USERS = 1_000
SEARCH_TASKS = 100_000


def _line(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['non2xx']} | {r['timeouts']} |"
    )


def _search(url: str, args: argparse.Namespace, into: dict[str, Any]) -> None:
    """The searches (or the flood), started first and ended last around the reads."""
    scenario = "flood" if args.flood else "search"
    into.update(wrk(url, scenario, args.noisy, args.duration + 2, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument(
        "--noisy", type=int, default=24, help="the searches' connections"
    )
    parser.add_argument(
        "--flood", action="store_true", help="one task read instead of searches"
    )
    args = parser.parse_args()
    url = database_url()
    seed(url, USERS, SEARCH_TASKS)
    data = ROOT / ".data" / "bench-data.lua"
    data.parent.mkdir(exist_ok=True)
    write_data(data, USERS, USERS + 1)
    pin(postgres_processes(), SERVER_CORE)
    env = environment(url, data, 1)
    noisy_name = "flood" if args.flood else "searches"
    lines = [
        "| share, run | req/s | p50 ms | p99 ms | non-2xx | timeouts |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    try:
        for share, setting in (("none", "1000000"), ("default", "")):
            server = Server(
                "service",
                [sys.executable, "-m", "app"],
                {**env, "PORT": "8105", "USER_MAX_ACTIVE": setting},
            )
            try:
                alone = wrk(server.url, "get", 4, args.duration, 1)
                searches: dict[str, Any] = {}
                noisy = threading.Thread(
                    target=_search, args=(server.url, args, searches)
                )
                noisy.start()
                time.sleep(1)
                beside = wrk(server.url, "get", 4, args.duration, 1)
                noisy.join()
            finally:
                server.stop()
            lines += [
                _line(f"{share}: reads alone", alone),
                _line(f"{share}: reads beside the searches", beside),
                _line(
                    f"{share}: the {noisy_name} ({args.noisy} connections)", searches
                ),
            ]
    finally:
        pin(postgres_processes(), f"0-{(os.cpu_count() or 1) - 1}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
