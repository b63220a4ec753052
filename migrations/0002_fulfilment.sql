-- Fulfilment state. A purchase is a Checkout Session; its steps (license, shipping)
-- each move pending -> running -> done | failed, every move one conditional UPDATE.
-- No customer data is stored: ids, states, a short error text and the upstream's id.

CREATE TABLE purchases (
  session_id TEXT    PRIMARY KEY,           -- cs_...
  -- awaiting_payment | payment_failed | fulfilling | fulfilled | failed | nothing_to_fulfil
  state      TEXT    NOT NULL,
  livemode   INTEGER NOT NULL,
  created_at INTEGER NOT NULL,              -- unix milliseconds
  updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX purchases_by_state ON purchases (state, updated_at);

CREATE TABLE steps (
  session_id  TEXT    NOT NULL REFERENCES purchases (session_id),
  step        TEXT    NOT NULL,             -- license | shipping
  -- The event that opened the step. Every attempt builds its request from it, so a
  -- retry driven by another event about the same session sends the same body under
  -- the same Idempotency-Key (servers refuse a reused key with a different body).
  event_id    TEXT    NOT NULL,
  state       TEXT    NOT NULL,             -- pending | running | done | failed
  -- While running: until when the claimant holds it (unix ms). After that another
  -- delivery may claim it again; the upstream Idempotency-Key keeps that safe.
  lease_until INTEGER,
  attempts    INTEGER NOT NULL DEFAULT 0,   -- claims so far; also the fencing token
  last_error  TEXT,                         -- short reason, never customer data
  result      TEXT,                         -- license key or shipment id once done
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (session_id, step)
) STRICT;

CREATE INDEX steps_by_state ON steps (state, lease_until);

-- Support and re-delivery lookup: the license and shipment of each purchase.
CREATE VIEW purchase_mappings AS
SELECT p.session_id,
       p.state,
       (SELECT result FROM steps s WHERE s.session_id = p.session_id AND s.step = 'license' AND s.state = 'done')  AS license_key,
       (SELECT result FROM steps s WHERE s.session_id = p.session_id AND s.step = 'shipping' AND s.state = 'done') AS shipment_id
FROM purchases p;
