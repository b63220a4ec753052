#!/usr/bin/env bash
# Builds the crate's bench export (feature bench-export) for Node with the same
# wasm-bindgen the Worker uses, then runs bench/engine.mjs under Node 22.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
cargo build -q --release --target wasm32-unknown-unknown --features bench-export --lib
# --target web: ES modules throughout (the worker crate injects an ES-module snippet).
rm -rf bench/.build
wasm-bindgen --target web --out-dir bench/.build target/wasm32-unknown-unknown/release/stripe_edge.wasm
node bench/engine.mjs
