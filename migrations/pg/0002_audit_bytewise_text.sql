-- The audit log's label and key id compare in code point order, as on SQLite (BINARY): label prefix
-- filters are ranges [prefix, next(prefix)) (src/domain/label-filter.ts) and ties in the spend totals
-- are ordered by them. Most databases' default collation (en_US.UTF-8, ICU …) is linguistic — it
-- folds case and skips punctuation — so these columns say "C" themselves; their indexes and
-- statistics follow (audit_label, audit_key are rebuilt). No table rewrite: the type stays TEXT.
ALTER TABLE audit_log ALTER COLUMN agent_run_label TYPE TEXT COLLATE "C";
ALTER TABLE audit_log ALTER COLUMN key_id TYPE TEXT COLLATE "C";
