# Sourced by the scripts that need programs from Debian's packages (not run by itself).

# need COMMAND PACKAGE: install Debian's PACKAGE unless COMMAND is already there.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$1" ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian's $2..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    -o DPkg::Lock::Timeout=300 "$2" >/dev/null
}

# wait_for_port PORT: until something accepts connections on 127.0.0.1:PORT (10 s at most).
wait_for_port() {
  local _
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# start_pgbouncer DIR PORT POOL_SIZE: PgBouncer in transaction pooling mode (as Neon's
# -pooler endpoint) on 127.0.0.1:PORT in front of UPSTREAM_HOST:UPSTREAM_PORT (default
# the local PostgreSQL, trust auth), at most POOL_SIZE server connections per database
# and user, its files in DIR. Stop it with: kill "$(cat DIR/pgbouncer.pid)"
start_pgbouncer() {
  local dir=$1 port=$2 pool_size=$3
  need pgbouncer pgbouncer
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=${UPSTREAM_HOST:-127.0.0.1} port=${UPSTREAM_PORT:-5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = $pool_size
ignore_startup_parameters = extra_float_digits
server_login_retry = 1
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  echo '"postgres" ""' >"$dir/userlist.txt"
  local user_flag=()
  if [ "$(id -u)" -eq 0 ]; then # PgBouncer will not run as root
    chown -R postgres "$dir"
    user_flag=(-u postgres)
  fi
  "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" -d "${user_flag[@]}" "$dir/pgbouncer.ini"
  wait_for_port "$port"
}
