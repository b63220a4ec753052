#!/usr/bin/env bash
# `npm start`: the Worker at http://localhost:8787 with a local D1, migrations applied.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
echo "[dev] node $(node --version), wrangler $(wrangler --version 2>/dev/null | tail -n1)" >&2

if [[ ! -f .dev.vars ]]; then
  cp .dev.vars.example .dev.vars
  echo "[dev] created .dev.vars from .dev.vars.example: put the whsec_ secret printed by \`stripe listen\` in it" >&2
fi

# Build first so the migration and dev steps below don't race an outdated build.
bash scripts/build.sh

# stdin from /dev/null: wrangler then treats the run as non-interactive and
# answers its "continue?" confirmation with yes instead of waiting for a key.
echo "[dev] applying D1 migrations to the local database" >&2
wrangler d1 migrations apply DB --local </dev/null

PORT="${PORT:-8787}"
echo "[dev] starting wrangler dev on http://localhost:$PORT" >&2
exec wrangler dev --ip "${DEV_IP:-127.0.0.1}" --port "$PORT" --show-interactive-dev-session=false "$@"
