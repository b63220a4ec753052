#!/usr/bin/env bash
# Whole Workers under the same workerd: builds this Worker (scripts/build.sh) and bundles
# the reference JavaScript Worker (bench/reference/) with wrangler itself
# (`wrangler deploy --dry-run --outdir`: the very bundle a deploy would upload), then
# runs bench/workers.mjs. Loopback only; every process is stopped at the end. ~3 min.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
bash scripts/build.sh
OUT="$ROOT/bench/.build/reference"
rm -rf "$OUT"
mkdir -p "$OUT"
compat="$(sed -n 's/^compatibility_date = "\(.*\)"$/\1/p' wrangler.toml)"
# A config of its own: the repository's wrangler.toml would build and bundle the Rust Worker.
cat > bench/.build/reference.wrangler.toml <<TOML
name = "stripe-edge-reference"
main = "$ROOT/bench/reference/index.mjs"
compatibility_date = "$compat"
TOML
timeout 120 wrangler deploy --config bench/.build/reference.wrangler.toml --dry-run --outdir "$OUT" \
  | { grep -E 'Total Upload' || true; } | sed 's/^/[reference] /'
[[ -f "$OUT/index.js" ]] || { echo "bench/workers.sh: wrangler did not bundle the reference" >&2; exit 1; }
# bench/workers.mjs stops itself after DEADLINE_S (900 s); this is the backstop.
timeout $(( ${DEADLINE_S:-900} + 30 )) node bench/workers.mjs
