"""`python -m app.openapi`: print the OpenAPI document committed in specs/."""

import json
import sys

from app.core.config import Settings
from app.main import create_app


def document() -> str:
    # The engine is built but never connected: only the routes are read.
    settings = Settings(DATABASE_URL="postgresql://localhost/openapi", _env_file=None)
    return (
        json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(document())
