"""`python -m app`: check the configuration, start the embedded database when no
DATABASE_URL is set, apply migrations, then serve with uvicorn."""

import os
import sys

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from app.config import load_settings
from app.db.engine import create_db_engine, database_url
from app.db.migrations import migrate
from app.observability.logging import configure_logging


def main() -> None:
    settings = load_settings()
    configure_logging(settings.LOG_LEVEL)
    url = database_url(settings)
    # Workers inherit the resolved URL, so they join the same (embedded) database.
    os.environ["DATABASE_URL"] = url
    engine = create_db_engine(settings, url)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        sys.exit(f"cannot prepare the database: {reason}")
    finally:
        engine.dispose()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WEB_CONCURRENCY,
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
