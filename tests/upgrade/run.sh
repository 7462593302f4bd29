#!/usr/bin/env bash
# The upgrade layer. For every earlier release whose install script is frozen in
# sql/eventstore--<version>.sql: install it in a fresh database, fill it (fill.sql), note what it
# holds and answers (before.sql), ALTER EXTENSION eventstore UPDATE, then check that
#   1. its catalog (catalog.sql) equals that of a fresh install of the current version in another
#      database; any difference is printed as a unified diff;
#   2. the rows survived and the extension goes on from them (verify.sql).
# Needs a running cluster (port $1) with eventstore installed and preloaded, and a background
# worker serving the database upgrade_updated (eventstore.database), as scripts/test.sh starts it.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PORT=${1:?usage: run.sh PORT}
PG_CONFIG="${PG_BIN:-/usr/lib/postgresql/15/bin}/pg_config"
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
LIBRARY="$("$PG_CONFIG" --pkglibdir)/eventstore.so"
OUT="$ROOT/target/upgrade"
UPDATED=upgrade_updated
FRESH=upgrade_fresh
ROLES=(upgrade_reader upgrade_writer upgrade_admin)
PSQL=(env PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
rm -rf "$OUT"; mkdir -p "$OUT"

passed=0
failed=0
# check NAME COMMAND...: one verdict
check() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok - $name"
  else failed=$((failed + 1)); echo "not ok - $name"; return 1; fi
}

recreate() {
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
drop_all() {
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $UPDATED WITH (FORCE)" -c "DROP DATABASE IF EXISTS $FRESH WITH (FORCE)"
  local role
  for role in "${ROLES[@]}"; do "${PSQL[@]}" -d postgres -c "DROP ROLE IF EXISTS $role"; done
}

# every C function an SQL script names (AS 'MODULE_PATHNAME', '<symbol>') is exported by the
# library: a symbol that a later version drops breaks the scripts of the versions before it
symbols_exist() {
  local missing
  missing=$(comm -23 <(grep -oE "'MODULE_PATHNAME', *'[^']+'" "$1" | sed -E "s/.*'([^']+)'$/\1/" | sort -u) \
                     <(nm -D --defined-only "$LIBRARY" | awk '{print $NF}' | sort -u))
  [ -z "$missing" ] || { echo "    not in $LIBRARY:" $missing; return 1; }
}

installed_version() {
  "${PSQL[@]}" -At -d "$1" -c "SELECT extversion FROM pg_extension WHERE extname = 'eventstore'"
}

# the catalogs of the updated and the fresh database are the same
same_catalog() {
  local old=$1
  "${PSQL[@]}" -At -d "$UPDATED" -f "$HERE/catalog.sql" > "$OUT/catalog-updated-from-$old.txt" || return 1
  "${PSQL[@]}" -At -d "$FRESH" -f "$HERE/catalog.sql" > "$OUT/catalog-fresh.txt" || return 1
  diff -u --label "updated from $old" --label "fresh $CURRENT" "$OUT/catalog-updated-from-$old.txt" "$OUT/catalog-fresh.txt"
}

# runs verify.sql (its checks print their own lines) and counts its verdicts
verify() {
  local counts
  "${PSQL[@]}" -d "$UPDATED" -f "$HERE/verify.sql"
  check "verify.sql ran to its end" test $? -eq 0
  counts=$("${PSQL[@]}" -At -F ' ' -d "$UPDATED" \
           -c "SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok) FROM upgrade_check.results") || counts="0 1"
  passed=$((passed + ${counts% *})); failed=$((failed + ${counts#* }))
}

CURRENT=$(sed -n "s/^version = \"\(.*\)\"/\1/p" "$ROOT/Cargo.toml" | head -1)
check "the installed extension is this checkout's version $CURRENT" \
  grep -q "^default_version = '$CURRENT'" "$EXTDIR/eventstore.control"
for script in "$EXTDIR/eventstore--$CURRENT.sql" "$ROOT"/sql/eventstore--*--*.sql; do
  check "every C symbol of $(basename "$script") is in the library" symbols_exist "$script"
done

drop_all >/dev/null 2>&1
for role in "${ROLES[@]}"; do
  "${PSQL[@]}" -d postgres -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$role') THEN CREATE ROLE $role; END IF; END \$\$" || exit 1
done

for frozen in "$ROOT"/sql/eventstore--*.sql; do
  name=$(basename "$frozen" .sql)
  case $name in *--*--*) continue ;; esac
  old=${name#eventstore--}
  [ "$old" = "$CURRENT" ] && continue
  check "$old: the installed $name.sql is the frozen one" cmp "$frozen" "$EXTDIR/$name.sql"
  check "$old: every C symbol of its install script is in the library" symbols_exist "$frozen"

  recreate "$UPDATED" || exit 1
  check "$old: CREATE EXTENSION eventstore VERSION '$old'" \
    "${PSQL[@]}" -d "$UPDATED" -c "CREATE EXTENSION eventstore VERSION '$old'" || continue
  "${PSQL[@]}" -d "$UPDATED" -f "$HERE/grants.sql" -f "$HERE/fill.sql" -f "$HERE/helpers.sql" > "$OUT/fill-$old.log" 2>&1
  check "$old: filled (log in target/upgrade/fill-$old.log)" test $? -eq 0 || { tail -20 "$OUT/fill-$old.log"; continue; }
  check "$old: before.sql ran to its end" "${PSQL[@]}" -d "$UPDATED" -f "$HERE/before.sql" || continue

  check "$old: ALTER EXTENSION eventstore UPDATE" "${PSQL[@]}" -d "$UPDATED" -c "ALTER EXTENSION eventstore UPDATE"
  check "$old: updated to $CURRENT" test "$(installed_version "$UPDATED")" = "$CURRENT"

  recreate "$FRESH" || exit 1
  "${PSQL[@]}" -d "$FRESH" -c "CREATE EXTENSION eventstore" -f "$HERE/grants.sql" >/dev/null || exit 1
  check "$old: the catalog after the update is that of a fresh install of $CURRENT" same_catalog "$old"

  verify
done

drop_all >/dev/null
echo "upgrade: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
