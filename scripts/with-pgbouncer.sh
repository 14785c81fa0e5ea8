#!/usr/bin/env bash
# Run a command with PgBouncer (transaction pooling, like Neon's -pooler endpoint) on
# 127.0.0.1:6432 in front of the local PostgreSQL, and TEST_DATABASE_URL pointing at it.
#   scripts/with-pgbouncer.sh .venv/bin/python -m pytest backend/tests/contract
set -euo pipefail
command -v pgbouncer >/dev/null 2>&1 || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pgbouncer >/dev/null
}
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
UPSTREAM_HOST=${UPSTREAM_HOST:-127.0.0.1}
UPSTREAM_PORT=${UPSTREAM_PORT:-5432}
PORT=${PGBOUNCER_PORT:-6432}
dir=$(mktemp -d)
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=$UPSTREAM_HOST port=$UPSTREAM_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
echo '"postgres" ""' > "$dir/userlist.txt"
user_flag=()
if [ "$(id -u)" -eq 0 ]; then  # PgBouncer will not run as root
  chown -R postgres "$dir"
  user_flag=(-u postgres)
fi
"$PGBOUNCER" -d "${user_flag[@]}" "$dir/pgbouncer.ini"
trap 'kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
# Through a transaction pooler the statement timeout is set on the role, not sent as
# a startup option (PgBouncer rejects unknown startup parameters), and PgBouncer
# 1.18 (Debian 12) keeps no prepared statements across transactions: asyncpg's
# statement cache is off.
export TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
export DB_STATEMENT_TIMEOUT_MS=0
export DB_STATEMENT_CACHE_SIZE=0
"$@"
