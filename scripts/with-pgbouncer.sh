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
# With the settings' defaults, as an operator who put PgBouncer in front without
# reading further would run it: PgBouncer refuses the statement_timeout startup
# option, and 1.18 (Debian 12) keeps no prepared statements across transactions;
# the service finds both out and does without (specs/007-data-path, "PgBouncer in transaction mode").
# scripts/scale-out.sh runs with the settings the README recommends instead.
export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
"$@"
