"""A worker imports only what its configuration uses: no Alembic or psycopg2 (the
migrations ran before it started), no redis without REDIS_URL, no embedded server
with a DATABASE_URL. And what it loaded is kept out of the cycle collector's way."""

import gc
import os
import subprocess
import sys

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.main import YOUNG_COLLECTION_THRESHOLD
from tests.server import BACKEND

WORKER = """
import sys
from fastapi.testclient import TestClient
from app.main import create_app
with TestClient(create_app()) as client:
    assert client.get("/api/lean/tasks").status_code == 200
    assert client.get("/health").status_code == 200
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))))
"""
NOT_NEEDED = ["alembic", "psycopg2", "redis", "pgserver"]


def test_worker_loads_no_migration_tooling_or_unused_drivers(
    database_url: str, engine: Engine
) -> None:
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "PYTHONPATH": str(BACKEND),
    }
    environment.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", WORKER, *NOT_NEEDED],
        env=environment,
        cwd=BACKEND,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""


def test_a_serving_app_keeps_its_startup_heap_out_of_the_cycle_collector(
    app: FastAPI,
) -> None:
    """Full collections walk only what serving made: a 30-40 ms pause for every
    request in flight otherwise (specs/005-performance). Undone at shutdown."""
    gc.unfreeze()
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] < YOUNG_COLLECTION_THRESHOLD
