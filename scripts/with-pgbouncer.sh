#!/usr/bin/env bash
# Run a command with PgBouncer (transaction pooling, like Neon's -pooler endpoint) on
# 127.0.0.1:6432 in front of the local PostgreSQL, and TEST_DATABASE_URL pointing at it.
#   scripts/with-pgbouncer.sh .venv/bin/python -m pytest backend/tests/contract
set -euo pipefail
source "$(dirname "$0")/common.sh"
PORT=${PGBOUNCER_PORT:-6432}
dir=$(mktemp -d)
trap 'kill "$(cat "$dir/pgbouncer.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
start_pgbouncer "$dir" "$PORT" 40
# Through a transaction pooler no statement timeout is sent as a startup option
# (PgBouncer rejects unknown startup parameters), and none is put on the role or the
# database here (scripts/scale-out.sh puts one on its database); PgBouncer 1.18
# (Debian 12) keeps no prepared statements across transactions: asyncpg's statement
# cache is off.
export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
export DB_STATEMENT_TIMEOUT_MS=0
export DB_STATEMENT_CACHE_SIZE=0
"$@"
