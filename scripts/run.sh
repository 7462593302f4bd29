#!/usr/bin/env bash
# The main job: install what is missing, build and install eventstore, start a local
# PostgreSQL 15 (port 5440, eventstore preloaded, its background worker serving
# eventstore_demo) in .cluster/, create the database eventstore_demo with the extension, and
# run a short demo. Running it again restarts cleanly.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/setup.sh"
install_extension

DIR="$ROOT/.cluster"
PORT=5440
log "starting PostgreSQL 15 in $DIR on port $PORT"
cluster_start "$DIR" "$PORT" "eventstore.database = 'eventstore_demo'"

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS eventstore_demo WITH (FORCE)" -c "CREATE DATABASE eventstore_demo"
"${PSQL[@]}" -d eventstore_demo -c "CREATE EXTENSION eventstore"

log "demo"
"${PSQL[@]}" -d eventstore_demo -f "$ROOT/scripts/demo.sql"

cat <<MSG

eventstore is running: PostgreSQL 15 on 127.0.0.1:$PORT, data in $DIR
  connect:  psql -h 127.0.0.1 -p $PORT -U postgres eventstore_demo
  stop:     runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data stop
MSG
