-- Run labels compare as bytes (code points), as on SQLite's BINARY collation, whatever the
-- database's default collation is: a label prefix filter is the range [prefix, next(prefix))
-- (src/domain/label-filter.ts), which holds exactly the labels starting with the prefix only in
-- byte order, and the lists ordered or grouped by label agree with SQLite's. The label indexes
-- are rebuilt under the new collation, so those ranges stay index scans.
ALTER TABLE vault_keys ALTER COLUMN agent_run_label TYPE TEXT COLLATE "C";
ALTER TABLE audit_log ALTER COLUMN agent_run_label TYPE TEXT COLLATE "C";
