#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECS seconds each (default 10: the smoke run
# of `npm test`; use e.g. FUZZ_SECS=600 for a long run). Each run starts from the
# committed seed corpus (fuzz/corpus/<target>) and writes what it finds to a scratch
# directory, so the committed corpus never changes. A crash fails the script and
# leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECS="${FUZZ_SECS:-10}"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "[fuzz] installing the nightly toolchain (cargo fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "[fuzz] installing cargo-fuzz 0.13.2 (once, ~2 min)" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

for target in $(cargo +nightly fuzz list); do
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/stripe-edge-fuzz.XXXXXX")"
  echo "[fuzz] $target for ${SECS} s" >&2
  log="$(mktemp "${TMPDIR:-/tmp}/stripe-edge-fuzz-log.XXXXXX")"
  set +e
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs|ERROR|panicked|deadly signal' "$log" >&2 || true
  if (( status != 0 )); then tail -n 40 "$log" >&2; fi
  rm -rf "$scratch" "$log"
  if (( status != 0 )); then
    echo "[fuzz] $target FAILED (exit $status): see fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "[fuzz] every target ran ${SECS} s with no crash" >&2
