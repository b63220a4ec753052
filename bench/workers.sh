#!/usr/bin/env bash
# Whole Workers under the same workerd: builds this Worker (scripts/build.sh) and the
# reference JavaScript Worker (bench/reference/, bundled by esbuild as wrangler would),
# then runs bench/workers.mjs. Loopback only; every process is stopped at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
bash scripts/build.sh
mkdir -p bench/.build
node_modules/.bin/esbuild bench/reference/index.mjs --bundle --format=esm --platform=neutral \
  --conditions=worker,browser --main-fields=module,main --minify --log-level=warning \
  --outfile=bench/.build/reference.mjs
node bench/workers.mjs
