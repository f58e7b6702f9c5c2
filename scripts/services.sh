#!/usr/bin/env bash
# Make sure Redis and PostgreSQL answer on 127.0.0.1:$REDIS_PORT and
# 127.0.0.1:$PG_PORT (default 6379 and 5432, as on the CI machine, and as
# the local stage's REDIS_URL / DATABASE_URL expect).  When one does not
# answer and its server binaries are installed, start a private one under
# .run/ on that port; otherwise say exactly what is missing.  (Pointing
# REDIS_URL / DATABASE_URL elsewhere needs nothing from this script.)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$PWD/.run
mkdir -p "$RUN"
REDIS_PORT=${REDIS_PORT:-6379}
PG_PORT=${PG_PORT:-5432}

if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "Redis answers on 127.0.0.1:$REDIS_PORT"
elif command -v redis-server >/dev/null; then
  echo "Starting Redis on 127.0.0.1:$REDIS_PORT (.run/redis.pid)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$RUN" --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
  echo "Redis does not answer on 127.0.0.1:$REDIS_PORT and redis-server is not installed" \
       "(apt-get install redis-server, or set REDIS_URL)" >&2
  exit 1
fi

if pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
  echo "PostgreSQL answers on 127.0.0.1:$PG_PORT"
else
  PGBIN=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)")
  if [ ! -x "$PGBIN/initdb" ]; then
    echo "PostgreSQL does not answer on 127.0.0.1:$PG_PORT and initdb is not installed" \
         "(apt-get install postgresql, or set DATABASE_URL)" >&2
    exit 1
  fi
  echo "Starting PostgreSQL on 127.0.0.1:$PG_PORT (.run/pgdata)"
  OWNER=$(id -un)
  if [ "$(id -u)" = 0 ]; then OWNER=postgres; chown -R postgres "$RUN"; fi
  as_owner() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  [ -d "$RUN/pgdata" ] || as_owner "$PGBIN/initdb -D $RUN/pgdata -U postgres --auth=trust >/dev/null"
  as_owner "$PGBIN/pg_ctl -D $RUN/pgdata -l $RUN/postgres.log -w -o '-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1' start"
fi

# PgBouncer: the tests start their own (transaction pooling, in RDS Proxy's
# place: tests/support/servers.py); only the binary is needed here.
if command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; then
  echo "pgbouncer is installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing pgbouncer (apt-get install pgbouncer)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q pgbouncer >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; }
else
  echo "pgbouncer is not installed (apt-get install pgbouncer): the tests put it where RDS Proxy stands" >&2
  exit 1
fi
