// A new isolate's first deliveries, and what V8 compiles for them: each Worker (this
// Worker's build and the reference) starts in its own workerd under Miniflare and takes
// WINDOWS of signed deliveries; per window, the CPU per delivery of the request's thread
// and of V8's worker threads (TurboFan's background compiles, concurrent GC). Then, with
// workerd's V8 flag `--trace-wasm-compilation-times`, one more run of this Worker lists
// every wasm function compiled with TurboFan in those deliveries, largest compile first
// (named when the build kept its names: KEEP_WASM_NAMES=1), and the Liftoff total.
//
// Why: V8 compiles a wasm function with Liftoff on its first call and, once it is hot,
// whole with TurboFan on a background thread, and workerd's process CPU counts that
// thread. A large function every delivery calls is compiled whole in every new isolate,
// whatever part of it runs (BENCHMARKS.md, "Session 9").
//
// Run (after `bash bench/workers.sh` once, which bundles the reference):
//   node bench/tiering.mjs
//   KEEP_WASM_NAMES=1 FORCE_BUILD=1 bash scripts/build.sh && node bench/tiering.mjs   # with names
// Knobs: BUILD_DIR (build), SIZE_KB (1), SETS (2), WINDOWS (50,50,100,100,300,300,300
// deliveries), CONCURRENCY (8), TOP (15).

import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Miniflare, convertV4MiniflareOptions } from 'miniflare';

import {
  COMPAT_DATE, REFERENCE, ROOT, SECRET, deliveries as signed, migrate, newWorkerd, rustWorker, threadCpu, workerdChildren,
} from './support.mjs';

const BUILD_DIR = path.resolve(ROOT, process.env.BUILD_DIR ?? 'build');
const SIZE_KB = Number(process.env.SIZE_KB ?? 1);
const SETS = Number(process.env.SETS ?? 2);
const WINDOWS = (process.env.WINDOWS ?? '50,50,100,100,300,300,300').split(',').map(Number);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const TOP = Number(process.env.TOP ?? 15);
const TRACE_FLAG = '--trace-wasm-compilation-times';

async function load(url, batch) {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < batch.length) {
      const { payload, header } = batch[next];
      next += 1;
      const res = await fetch(new URL('/webhooks/stripe', url), {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'stripe-signature': header },
        body: payload,
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`answered ${res.status}: ${text}`);
    }
  }));
}

/** Starts one Worker; `onLog` gets workerd's structured log lines (V8's trace among them). */
async function start(worker, onLog = () => {}) {
  const before = workerdChildren();
  const mf = new Miniflare(convertV4MiniflareOptions({
    handleStructuredLogs: onLog,
    workers: [{ name: 'w', ...worker, compatibilityDate: COMPAT_DATE, d1Databases: { DB: 'tiering' }, bindings: { STRIPE_WEBHOOK_SECRET: SECRET } }],
  }));
  try {
    const url = await mf.ready;
    await migrate(await mf.getD1Database('DB'));
    return { mf, url, pid: newWorkerd(before) };
  } catch (e) {
    await mf.dispose();
    throw e;
  }
}

/** Per window: [request-thread ms, V8 worker-thread ms] per delivery. */
async function windows(worker) {
  const { mf, url, pid } = await start(worker);
  try {
    const out = [];
    let prev = threadCpu(pid);
    for (const n of WINDOWS) {
      await load(url, signed(n, SIZE_KB, 'tiering'));
      const cur = threadCpu(pid);
      out.push([((cur.all - cur.v8) - (prev.all - prev.v8)) * 1000 / n, (cur.v8 - prev.v8) * 1000 / n]);
      prev = cur;
    }
    return out;
  } finally {
    await mf.dispose();
  }
}

