-- Throttling promotion-code guesses on POST /checkout: requests carrying a code, per
-- client and fixed window. Counted with one atomic statement,
--   INSERT ... ON CONFLICT (key, window_start) DO UPDATE SET attempts = attempts + 1
--   RETURNING attempts
-- so concurrent requests never read the same count.
-- `key` is an HMAC-SHA256 (hex, keyed with STRIPE_API_KEY) of the client's address (an
-- IPv6 client is counted twice: its /64 and its /48), never the address itself.
-- Only the current window is ever read: rows of past windows can be deleted at any
-- time, e.g.
--   DELETE FROM checkout_code_attempts WHERE window_start < unixepoch() - 86400;
CREATE TABLE checkout_code_attempts (
  key          TEXT    NOT NULL,            -- hex HMAC-SHA256 of the client address or block
  window_start INTEGER NOT NULL,            -- unix seconds, a multiple of CHECKOUT_CODE_WINDOW_SECS
  attempts     INTEGER NOT NULL,            -- requests with a code in this window
  PRIMARY KEY (key, window_start)
) STRICT;

-- Pruning old windows by age.
CREATE INDEX checkout_code_attempts_by_window ON checkout_code_attempts (window_start);
