"""Three real server processes on one database, sharing one Redis and one
CURSOR_SECRET, as behind a load balancer: cursors, ETags, idempotency keys and rate
limits hold whichever instance each request reaches (specs/006-operations)."""

import secrets
from contextlib import ExitStack

from tests.cross_instance import check_across_instances
from tests.jwt_helpers import SECRET, hs_token
from tests.server import running_server

# db 7 of the machine's Redis (specs/006-operations); keys are per user and expire.
REDIS_URL = "redis://127.0.0.1:6379/7"


def test_cursors_etags_idempotency_and_rate_limits_hold_across_instances(
    database_url: str,
) -> None:
    shared = {
        "ENVIRONMENT": "production",
        "CURSOR_SECRET": secrets.token_urlsafe(32),
        "JWT_SECRET": SECRET,
        "REDIS_URL": REDIS_URL,
        "RATE_LIMIT": "20/minute",
    }
    with ExitStack() as stack:
        instances = [
            stack.enter_context(running_server(database_url, None, **shared))
            for _ in range(3)
        ]
        check_across_instances(
            instances,
            lambda user: {"Authorization": f"Bearer {hs_token(user)}"},
            (20, 60),
        )
