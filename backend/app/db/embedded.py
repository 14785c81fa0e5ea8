"""The embedded PostgreSQL for development: `make run` (and tests) without a URL."""

import warnings
from pathlib import Path

from app.config import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_DATA_DIR = PROJECT_ROOT / ".data" / "postgres"


def embedded_database_url(data_dir: Path = EMBEDDED_DATA_DIR) -> str:
    """Start (or join) the embedded PostgreSQL under `.data/` and return its URL."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server  # development only
    except ImportError:
        raise ConfigError(
            "configuration error: DATABASE_URL: not set, and the embedded PostgreSQL "
            "(pgserver) is not installed"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(data_dir, cleanup_mode="stop")
    url: str = server.get_uri()
    return url
