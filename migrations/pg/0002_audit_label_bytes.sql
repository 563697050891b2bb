-- Label filters compare in code point order (src/domain/label-filter.ts): `agent_run_label COLLATE "C"`
-- whatever the database's collation (en_US.UTF-8 and most others sort "a-b" after "a."). The index
-- must be on that expression for the planner to use it, so it replaces the one on the bare column.
DROP INDEX audit_label;
CREATE INDEX audit_label ON audit_log (agent_run_label COLLATE "C", id);
