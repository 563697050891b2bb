-- Audit retention (KEYBRAKE_AUDIT_RETENTION) deletes the stored answers that point at the audit rows
-- it prunes, batch by batch; without this index each batch would scan every idempotency record
-- while holding the write lock. Cost on the proxy path: one more index entry per stored answer.
CREATE INDEX idempotency_audit ON idempotency_records (audit_id);
