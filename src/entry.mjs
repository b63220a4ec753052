// The Worker's entry (wrangler.toml `main`; scripts/build.sh minifies it into
// build/entry.mjs). It moves the request and decides nothing: every HTTP request goes to
// Rust's `serve` (src/entry.rs), which routes it and hands back the Response; queue
// batches and cron runs go to the handlers worker-build generated from src/lib.rs.
//
// Why not worker-build's default export: it constructs a WorkerEntrypoint behind two
// Proxies per request, and runs the fetch handler on wasm-bindgen-futures' executor
// (a queueMicrotask hop at the start and after every awaited promise); together with the
// D1 claim's second statement that was most of the CPU the Rust Worker spent above the
// JavaScript reference (BENCHMARKS.md, "Whole Workers under the same workerd"). A panic
// or trap still re-instantiates the wasm on the next call (index.js checks on every call
// into it).

import Rust from './index.js';

// The crate's exports and worker-build's handlers (`queue`, `scheduled`: they read
// `this.env` and `this.ctx`).
const rust = Rust.prototype;

export default {
  fetch(request, env) {
    return new Promise((resolve) => {
      rust.serve(request, env, resolve);
    });
  },
  queue(batch, env, ctx) {
    return rust.queue.call({ env, ctx }, batch);
  },
  scheduled(event, env, ctx) {
    return rust.scheduled.call({ env, ctx }, event);
  },
};
