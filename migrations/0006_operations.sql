-- Audit retention (KEYBRAKE_AUDIT_RETENTION) deletes the stored answers that point at the audit rows
-- it prunes, batch by batch; without this index each batch would scan every idempotency record
-- while holding the write lock. Cost on the proxy path: one more index entry per stored answer.
CREATE INDEX idempotency_audit ON idempotency_records (audit_id);

-- One value sealed under the master key when a data dir first meets it: a later start with another
-- key is refused even when no vendor secret is stored yet (two processes, two keys, one data dir).
CREATE TABLE settings (
  name   TEXT PRIMARY KEY,   -- master_key_check
  value  TEXT NOT NULL
);
