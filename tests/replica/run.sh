#!/usr/bin/env bash
# The replica layer: a real primary (eventstore preloaded, a worker for the test database) and a
# real hot standby made from it with pg_basebackup -R through a replication slot, both owned by
# postgres on 127.0.0.1, then the pytest files of this directory against the two. Both servers
# are stopped at the end, whatever happens.
# usage: run.sh PRIMARY_PORT STANDBY_PORT [pytest arguments, e.g. -k soak]   (scripts/test.sh: 5443 5444)
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
GIVEN_POSTGREST=${POSTGREST:-}
. "$HERE/../../scripts/lib.sh"
# the PostgREST of the read-replica test: the one scripts/setup.sh installs, unless one is given
POSTGREST=${GIVEN_POSTGREST:-$POSTGREST}
PRIMARY_PORT=${1:?usage: run.sh PRIMARY_PORT STANDBY_PORT}
STANDBY_PORT=${2:?usage: run.sh PRIMARY_PORT STANDBY_PORT}
DIR="${REPLICA_DIR:-$ROOT/target/replica}"
DATABASE=es_replica

stop_both() { cluster_stop "$DIR/standby"; cluster_stop "$DIR/primary"; }
cluster_stop "$DIR/standby" 2>/dev/null; cluster_stop "$DIR/primary" 2>/dev/null
rm -rf "$DIR"
mkdir -p "$DIR"
trap stop_both EXIT

log "replica: primary on $PRIMARY_PORT"
cluster_start "$DIR/primary" "$PRIMARY_PORT" \
  "wal_level = replica" "max_wal_senders = 4" "max_replication_slots = 4" \
  "eventstore.database = '$DATABASE'" "eventstore.worker_poll_interval = 50" "eventstore.webhook_allowed_hosts = '127.0.0.1'" || exit 1
PSQL=(env PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres)
"${PSQL[@]}" -p "$PRIMARY_PORT" -d postgres -c "CREATE DATABASE $DATABASE" || exit 1
"${PSQL[@]}" -p "$PRIMARY_PORT" -d "$DATABASE" -c "CREATE EXTENSION eventstore" || exit 1

log "replica: hot standby on $STANDBY_PORT (pg_basebackup -R, slot replica_standby)"
# hot_standby_feedback: the standby's long reads are not cancelled by the primary's vacuum
standby_start "$DIR/standby" "$STANDBY_PORT" "$PRIMARY_PORT" replica_standby \
  "hot_standby_feedback = on" "eventstore.database = '$DATABASE'" "eventstore.worker_poll_interval = 50" "eventstore.webhook_allowed_hosts = '127.0.0.1'" || exit 1

env POSTGREST="$POSTGREST" EVENTSTORE_PRIMARY_PORT="$PRIMARY_PORT" EVENTSTORE_STANDBY_PORT="$STANDBY_PORT" \
    EVENTSTORE_REPLICA_DIR="$DIR" EVENTSTORE_REPLICA_DATABASE="$DATABASE" \
  "$VENV/bin/pytest" -q -rP -p no:cacheprovider "$HERE" "${@:3}"
