#!/usr/bin/env bash
# Installs the pinned packages of package.json into bench/emmett/node_modules (git-ignored),
# only when they are not there yet in those versions.
set -euo pipefail
cd "$(dirname "$0")"
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [ -f node_modules/.package.json.sha256 ] && [ "$(cat node_modules/.package.json.sha256)" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
echo "$want" > node_modules/.package.json.sha256
