-- The event ledger: one row per Stripe event id, claimed atomically with
-- INSERT ... ON CONFLICT(id) DO NOTHING RETURNING id (never read-then-write).
-- Holds no customer data: ids, types and timestamps only.
CREATE TABLE events (
  id          TEXT    PRIMARY KEY,          -- Stripe event id, evt_...
  type        TEXT    NOT NULL,             -- e.g. checkout.session.completed
  livemode    INTEGER NOT NULL,             -- 0 test mode, 1 live mode
  api_version TEXT,                         -- the API version the payload was rendered in
  created     INTEGER,                      -- Stripe's `created`, unix seconds
  object_id   TEXT,                         -- data.object.id: the Checkout Session for checkout events
  disposition TEXT    NOT NULL,             -- what the Worker decided: fulfil, ignored, awaiting_payment, ...
  received_at INTEGER NOT NULL              -- when this Worker first accepted it, unix milliseconds
) STRICT;

-- Support lookups go from a session to its events; retention prunes by age.
CREATE INDEX events_by_object ON events (object_id);
CREATE INDEX events_by_received_at ON events (received_at);
