// What the whole-Worker benchmarks share (workers.mjs, ab.mjs, profile.mjs): the signed
// deliveries every Worker gets, the two floor Workers, and the D1 schema from migrations/.

import { readFileSync, readdirSync } from 'node:fs';
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
