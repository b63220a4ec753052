#!/usr/bin/env bash
# The suite's determinism check (issue 15, item 14): runs `npm test` RUNS times in a
# row (default 3) while BURNERS CPU-bound processes (default 1) spin beside it, and
# stops at the first failure. Each run's output goes to e2e/.tmp/under-load/run-N.log;
# the summary (exit code, seconds, load average per run) is printed at the end.
#
#   bash scripts/under-load.sh            # 3 runs, 1 burner
#   RUNS=5 BURNERS=2 bash scripts/under-load.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${RUNS:-3}"
BURNERS="${BURNERS:-1}"
OUT="$ROOT/e2e/.tmp/under-load"
mkdir -p "$OUT"

pids=()
stop_burners() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in $(seq 1 "$BURNERS"); do
  # Busy loop that never ends by itself: one core, no I/O.
  node -e 'for (;;) {}' &
  pids+=("$!")
done
echo "[under-load] ${BURNERS} CPU burner(s) running: ${pids[*]}; ${RUNS} runs of npm test" >&2

summary=()
status=0
for n in $(seq 1 "$RUNS"); do
  start=$SECONDS
  if npm test >"$OUT/run-$n.log" 2>&1; then rc=0; else rc=$?; fi
  line="run $n: exit $rc in $((SECONDS - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg), $(grep -Eo '^. (pass|fail|skipped) [0-9]+$' "$OUT/run-$n.log" | tr '\n' ' ')"
  echo "[under-load] $line" >&2
  summary+=("$line")
  if (( rc != 0 )); then status=$rc; break; fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
