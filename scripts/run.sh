#!/usr/bin/env bash
# The main job: install what is missing, build and install eventstore, start a local
# PostgreSQL 15 (port 5440, eventstore preloaded; the launcher starts a worker for
# eventstore_demo) in .cluster/, create the database eventstore_demo with the extension, and
# run a short demo; then start PostgREST for that database on 127.0.0.1:3000 (its pid in
# .cluster/postgrest.pid). Running it again restarts both cleanly.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/setup.sh"
install_extension

DIR="$ROOT/.cluster"
PORT=5440
PGRST_PORT=3000
PGRST_ADMIN_PORT=3001
PGRST_PID="$DIR/postgrest.pid"

# a PostgREST of an earlier run goes first (only the process its pid file names, and only when
# that process is our PostgREST binary)
stop_postgrest() {
  local pid
  pid=$(cat "$PGRST_PID" 2>/dev/null) || return 0
  if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$POSTGREST")" ]; then
    log "stopping PostgREST (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PGRST_PID"
}
stop_postgrest
log "starting PostgreSQL 15 in $DIR on port $PORT"
# no eventstore.database: the launcher gives every database with eventstore a worker
cluster_start "$DIR" "$PORT"

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS eventstore_demo WITH (FORCE)" -c "CREATE DATABASE eventstore_demo"
"${PSQL[@]}" -d eventstore_demo -c "CREATE EXTENSION eventstore"

log "demo"
"${PSQL[@]}" -d eventstore_demo -f "$ROOT/scripts/demo.sql"

# PostgREST in front of the demo database, configured as in the README's PostgREST section:
# Supabase's roles, the JWT's role claim `authenticated` with writer access, the tenant from the
# claim tenant_id. The HS256 secret is made once and kept in .cluster/postgrest.secret.
log "starting PostgREST on 127.0.0.1:$PGRST_PORT"
"${PSQL[@]}" -d eventstore_demo <<'SQL'
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
END $$;
GRANT anon, authenticated TO authenticator;
SELECT eventstore.grant_access('authenticated', 'writer');
SQL
[ -s "$DIR/postgrest.secret" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$DIR/postgrest.secret"
chmod 600 "$DIR/postgrest.secret"
cat > "$DIR/postgrest.conf" <<CONF
db-uri = "postgres://authenticator@127.0.0.1:$PORT/eventstore_demo"
db-schemas = "eventstore"
db-anon-role = "anon"
jwt-secret = "$(cat "$DIR/postgrest.secret")"
server-host = "127.0.0.1"
server-port = $PGRST_PORT
admin-server-port = $PGRST_ADMIN_PORT
log-level = "info"
CONF
chmod 600 "$DIR/postgrest.conf"
setsid "$POSTGREST" "$DIR/postgrest.conf" > "$DIR/postgrest.log" 2>&1 < /dev/null &
echo $! > "$PGRST_PID"
if ! python3 - "$PGRST_ADMIN_PORT" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
then
  tail -20 "$DIR/postgrest.log" >&2
  echo "PostgREST did not start (is port $PGRST_PORT or $PGRST_ADMIN_PORT taken?); see $DIR/postgrest.log" >&2
  stop_postgrest
  exit 1
fi
TOKEN=$(python3 "$ROOT/scripts/jwt.py" "$(cat "$DIR/postgrest.secret")" default)

cat <<MSG

eventstore is running: PostgreSQL 15 on 127.0.0.1:$PORT, data in $DIR
  connect:  psql -h 127.0.0.1 -p $PORT -U postgres eventstore_demo
  stop:     runuser -u postgres -- $PG_BIN/pg_ctl -D $DIR/data stop

PostgREST $("$POSTGREST" --version | cut -d' ' -f2) is serving eventstore_demo at http://127.0.0.1:$PGRST_PORT (log: $DIR/postgrest.log)
  a token for tenant "default" (the demo's), valid 24 h; another tenant: python3 scripts/jwt.py "\$(cat $DIR/postgrest.secret)" acme
  export TOKEN=$TOKEN
  curl -s "http://127.0.0.1:$PGRST_PORT/rpc/read_stream?aggregate_type=order&aggregate_id=1001&select=aggregate_version,event_type" -H "Authorization: Bearer \$TOKEN"
  curl -s -X POST http://127.0.0.1:$PGRST_PORT/rpc/append_event -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"aggregate_type": "order", "aggregate_id": "1001", "event_type": "OrderPaid", "payload": {"amount": 99.5}, "expected_version": 3}'
  stop:     kill \$(cat $PGRST_PID)
MSG
