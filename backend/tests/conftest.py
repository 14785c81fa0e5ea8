"""A real PostgreSQL for every test: one migrated `*_test` database per run, which
every test shares. Tests stay apart by owner: each makes its own user ids (every
query is filtered by owner), so nothing has to be rolled back, and the app under test
runs its real pool, statements and transactions. The database is dropped at the end."""

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.engine import URL

from app.config import PROJECT_ROOT, Settings
from app.db.embedded import embedded_database_url
from app.db.migrations import migrate, sync_engine
from app.edge import ratelimit
from app.main import create_app

ClientFactory = Callable[..., TestClient]


def _server_url() -> URL:
    raw = os.environ.get("TEST_DATABASE_URL") or embedded_database_url(
        PROJECT_ROOT / ".data" / "test-postgres"
    )
    url = make_url(raw)
    return url.set(drivername="postgresql+psycopg2")


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty `taskapi_<random>_test` database; drop it afterwards."""
    server = _server_url()
    name = f"taskapi_{uuid.uuid4().hex[:10]}_test"
    assert name.endswith("_test"), "tests only ever touch a *_test database"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = server.set(database=name, drivername="postgresql")
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The run's database, migrated for real by the `engine` fixture."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(ENVIRONMENT="test", DATABASE_URL=database_url, _env_file=None)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """psycopg2, for migrating the run's database and for setting up test data
    the API cannot make (e.g. an idempotency key 25 hours old)."""
    engine = sync_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_client(settings: Settings, engine: Engine) -> Iterator[ClientFactory]:
    """Clients of apps built with some settings changed; each app runs its lifespan
    (pool, schema check) for the test's duration."""
    with ExitStack() as stack:

        def make(**env: Any) -> TestClient:
            app = create_app(settings.model_copy(update=env))
            client = TestClient(app, raise_server_exceptions=False)
            return stack.enter_context(client)

        yield make


@pytest.fixture
def one_rate_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process rate limits' windows do not end during the test: a minute's
    could, and its counts start again (a review: a test counting to a 429)."""
    now = time.time()
    clock = SimpleNamespace(time=lambda: now, monotonic=time.monotonic)
    monkeypatch.setattr(ratelimit, "time", clock)


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries the marker of its layer (its folder)."""
    for item in items:
        for layer in ("unit", "integration", "contract"):
            if f"/tests/{layer}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, layer))
