#!/usr/bin/env bash
# The production topology on one machine (specs/006-operations, "Running N instances"):
#
#   clients -> HAProxy 127.0.0.1:$SCALE_PORT (round robin, health checks on /health)
#           -> $INSTANCES x `python -m app` on $SCALE_PORT+1.. (ENVIRONMENT=production)
#           -> PgBouncer 127.0.0.1:$PGBOUNCER_PORT, transaction pooling (as Neon's pooler)
#           -> PostgreSQL 127.0.0.1:5432, database $SCALE_DATABASE
#   shared: Redis ($REDIS_URL, rate limits), CURSOR_SECRET, BETTER_AUTH_SECRET
#
#   scripts/scale-out.sh                 serve until Ctrl-C (make scale-out)
#   scripts/scale-out.sh COMMAND...      run COMMAND against it, then stop (make scale-out-soak)
#
# COMMAND gets SCALE_OUT_URL (the load balancer), SCALE_OUT_INSTANCES and SCALE_OUT_PIDS
# (comma-separated, in the same order), SCALE_OUT_DATABASE_URL (the database itself,
# not through PgBouncer) and the settings below. Everything stops on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

INSTANCES=${INSTANCES:-3}
SCALE_PORT=${SCALE_PORT:-8300}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-6433}
POOLER_POOL_SIZE=${POOLER_POOL_SIZE:-20}
SCALE_DATABASE=${SCALE_DATABASE:-taskapi_scale}
PYTHON=${PYTHON:-.venv/bin/python}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/7}
export RATE_LIMIT=${RATE_LIMIT:-300/minute}
export CURSOR_SECRET=${CURSOR_SECRET:-$(openssl rand -base64 32)}
export BETTER_AUTH_SECRET=${BETTER_AUTH_SECRET:-$(openssl rand -base64 32)}
export WEB_CONCURRENCY=${WEB_CONCURRENCY:-1}
export DB_POOL_SIZE=${DB_POOL_SIZE:-10}

need haproxy haproxy
need psql postgresql-client
"$PYTHON" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()' \
  "$REDIS_URL" 2>/dev/null || { echo "Redis at $REDIS_URL does not answer" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
stop() {
  trap - EXIT INT TERM
  # SIGTERM: HAProxy stops at once, each instance drains its requests, then PgBouncer.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 0' TERM

export UPSTREAM_HOST=${UPSTREAM_HOST:-127.0.0.1} UPSTREAM_PORT=${UPSTREAM_PORT:-5432}
psql=(psql -h "$UPSTREAM_HOST" -p "$UPSTREAM_PORT" -U postgres -d postgres -qtA)
if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$SCALE_DATABASE'")" ]; then
  "${psql[@]}" -c "CREATE DATABASE \"$SCALE_DATABASE\""
fi
# PgBouncer refuses the statement_timeout startup option: the timeout is a setting of
# the database here (of the role on Neon), and the instances send none.
"${psql[@]}" -c "ALTER DATABASE \"$SCALE_DATABASE\" SET statement_timeout = '15s'"

start_pgbouncer "$dir" "$PGBOUNCER_PORT" "$POOLER_POOL_SIZE"
export ENVIRONMENT=production LOG_LEVEL=${LOG_LEVEL:-warning} PYTHONPATH=backend
export DATABASE_URL="postgresql://postgres@127.0.0.1:$PGBOUNCER_PORT/$SCALE_DATABASE"
export DB_STATEMENT_CACHE_SIZE=0 DB_STATEMENT_TIMEOUT_MS=0
"$PYTHON" -m app.db.migrations # once, before any instance (theirs then find head)

servers="" urls="" instance_pids=""
for i in $(seq "$INSTANCES"); do
  port=$((SCALE_PORT + i))
  PORT=$port "$PYTHON" -m app >"$dir/app$i.log" 2>&1 &
  pids+=($!)
  servers+="    server app$i 127.0.0.1:$port check"$'\n'
  urls+="${urls:+,}http://127.0.0.1:$port"
  instance_pids+="${instance_pids:+,}$!"
done
for i in $(seq "$INSTANCES"); do
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$((SCALE_PORT + i))/health" >/dev/null && continue 2
    kill -0 "${pids[i - 1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "instance app$i did not come up:" >&2
  cat "$dir/app$i.log" >&2
  exit 1
done

# A server is out after two failed checks a second apart, or at once when a request
# cannot connect to it. A request that could not connect is sent to another server;
# so is a GET or HEAD that got no response (e.g. on a kept-alive connection to an
# instance that just died). Other methods are never retried here (they may have
# written): their client sees the connection closed and retries.
cat >"$dir/haproxy.cfg" <<CFG
global
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 5s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
    # No instance up (their /health checks the database: when it is down, every
    # check fails): the API's JSON error with Retry-After, not HAProxy's HTML page.
    http-error status 503 content-type application/json hdr Retry-After 2 string '{"error": "The database is unavailable, try again shortly", "code": "database_unavailable", "detail": "No instance of the service is up (their health checks fail, as when the database is down); retry after Retry-After seconds"}'
frontend api
    bind 127.0.0.1:$SCALE_PORT
    # The client's address, appended to its X-Forwarded-For: the instances trust
    # loopback, where HAProxy connects from, and take the last entry no trusted
    # proxy wrote (for a client on loopback itself, every entry is trusted).
    option forwardfor
    http-request disable-l7-retry if !METH_GET
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 1s fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
    http-response set-header X-Served-By %[srv_name]
$servers
CFG
haproxy -db -f "$dir/haproxy.cfg" &
pids+=($!)
wait_for_port "$SCALE_PORT"

export SCALE_OUT_URL="http://127.0.0.1:$SCALE_PORT"
export SCALE_OUT_INSTANCES=$urls SCALE_OUT_PIDS=$instance_pids
export SCALE_OUT_DATABASE_URL="postgresql://postgres@$UPSTREAM_HOST:$UPSTREAM_PORT/$SCALE_DATABASE"
if [ $# -gt 0 ]; then
  "$@"
  exit
fi
echo "serving on $SCALE_OUT_URL: instances $SCALE_OUT_INSTANCES (pids $SCALE_OUT_PIDS)," \
  "PgBouncer 127.0.0.1:$PGBOUNCER_PORT, database $SCALE_DATABASE; Ctrl-C stops all" >&2
wait "${pids[-1]}"
