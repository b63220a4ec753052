#!/usr/bin/env bash
# Builds the Rust crate into the Worker with worker-build: build/index_bg.wasm and its
# JS glue build/index.js; then minifies the hand-written entry src/entry.mjs into
# build/entry.mjs (the `main` in wrangler.toml, which imports index.js; worker-build's
# own build/worker/shim.mjs is left unused). wrangler.toml's [build] runs this before
# `wrangler dev`/`deploy`.
# Skips the build when the output is newer than src/, core/, the manifests, Cargo.lock and
# this script (its wasm-opt flags shape the output too), so `wrangler dev` starts fast and
# the tests build once. FORCE_BUILD=1 rebuilds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENTRY="build/entry.mjs"
WASM="build/index_bg.wasm"
GLUE="build/index.js"

if [[ "${FORCE_BUILD:-}" != "1" && -f "$ENTRY" && -f "$WASM" && -f "$GLUE" ]]; then
  newer="$(find src core/src core/Cargo.toml Cargo.toml Cargo.lock scripts/build.sh -newer "$ENTRY" -print -quit 2>/dev/null || true)"
  if [[ -z "$newer" ]]; then
    echo "[build] up to date ($ENTRY newer than src/, core/, Cargo.toml, Cargo.lock, scripts/build.sh): skipping worker-build" >&2
    exit 0
  fi
  echo "[build] $newer changed: rebuilding" >&2
fi

# Installs anything missing (skipped when the caller already bootstrapped).
# shellcheck source-path=SCRIPTDIR source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"

# Point worker-build at local tools so it never tries to download them (GitHub is unreachable).
export WASM_BINDGEN_BIN="$CARGO_BIN/wasm-bindgen"
export ESBUILD_BIN="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
for bin in "$WASM_BINDGEN_BIN" "$ESBUILD_BIN" "$WASM_OPT_BIN"; do
  [[ -x "$bin" ]] || { echo "[build] error: $bin missing (run scripts/bootstrap.sh)" >&2; exit 1; }
done

start=$SECONDS
stamp="$(mktemp "${TMPDIR:-/tmp}/stripe-edge-build.XXXXXX")"
trap 'rm -f "$stamp"' EXIT
echo "[build] worker-build --release" >&2
worker-build --release
for out in "$WASM" "$GLUE"; do
  [[ -f "$out" ]] || { echo "[build] error: worker-build did not produce $out" >&2; exit 1; }
done
# wasm-opt runs here, not in worker-build (`wasm-opt = false` in Cargo.toml): worker-build
# 0.8.7 always adds --debuginfo, which keeps the wasm "name" section (every function's
# mangled Rust name, ~40 KiB of the gzipped upload, read only to put names in a trap's
# stack trace), and the same -O pass run with it leaves 2 KiB (gzipped) more code than
# without it. So: worker-build's -O and its list of features (what workerd supports),
# without the name, producers and target-features sections. A trap then shows
# wasm-function[N]; KEEP_WASM_NAMES=1 npm run build keeps the names to debug one.
# --low-memory-unused: rustc's wasm32 layout puts the 1 MiB stack first, growing down
# towards 0, and the data after it, so nothing lives in the lowest 1 KiB; binaryen may
# then fold constant offsets into loads and stores (2 KiB of the gzipped upload).
# --one-caller-inline-max-function-size=20: binaryen's -O otherwise inlines every function
# that has a single caller, however large, and V8 compiles a hot wasm function whole with
# TurboFan. The settings' one-time load was inlined into the thread-local read every
# request makes, the Checkout Session and money-back decoders into `ingress::classify`
# that every event goes through: about 70 of the ~110 ms TurboFan spent over a new
# isolate's first deliveries (workerd's `--trace-wasm-compilation-times`), now about 37 ms
# in all; and the upload is 20 KB (gzipped) smaller. BENCHMARKS.md, "Session 9".
passes=(-O --low-memory-unused --one-caller-inline-max-function-size=20)
features=(--enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling)
if [[ "${KEEP_WASM_NAMES:-}" == "1" ]]; then
  sections=(--debuginfo)
else
  sections=(--strip-debug --strip-producers --strip-target-features)
fi
"$WASM_OPT_BIN" "${passes[@]}" "${features[@]}" "${sections[@]}" "$WASM" -o "$WASM.opt"
mv "$WASM.opt" "$WASM"
echo "[build] wasm-opt ${passes[*]} ${sections[*]}: $(wc -c <"$WASM") B" >&2
# The entry: wrangler.toml's `main` (and what bench/ and e2e/ load), minified like
# worker-build's index.js (not bundled: it imports ./index.js). Dated at the build's
# start, so a source edited during the build still counts as newer next time.
"$ESBUILD_BIN" src/entry.mjs --minify --format=esm --log-level=warning --outfile="$ENTRY"
touch -r "$stamp" "$ENTRY"
echo "[build] done in $((SECONDS - start)) s" >&2
