"""A worker imports only what its configuration uses: no Alembic or psycopg2 (the
migrations ran before it started), no redis without REDIS_URL, no embedded server
with a DATABASE_URL."""

import os
import subprocess
import sys

from sqlalchemy import Engine

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
