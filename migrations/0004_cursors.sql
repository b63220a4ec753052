-- Positions the scheduled run keeps between runs. `reconciled_until`: the Stripe
-- `created` time (unix seconds) up to which Checkout events have been listed from the
-- Stripe API and ingested. Only ever moves forward (conditional upsert).
CREATE TABLE cursors (
  name       TEXT    PRIMARY KEY,
  value      INTEGER NOT NULL,
  updated_at INTEGER NOT NULL               -- unix milliseconds
) STRICT;
