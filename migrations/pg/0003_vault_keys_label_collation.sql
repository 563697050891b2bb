-- Run labels on vault keys compare as bytes (code points), as on SQLite's BINARY collation,
-- whatever the database's default collation is (0002 did the same for the audit log): a label
-- prefix filter is the range [prefix, next(prefix)) (src/domain/label-filter.ts), which holds
-- exactly the labels starting with the prefix only in byte order, and the lists ordered or grouped
-- by label agree with SQLite's. The label index is rebuilt under the new collation, so those
-- ranges stay index scans.
ALTER TABLE vault_keys ALTER COLUMN agent_run_label TYPE TEXT COLLATE "C";
