"""A real PostgreSQL for every test: one migrated `*_test` database per run, and a
rolled-back transaction per test that every session (the test's and each request's)
joins through savepoints."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from app.api.deps import get_sessions
from app.config import Settings
from app.db.engine import (
    PROJECT_ROOT,
    SessionFactory,
    Sessions,
    create_db_engine,
    embedded_database_url,
)
from app.db.migrations import migrate
from app.main import create_app


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
        yield server.set(database=name).render_as_string(hide_password=False)
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
    return Settings(ENVIRONMENT="test", DATABASE_URL=database_url, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def engine(settings: Settings, database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(settings, database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="READ COMMITTED")
        transaction = conn.begin()
        yield conn
        transaction.rollback()


@pytest.fixture
def sessions(connection: Connection) -> SessionFactory:
    return sessionmaker(
        bind=connection,
        class_=Session,
        expire_on_commit=False,
        join_transaction_mode="create_savepoint",
    )


@pytest.fixture
def app(settings: Settings, engine: Engine, sessions: SessionFactory) -> FastAPI:
    app = create_app(settings, engine)
    app.dependency_overrides[get_sessions] = lambda: Sessions(sessions, sessions)
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    # Not entered as a context manager: the lifespan (migrations, pool disposal)
    # is the session's business here, and is tested against a real server.
    return TestClient(app, raise_server_exceptions=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries the marker of its layer (its folder)."""
    for item in items:
        for layer in ("unit", "integration", "contract"):
            if f"/tests/{layer}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, layer))
