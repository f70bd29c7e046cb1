#!/usr/bin/env bash
# A throwaway PostgreSQL server for the lens storage tests (tests marked `postgres`).
#
#   eval "$(.ci/postgres.sh)"     # start (installing PostgreSQL if missing); exports COGLENS_TEST_PG_URL
#   .ci/postgres.sh stop          # stop it
#
# Idempotent and quick: a running server is reused, and the data directory and port survive between calls.
# The server runs as a non-root user (`postgres` when called as root), listens on 127.0.0.1 only, trusts local
# connections and skips fsync: test data only. stdout carries just the export line; logs go to stderr.
set -euo pipefail

PG_HOME="${COGLENS_PG_DIR:-/tmp/coglens-pg}"
DATA="$PG_HOME/data"
DB_NAME="coglens_test"
log() { echo "postgres.sh: $*" >&2; }

find_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ "$(id -u)" = 0 ]; then
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

BINDIR="$(find_bindir)"
if [ "${1:-start}" = stop ]; then
  if [ -n "$BINDIR" ] && [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >&2
  fi
  exit 0
fi

if [ -z "$BINDIR" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "PostgreSQL is not installed and there is no sudo to install it"; exit 1; }
    SUDO="sudo"
  fi
  log "installing PostgreSQL from the Debian archive"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  BINDIR="$(find_bindir)"
fi

mkdir -p "$PG_HOME"
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$PG_HOME"
fi

if [ ! -s "$DATA/PG_VERSION" ]; then
  log "initialising $DATA"
  as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-sync >&2
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_server() {
  as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PG_HOME/server.log" -w -t 60 -o \
    "-c listen_addresses=127.0.0.1 -p $1 -c unix_socket_directories=$PG_HOME -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off" start >&2
}

if as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  PORT="$(cat "$PG_HOME/port")"
  log "reusing the server on port $PORT"
else
  PORT="$(cat "$PG_HOME/port" 2>/dev/null || free_port)"
  if ! start_server "$PORT"; then
    PORT="$(free_port)"  # the remembered port may have been taken since
    log "retrying on port $PORT"
    start_server "$PORT" || { tail -n 20 "$PG_HOME/server.log" >&2; exit 1; }
  fi
  echo "$PORT" | as_owner tee "$PG_HOME/port" >/dev/null
fi

PSQL=("$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$(as_owner "${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
  as_owner "${PSQL[@]}" -c "CREATE DATABASE $DB_NAME" >&2
fi

URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB_NAME"
if [ -n "${GITHUB_ENV:-}" ]; then
  echo "COGLENS_TEST_PG_URL=$URL" >>"$GITHUB_ENV"
fi
log "ready: $URL"
echo "export COGLENS_TEST_PG_URL=$URL"
