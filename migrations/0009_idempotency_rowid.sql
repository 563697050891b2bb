-- idempotency_records was WITHOUT ROWID: its rows, a whole stored answer each (~1.5 KB for a
-- Stripe object), lived in the primary key's b-tree. A fresh Idempotency-Key is random
-- (stripe-node sends a UUID on every POST), so every call inserted a big row at a random leaf and
-- its settlement grew that leaf again: ~3× the write cost per call of an ordinary table, whose rows
-- are appended in order and whose key is a small index (SQLite's own advice: WITHOUT ROWID suits
-- small rows). Same columns, same primary key, same indexes; the rows are copied as they are.
CREATE TABLE idempotency_records_rowid (
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
);
INSERT INTO idempotency_records_rowid
  SELECT key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, status, headers, body, updated_at, expires_at
    FROM idempotency_records;
DROP TABLE idempotency_records;
ALTER TABLE idempotency_records_rowid RENAME TO idempotency_records;
CREATE INDEX idempotency_expiry ON idempotency_records (expires_at);
CREATE INDEX idempotency_audit ON idempotency_records (audit_id);
