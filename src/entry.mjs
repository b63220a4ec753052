// The Worker's entry (wrangler.toml `main`; scripts/build.sh minifies it into
// build/entry.mjs). It moves values and decides nothing: Rust says which requests it
// reads itself, and answers every one of them.
//
// - A webhook delivery with a declared length (src/fast_webhook.rs says which): the body
//   is read here, Rust verifies and classifies it in one call (`S`: first SubtleCrypto
//   signs it, a promise Rust resolves); an event that is only recorded gets its claim run
//   here and its answer from Rust in a second call; anything else goes on in Rust
//   (`serve_verified`). No binding object on that path and no future but the HMAC's: over
//   a new isolate's first deliveries it cost the least (BENCHMARKS.md, "Session 7").
// - Every other request goes to Rust's `serve` (src/entry.rs), which routes it.
// - Queue batches and cron runs go to the handlers worker-build generated (src/lib.rs).
//
// Why not worker-build's default export: it constructs a WorkerEntrypoint behind two
// Proxies per request, and runs the fetch handler on wasm-bindgen-futures' executor
// (a queueMicrotask hop at the start and after every awaited promise). A panic or trap
// still re-instantiates the wasm on the next call (index.js checks on every call).

import Rust from './index.js';

// The crate's exports and worker-build's handlers (`queue`, `scheduled`: they read
// `this.env` and `this.ctx`).
const rust = Rust.prototype;

const JSON_HEADERS = { 'content-type': 'application/json', 'cache-control': 'no-store' };
const OK = { status: 200, headers: JSON_HEADERS };
let claimSql; // the ledger's claim statement, from Rust once per isolate

/** Rust's `A` answer (it logged the decision): three digits of status, the JSON body. */
function respond(answer) {
  const status = Number(answer.slice(1, 4));
  return new Response(answer.slice(4), status === 200 ? OK : { status, headers: JSON_HEADERS });
}

async function webhook(request, env, signature, started) {
  const body = new Uint8Array(await request.arrayBuffer());
  let begun = rust.webhook_begin(body, signature, env, started);
  if (begun === 'S') {
    begun = await new Promise((resolve) => {
      rust.webhook_signed(body, signature, env, started, resolve);
    });
  }
  if (begun[0] === 'A') return respond(begun);
  if (begun[0] !== 'C') {
    return new Promise((resolve) => {
      rust.serve_verified(body, env, started, resolve);
    });
  }
  const args = JSON.parse(begun.slice(1));
  let row = null;
  let threw = false;
  let error;
  try {
    claimSql ??= rust.claim_sql();
    row = await env.DB.prepare(claimSql).bind(...args).first();
  } catch (e) {
    threw = true;
    error = e;
  }
  const returned = row !== null && row !== undefined;
  return respond(rust.webhook_claimed(
    args[0], args[1], args[5], returned, returned ? row.type : undefined,
    returned ? row.object_id ?? undefined : undefined, threw, error, started,
  ));
}

export default {
  fetch(request, env) {
    const headers = request.headers;
    if (rust.webhook_fast(request.method, request.url, headers.get('content-length'), env)) {
      return webhook(request, env, headers.get('stripe-signature'), Date.now())
        .catch((e) => rust.failed(e));
    }
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
