#!/usr/bin/env bash
# Installs whatever the build and the tests need and is still missing; fast when
# everything is already there. Source it (the other scripts do) or run it.
#
# Needs only rustup-managed Rust, Node >= 20 and npm on the machine. Everything
# else comes from crates.io (worker-build, wasm-bindgen-cli) and npm (wrangler,
# Node 22, binaryen, stripe).
#
# Exports: ROOT, CARGO_BIN, PATH (node_modules/.bin and ~/.cargo/bin first), the
# no-telemetry variables, and STRIPE_EDGE_BOOTSTRAPPED=1 so nested calls
# (wrangler running scripts/build.sh) skip it.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

WORKER_BUILD_VERSION="0.8.7"
NODE_MIN_MAJOR=22
NODE_MIN_MINOR=12

bootstrap_log() { printf '[bootstrap] %s\n' "$*" >&2; }
bootstrap_die() { printf '[bootstrap] error: %s\n' "$*" >&2; return 1; }

# No telemetry, no outside fetches from wrangler.
export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
export DO_NOT_TRACK=1

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export CARGO_BIN
export PATH="$ROOT/node_modules/.bin:$CARGO_BIN:$PATH"

# Compiles the missing tools from crates.io (their prebuilt binaries are GitHub release
# assets, unreachable from these machines), for about a third of the CPU time of two
# plain `cargo install`s (200 s instead of 676 s; costs per part in README.md, "Quick start"):
# - opt-level 0 instead of the release profile's 3, for these two installs only (most
#   of the saving). The tools do little per build: wasm-bindgen takes 0.9 s instead of
#   0.2 s on this Worker, and what they build is byte-identical.
#   STRIPE_EDGE_TOOLS_OPT_LEVEL=3 builds them fully optimized.
# - one scratch target directory for both, one install after the other, so the ~60
#   dependencies they share compile once. It is deleted afterwards.
# - wasm-bindgen-cli: only the `wasm-bindgen` binary (the build uses no other), without
#   its default `rustls-tls` feature (TLS for the test runner's downloads).
bootstrap_install_tools() {
  local need_wb=$1 need_wbg=$2 wbg_want=$3
  local target rc=0
  target="$(mktemp -d "${TMPDIR:-/tmp}/stripe-edge-tools.XXXXXX")" || return 1
  local -a install_env=(CARGO_TARGET_DIR="$target" CARGO_PROFILE_RELEASE_OPT_LEVEL="${STRIPE_EDGE_TOOLS_OPT_LEVEL:-0}")
  if (( need_wb )); then
    bootstrap_log "installing worker-build $WORKER_BUILD_VERSION (once per machine; see README \"Quick start\")"
    env "${install_env[@]}" cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked || rc=1
  fi
  if (( rc == 0 && need_wbg )); then
    bootstrap_log "installing wasm-bindgen-cli $wbg_want (once per machine and wasm-bindgen version)"
    # Not --locked: its lock pins a webpki-roots version the registry no longer has.
    env "${install_env[@]}" cargo install wasm-bindgen-cli --version "$wbg_want" \
      --no-default-features --bin wasm-bindgen || rc=1
  fi
  rm -rf "$target"
  return "$rc"
}

bootstrap_main() {
  command -v cargo >/dev/null || bootstrap_die "cargo not found: install Rust with rustup (https://rustup.rs)" || return 1
  command -v rustup >/dev/null || bootstrap_die "rustup not found: the wasm32 target is installed with rustup" || return 1
  command -v npm >/dev/null || bootstrap_die "npm not found: install Node.js (>= 20) and npm" || return 1

  # 1. The wasm32 target.
  if ! rustup target list --installed 2>/dev/null | grep -qx 'wasm32-unknown-unknown'; then
    bootstrap_log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown || return 1
  fi

  # 2. worker-build, exactly the version matching the worker crate.
  local wb_version="" need_wb=0
  if command -v worker-build >/dev/null; then
    wb_version="$(worker-build --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true)"
  fi
  if [[ "$wb_version" != "$WORKER_BUILD_VERSION" ]]; then
    bootstrap_log "worker-build $WORKER_BUILD_VERSION needed (found: ${wb_version:-none})"
    need_wb=1
  fi

  # 3. The wasm-bindgen CLI: must equal the wasm-bindgen crate in Cargo.lock.
  if [[ ! -f "$ROOT/Cargo.lock" ]]; then
    bootstrap_log "Cargo.lock missing: generating it"
    (cd "$ROOT" && cargo generate-lockfile) || return 1
  fi
  local wbg_want
  wbg_want="$(awk '
    $0 == "[[package]]" { name = "" }
    /^name = / { name = $3; gsub(/"/, "", name) }
    /^version = / && name == "wasm-bindgen" { v = $3; gsub(/"/, "", v); print v; exit }
  ' "$ROOT/Cargo.lock")"
  [[ -n "$wbg_want" ]] || bootstrap_die "no wasm-bindgen package in Cargo.lock" || return 1
  local wbg_have="" need_wbg=0
  if [[ -x "$CARGO_BIN/wasm-bindgen" ]]; then
    wbg_have="$("$CARGO_BIN/wasm-bindgen" --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true)"
  fi
  if [[ "$wbg_have" != "$wbg_want" ]]; then
    bootstrap_log "wasm-bindgen-cli $wbg_want needed (found: ${wbg_have:-none})"
    need_wbg=1
  fi

  if (( need_wb || need_wbg )); then
    bootstrap_install_tools "$need_wb" "$need_wbg" "$wbg_want" || return 1
  fi

  # 4. npm packages (wrangler, Node 22, binaryen, stripe), exactly as package-lock.json
  #    pins them: the lock lists every platform's workerd package, so `npm ci` installs
  #    without rewriting it and a fresh clone stays clean. Runs only when node_modules is
  #    missing or package.json / package-lock.json changed since the last install.
  local stamp="$ROOT/node_modules/.package-lock.json"
  if [[ ! -f "$stamp" || "$ROOT/package.json" -nt "$stamp" || "$ROOT/package-lock.json" -nt "$stamp" ]]; then
    bootstrap_log "npm ci"
    (cd "$ROOT" && npm ci --no-audit --no-fund) \
      || bootstrap_die "npm ci failed; after editing package.json, run \`npm install\` once and commit the updated package-lock.json" \
      || return 1
    touch "$stamp"
  fi

  # 5. wrangler 4 refuses Node < 22.12: make sure the npm-installed Node 22 is the one found.
  hash -r
  local node_version
  node_version="$(node --version 2>/dev/null || true)"
  if [[ ! "$node_version" =~ ^v([0-9]+)\.([0-9]+)\. ]] \
    || (( BASH_REMATCH[1] < NODE_MIN_MAJOR || (BASH_REMATCH[1] == NODE_MIN_MAJOR && BASH_REMATCH[2] < NODE_MIN_MINOR) )); then
    bootstrap_die "node on PATH is ${node_version:-missing} ($(command -v node || echo none)); need >= $NODE_MIN_MAJOR.$NODE_MIN_MINOR (the npm devDependency \"node\" provides it in node_modules/.bin)" || return 1
  fi

  export STRIPE_EDGE_BOOTSTRAPPED=1
}

if [[ "${STRIPE_EDGE_BOOTSTRAPPED:-}" != "1" ]]; then
  bootstrap_main || { if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then exit 1; else return 1; fi; }
fi
