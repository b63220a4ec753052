// What the whole-Worker benchmarks share (workers.mjs, ab.mjs, profile.mjs): the signed
// deliveries every Worker gets, the two floor Workers, and the D1 schema from migrations/.

import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Stripe from 'stripe';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SECRET = 'whsec_bench_workers_secret';
export const COMPAT_DATE = readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8').match(/^compatibility_date = "(.+)"$/m)[1];

/** Every statement of migrations/, in order (`--` comments stripped; none holds a `;` in a string). */
export const MIGRATION_STATEMENTS = readdirSync(path.join(ROOT, 'migrations')).filter((f) => f.endsWith('.sql')).sort()
  .flatMap((f) => readFileSync(path.join(ROOT, 'migrations', f), 'utf8')
    .split('\n').map((l) => l.replace(/--.*$/, '')).join('\n')
    .split(';').map((s) => s.trim()).filter(Boolean));

/** Applies the schema to a Miniflare D1 binding. */
export async function migrate(db) {
  for (const s of MIGRATION_STATEMENTS) await db.prepare(s).run();
}

// The reference's own statement (bench/reference/index.mjs).
const INSERT = 'INSERT INTO events (id, type, livemode, api_version, created, object_id, disposition, received_at) '
  + 'VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING RETURNING id';

/** The floor: reads the body (as both Workers do) and answers a small JSON, nothing else. */
export const FLOOR = {
  modules: true,
  script: `export default { async fetch(request) {
    const body = await request.arrayBuffer();
    return Response.json({ received: true, bytes: body.byteLength });
  } };`,
};

/** The D1 floor: the reference minus verification (JSON.parse, the same insert, log line and answer). */
export const D1_FLOOR = {
  modules: true,
  script: `const INSERT = ${JSON.stringify(INSERT)};
  export default { async fetch(request, env) {
    const event = JSON.parse(await request.text());
    const row = await env.DB.prepare(INSERT).bind(event.id, event.type, event.livemode ? 1 : 0,
      event.api_version ?? null, event.created ?? null, event.data?.object?.id ?? null, 'ignored', Date.now()).first();
    const status = row ? 'ignored' : 'duplicate';
    console.log(JSON.stringify({ level: 'info', msg: 'webhook recorded', event_id: event.id, event_type: event.type, status }));
    return Response.json({ received: true, event_id: event.id, status });
  } };`,
};

/** The Miniflare options of one build of this Worker (a directory scripts/build.sh wrote). */
export function rustWorker(dir) {
  return {
    modulesRoot: dir,
    modules: [
      // A build from before src/entry.mjs (an older commit's, to compare) has none.
      ...(existsSync(path.join(dir, 'entry.mjs')) ? [{ type: 'ESModule', path: path.join(dir, 'entry.mjs') }] : []),
      { type: 'ESModule', path: path.join(dir, 'index.js') },
      { type: 'CompiledWasm', path: path.join(dir, 'index_bg.wasm') },
    ],
  };
}

/** The reference JavaScript Worker, as bench/workers.sh bundles it. */
export const REFERENCE = { modules: true, scriptPath: path.join(ROOT, 'bench/.build/reference/index.js') };

/** The pids of the workerd processes this Node process started (one per Miniflare). */
export function workerdChildren() {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (stat.includes('(workerd)') && ppid === process.pid) pids.push(Number(entry));
    } catch { /* gone */ }
  }
  return pids;
}

/** The workerd started since `before` (what `workerdChildren()` returned then). */
export function newWorkerd(before) {
  const [pid] = workerdChildren().filter((p) => !before.includes(p));
  if (!pid) throw new Error('no new workerd process');
  return pid;
}

/**
 * CPU seconds of `pid`, from each thread's schedstat (nanoseconds, not clock ticks):
 * `all` its threads; `v8` only V8's own worker threads (named `V8 DefaultWorke…`:
 * TurboFan's background compiles and concurrent GC, off the request's thread).
 */
export function threadCpu(pid) {
  let all = 0;
  let v8 = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ns = Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
      all += ns;
      if (readFileSync(`/proc/${pid}/task/${task}/comm`, 'utf8').startsWith('V8')) v8 += ns;
    } catch { /* gone */ }
  }
  return { all: all / 1e9, v8: v8 / 1e9 };
}

let serial = 0;
/**
 * `n` signed `payment_intent.created` deliveries of about `kb` KB, each with a unique
 * event id (`tag` names the script in it): both Workers verify, decode and record them
 * as ignored, so neither calls an upstream.
 */
export function deliveries(n, kb, tag) {
  const now = Math.floor(Date.now() / 1000);
  return Array.from({ length: n }, () => {
    serial += 1;
    const id = `evt_${tag}_${process.pid}_${serial}`;
    const head = `{"id":"${id}","object":"event","type":"payment_intent.created","livemode":false,"api_version":"2025-03-31.basil","created":${now},"data":{"object":{"id":"pi_${tag}_${serial}","object":"payment_intent","amount":2000,"currency":"usd","description":"`;
    const tail = '"}}}';
    const payload = head + 'x'.repeat(Math.max(0, kb * 1024 - head.length - tail.length)) + tail;
    const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET, timestamp: now });
    return { payload, header };
  });
}
