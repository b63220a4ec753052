#!/usr/bin/env bash
# `npm test`: formatting, lints, native unit tests, the wasm build, its size, then
# the end-to-end tests against `wrangler dev`. Fails on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

phase_start=0
phase() { phase_start=$SECONDS; printf '\n==> %s\n' "$*" >&2; }
phase_done() { printf '<== %s s\n' "$((SECONDS - phase_start))" >&2; }
total_start=$SECONDS

phase "bootstrap"
# shellcheck source-path=SCRIPTDIR source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
echo "node $(node --version), $(cargo --version), worker-build $(worker-build --version 2>/dev/null | head -n1)" >&2
phase_done

phase "cargo fmt --all --check"
cargo fmt --all --check
phase_done

phase "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
phase_done

phase "cargo test --workspace"
cargo test --workspace
phase_done

phase "fuzz smoke (scripts/fuzz.sh, ${FUZZ_SECS:-10} s per target)"
FUZZ_SECS="${FUZZ_SECS:-10}" bash scripts/fuzz.sh
phase_done

phase "build (scripts/build.sh)"
bash scripts/build.sh
phase_done

phase "size"
size_line() {
  awk -v l="$1" -v r="$2" -v g="$3" \
    'BEGIN { printf "%-22s %9d B %8.1f KiB   gzipped %9d B %8.1f KiB\n", l, r, r / 1024, g, g / 1024 }'
}
total_raw=0; total_gz=0
# The .wasm, its JS glue, and the entry wrangler.toml's `main` points at (it imports the glue).
for f in build/index_bg.wasm build/index.js build/entry.mjs; do
  raw=$(wc -c <"$f"); gz=$(gzip -9 -c "$f" | wc -c)
  size_line "$f" "$raw" "$gz"
  total_raw=$((total_raw + raw)); total_gz=$((total_gz + gz))
done
size_line "total" "$total_raw" "$total_gz"
# The budget: the whole upload gzipped. Workers allows 3 MB on Free, but size is cold
# start; a minimal workers-rs Worker with D1, queue and HMAC is ~197 KB here.
BUDGET_GZ_BYTES=$((300 * 1024))
if (( total_gz > BUDGET_GZ_BYTES )); then
  echo "bundle over budget: ${total_gz} B gzipped > ${BUDGET_GZ_BYTES} B (scripts/test.sh)" >&2
  exit 1
fi
echo "budget: $((total_gz * 100 / BUDGET_GZ_BYTES)) % of $((BUDGET_GZ_BYTES / 1024)) KiB gzipped"
phase_done

phase "wrangler deploy --dry-run (every environment in wrangler.toml)"
# No account needed: validates each environment block and reports the upload size,
# so a broken environment fails CI before anyone deploys it.
dry="$(mktemp -d "${TMPDIR:-/tmp}/stripe-edge-dry.XXXXXX")"
for env in "" $(grep -Eo '^\[env\.[a-z0-9_-]+\]' wrangler.toml | sed -E 's/\[env\.(.*)\]/\1/'); do
  out="$(wrangler deploy --dry-run --outdir "$dry/${env:-top}" ${env:+--env "$env"} </dev/null 2>&1)" \
    || { printf '%s\n' "$out" >&2; echo "dry run failed for environment '${env:-(top level)}'" >&2; exit 1; }
  printf '%-12s %s\n' "${env:-(local)}" "$(grep -m1 'Total Upload' <<<"$out")"
done
rm -rf "$dry"
phase_done

phase "end-to-end tests (node --test, $(node --version))"
# Every worker's output is kept in e2e/.tmp/logs (e2e/support/worker.mjs) for a failed run.
rm -rf e2e/.tmp/logs
node --test --test-concurrency=1 --test-reporter=spec 'e2e/**/*.test.mjs' \
  || { echo "end-to-end tests failed; each worker's output is in e2e/.tmp/logs/" >&2; exit 1; }
phase_done

printf '\nall checks passed in %s s\n' "$((SECONDS - total_start))" >&2
