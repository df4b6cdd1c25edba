#!/usr/bin/env bash
# A PostgreSQL cluster of its own for the Prefect server (`make postgres`, `make postgres-stop`; README,
# "In production", and docs/operations.md): SQLite serialises every write, and a server with workers polling it logs
# `database is locked`. Usage: ops/postgres.sh start|stop DIR. DIR holds `cluster/` (PostgreSQL's own
# files and its log) and `url`, the connection URL `make server DB=postgres` reads (password inside:
# readable by its owner only, never printed).
set -euo pipefail
action=${1:?usage: ops/postgres.sh start|stop DIR}
dir=${2:?usage: ops/postgres.sh start|stop DIR}
cluster=$dir/cluster

fail() { echo "make postgres: $*" >&2; exit 1; }

# Debian and Ubuntu keep the server's binaries off the PATH, one folder per major version
bin=
for candidate in ${PG_BIN:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) \
    "$(pg_config --bindir 2>/dev/null)" "$(dirname "$(command -v initdb || echo .)")"; do
  if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/psql" ]; then
    bin=$candidate
    break
  fi
done
[ -n "$bin" ] || fail "no PostgreSQL server found: install it (Debian: apt-get install postgresql) or set PG_BIN to the folder of its pg_ctl."

# PostgreSQL refuses to run as root: root runs it as the user PG_USER (postgres), created if absent
as=()
user=$(id -un)
if [ "$(id -u)" = 0 ]; then
  user=${PG_USER:-postgres}
  id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
  as=(runuser -u "$user" --)
fi

if [ "$action" = stop ]; then
  [ -f "$cluster/postmaster.pid" ] && "${as[@]}" "$bin/pg_ctl" -D "$cluster" -m fast -w stop
  exit 0
fi
[ "$action" = start ] || fail "unknown action $action: start or stop."

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cluster=$dir/cluster
if [ ! -f "$cluster/PG_VERSION" ]; then
  mkdir -p "$cluster"
  chmod 700 "$cluster"
  [ ${#as[@]} = 0 ] || chown "$user:" "$cluster"
  "${as[@]}" test -w "$cluster" \
    || fail "the user $user cannot reach $cluster: make its parent folders searchable (chmod o+x) or run make postgres as another user than root."
  port=${PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
  (umask 077; echo "$password" > "$dir/.password")
  [ ${#as[@]} = 0 ] || chown "$user:" "$dir/.password"
  "${as[@]}" "$bin/initdb" -D "$cluster" -U postgres --pwfile="$dir/.password" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 >/dev/null
  rm -f "$dir/.password"
  # loopback TCP only, no Unix socket (its folder's path is length-limited, /var/run/postgresql root's)
  printf "\nlisten_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = ''\n" "$port" \
    | "${as[@]}" tee -a "$cluster/postgresql.conf" >/dev/null
  (umask 077; echo "postgresql+asyncpg://postgres:$password@127.0.0.1:$port/prefect" > "$dir/url")
fi

"${as[@]}" "$bin/pg_ctl" -D "$cluster" status >/dev/null 2>&1 \
  || "${as[@]}" "$bin/pg_ctl" -D "$cluster" -l "$cluster/server.log" -w start >/dev/null \
  || fail "PostgreSQL did not start: see $cluster/server.log."

url=$(cat "$dir/url")
rest=${url#*://postgres:}
export PGPASSWORD=${rest%@*}
port=${url##*:}
port=${port%%/*}
if [ -z "$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'prefect'")" ]; then
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres prefect
fi
echo "PostgreSQL is up on 127.0.0.1:$port (database prefect, data in $cluster): make server DB=postgres"
