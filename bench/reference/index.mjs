// The reference: the same ingress written the usual way, as a JavaScript Worker with
// the official `stripe` package. bench/workers.mjs runs it beside the Rust Worker on
// the same deliveries. It does what the Rust Worker does for an event type it only
// records: verify with the SDK (SubtleCrypto), the same D1 insert-or-ignore into the
// same `events` table, one JSON log line, a JSON answer. Not part of the product.

import Stripe from 'stripe';

const cryptoProvider = Stripe.createSubtleCryptoProvider();
const INSERT = 'INSERT INTO events (id, type, livemode, api_version, created, object_id, disposition, received_at) '
  + 'VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING RETURNING id';

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method !== 'POST' || url.pathname !== '/webhooks/stripe') {
      return Response.json({ error: 'not found' }, { status: 404 });
    }
    const body = await request.text();
    let event;
    try {
      event = await Stripe.webhooks.constructEventAsync(
        body,
        request.headers.get('stripe-signature'),
        env.STRIPE_WEBHOOK_SECRET,
        300,
        cryptoProvider,
      );
    } catch (err) {
      console.warn(JSON.stringify({ level: 'warn', msg: 'webhook refused', detail: err.message }));
      return Response.json({ error: err.message }, { status: 400 });
    }
    const row = await env.DB.prepare(INSERT).bind(
      event.id,
      event.type,
      event.livemode ? 1 : 0,
      event.api_version ?? null,
      event.created ?? null,
      event.data?.object?.id ?? null,
      'ignored',
      Date.now(),
    ).first();
    const status = row ? 'ignored' : 'duplicate';
    console.log(JSON.stringify({ level: 'info', msg: 'webhook recorded', event_id: event.id, event_type: event.type, status }));
    return Response.json({ received: true, event_id: event.id, status });
  },
};
