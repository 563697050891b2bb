-- Retry safety: one row per (vault key, Idempotency-Key) — or per identical request inside a
-- key's dedupe window — holding the first attempt's state and, once answered, its response.
CREATE TABLE idempotency_records (
  key_id           TEXT NOT NULL,
  idem_key         TEXT NOT NULL,      -- the client's Idempotency-Key, or "dedupe:" + request hash
  request_hash     TEXT NOT NULL,      -- SHA-256 of method, normalised path and body
  state            TEXT NOT NULL,      -- in_flight | completed | unknown
  audit_id         INTEGER NOT NULL,   -- the audit row of the attempt that reserved
  reserved_micros  INTEGER NOT NULL,   -- what that attempt reserved (carried over by a retry)
  spend_day        TEXT NOT NULL,
  status           INTEGER,
  headers          TEXT,               -- JSON [[name, value], …] of the vendor's response headers
  body             BLOB,
  updated_at       INTEGER NOT NULL,
  expires_at       INTEGER NOT NULL,
  PRIMARY KEY (key_id, idem_key)
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency_records (expires_at);