/** Function names by index (imports first, as V8 counts) from the wasm's name section. */
function functionNames(wasmPath) {
  const names = new Map();
  const [section] = WebAssembly.Module.customSections(new WebAssembly.Module(readFileSync(wasmPath)), 'name');
  if (!section) return names;
  const bytes = new Uint8Array(section);
  let at = 0;
  const leb = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[at++];
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
  };
  while (at < bytes.length) {
    const id = bytes[at++];
    const size = leb();
    const end = at + size;
    if (id === 1) {
      for (let count = leb(); count > 0; count -= 1) {
        const index = leb();
        const length = leb();
        names.set(index, new TextDecoder().decode(bytes.subarray(at, at + length)));
        at += length;
      }
    }
    at = end;
  }
  return names;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const total = WINDOWS.reduce((a, b) => a + b, 0);
console.log(`load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${SETS} sets; a new isolate's first ${total} signed ${SIZE_KB} KB deliveries in windows of ${WINDOWS.join(', ')}, concurrency ${CONCURRENCY}; build ${path.relative(ROOT, BUILD_DIR) || '.'}`);

const runs = { rust: [], js: [] };
for (let set = 0; set < SETS; set += 1) {
  // Alternating which goes first.
  const order = set % 2 ? ['js', 'rust'] : ['rust', 'js'];
  for (const name of order) runs[name].push(await windows(name === 'rust' ? rustWorker(BUILD_DIR) : REFERENCE));
}
let first = 0;
const header = WINDOWS.map((n) => { const label = `${first + 1}–${first + n}`; first += n; return label; });
console.log(`\nCPU ms per delivery, request thread / V8 worker threads (median of ${SETS} sets):\n`);
console.log(`| Worker | ${header.join(' | ')} | V8 worker threads, all ${total} |`);
console.log(`|---|${header.map(() => '---|').join('')}---|`);
for (const name of ['rust', 'js']) {
  const cells = WINDOWS.map((_, w) => `${median(runs[name].map((r) => r[w][0])).toFixed(2)} / ${median(runs[name].map((r) => r[w][1])).toFixed(3)}`);
  const background = median(runs[name].map((r) => r.reduce((sum, [, v8], w) => sum + v8 * WINDOWS[w], 0)));
  console.log(`| ${name === 'rust' ? 'this Worker' : 'reference'} | ${cells.join(' | ')} | ${background.toFixed(0)} ms |`);
}

// The compile trace: V8 writes one line per compiled function, which workerd logs.
const compiled = [];
process.env.MINIFLARE_WORKERD_V8_FLAGS = [process.env.MINIFLARE_WORKERD_V8_FLAGS, TRACE_FLAG].filter(Boolean).join(' ');
const traced = await start(rustWorker(BUILD_DIR), ({ message }) => {
  const m = /#(\d+) using (\w+), took (\d+) .*bodysize (\d+)/.exec(String(message));
  if (m) compiled.push({ index: Number(m[1]), tier: m[2], us: Number(m[3]), body: Number(m[4]) });
});
try {
  await load(traced.url, signed(total, SIZE_KB, 'tiering'));
} finally {
  await traced.mf.dispose();
}
const names = functionNames(path.join(BUILD_DIR, 'index_bg.wasm'));
const sum = (tier) => compiled.filter((c) => c.tier === tier).reduce((a, c) => a + c.us, 0) / 1000;
const turbofan = compiled.filter((c) => c.tier === 'TurboFan').sort((a, b) => b.us - a.us);
console.log(`\nCompiled in the first ${total} deliveries (one run, ${TRACE_FLAG}): Liftoff ${compiled.length - turbofan.length} functions, ${sum('Liftoff').toFixed(1)} ms; TurboFan ${turbofan.length} functions, ${sum('TurboFan').toFixed(1)} ms${names.size ? '' : ' (no name section: build with KEEP_WASM_NAMES=1 for names)'}\n`);
console.log('| TurboFan ms | wasm body bytes | function |\n|---|---|---|');
for (const c of turbofan.slice(0, TOP)) {
  const name = names.get(c.index) ?? `wasm-function[${c.index}]`;
  console.log(`| ${(c.us / 1000).toFixed(1)} | ${c.body} | ${name.length > 110 ? `${name.slice(0, 107)}…` : name} |`);
}
console.log(`\nload average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
