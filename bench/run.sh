#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, in order, on this machine. Not part of `npm test`:
# benchmarks want a quiet machine and take about 10 minutes. The load and fault soak
# is separate (bench/soak.mjs, ~3 min), since it checks correctness under faults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
echo "== native: verification against raw HMAC-SHA256, event decoding (criterion)"
cargo bench --bench ingress -- --warm-up-time 1 --measurement-time 3
echo "== engine level: the core in wasm against the stripe SDK on Node 22's V8"
bash bench/engine.sh
echo "== whole Workers under the same workerd (Miniflare), and startup"
bash bench/workers.sh
echo "== a new isolate's first deliveries: CPU by thread, and what V8 compiles with TurboFan"
node bench/tiering.mjs
