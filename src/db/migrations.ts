/**
 * Every SQL file in migrations/, embedded in the binary as text. The name is the
 * version; they run in this order. test/process.test.ts fails if a file in
 * migrations/ is missing here.
 */
import m0001 from "../../migrations/0001_init.sql" with { type: "text" };
import m0002 from "../../migrations/0002_admin_sessions.sql" with { type: "text" };
import m0003 from "../../migrations/0003_idempotency.sql" with { type: "text" };
import m0004 from "../../migrations/0004_events.sql" with { type: "text" };
import m0005 from "../../migrations/0005_priced_objects.sql" with { type: "text" };
import m0006 from "../../migrations/0006_operations.sql" with { type: "text" };
import m0007 from "../../migrations/0007_token_roles.sql" with { type: "text" };
import m0008 from "../../migrations/0008_budgets_webhooks.sql" with { type: "text" };
import m0009 from "../../migrations/0009_idempotency_rowid.sql" with { type: "text" };
import pg0001 from "../../migrations/pg/0001_init.sql" with { type: "text" };
import pg0002 from "../../migrations/pg/0002_audit_bytewise_text.sql" with { type: "text" };
import pg0003 from "../../migrations/pg/0003_vault_keys_label_collation.sql" with { type: "text" };

export const MIGRATIONS: readonly { name: string; sql: string }[] = [
  { name: "0001_init.sql", sql: m0001 },
  { name: "0002_admin_sessions.sql", sql: m0002 },
  { name: "0003_idempotency.sql", sql: m0003 },
  { name: "0004_events.sql", sql: m0004 },
  { name: "0005_priced_objects.sql", sql: m0005 },
  { name: "0006_operations.sql", sql: m0006 },
  { name: "0007_token_roles.sql", sql: m0007 },
  { name: "0008_budgets_webhooks.sql", sql: m0008 },
  { name: "0009_idempotency_rowid.sql", sql: m0009 },
];

/** PostgreSQL (SPEC §8): the same tables in migrations/pg/; test/pg-schema.test.ts keeps both in step. */
export const PG_MIGRATIONS: readonly { name: string; sql: string }[] = [
  { name: "0001_init.sql", sql: pg0001 },
  // 0002 and 0003: PostgreSQL only, SQLite's BINARY collation already compares labels as bytes.
  { name: "0002_audit_bytewise_text.sql", sql: pg0002 },
  { name: "0003_vault_keys_label_collation.sql", sql: pg0003 },
];
