import { SQL } from "bun";
import { PG_MIGRATIONS } from "./migrations.ts";

/**
 * PostgreSQL connection (KEYBRAKE_DATABASE_URL, SPEC §8).
 *
 * Driver: Bun's built-in `Bun.SQL`, no new dependency. Bun.SQL before the fix of oven-sh/bun#33627
 * (merged 2026-07-10) could hand one prepared statement's rows to another query on the same
 * connection under concurrency (oven-sh/bun#33665, and the simple-protocol variant fixed by
 * #32772). We ship Bun 1.4.5, which contains both fixes; test/pg-driver.test.ts drives that exact
 * interleaving (simple and parameterised queries and transactions pipelined on one connection,
 * prepared and not) and fails if a result ever lands on the wrong query, so a Bun upgrade that
 * regresses is caught in CI rather than in the ledger.
 */
export type Pg = SQL;

/**
 * The transaction-level advisory locks Keybrake takes, one place so no two collide: each makes
 * replicas take turns where the rows a decision depends on may not exist yet (so FOR UPDATE could
 * lock nothing). The audit log's ordering keys live far above these (src/store/pg/audit.ts).
 */
export const ADVISORY_LOCK = {
  migrations: 7263541,
  firstToken: 7263542,
  secretWrites: 7263543,
} as const;

export function openPostgres(url: string, opts: { max?: number } = {}): Pg {
  return new SQL({
    url,
    max: opts.max ?? 10,
    // A dead database must fail a call quickly (503), not hang it: connect within 5 s.
    connectionTimeout: 5,
    idleTimeout: 60,
  });
}

/**
 * Applies each embedded PostgreSQL migration once, in order. An advisory lock makes replicas
 * that start together apply them one at a time; each migration commits with its bookkeeping row.
 */
export async function migratePostgres(sql: Pg): Promise<string[]> {
  const applied: string[] = [];
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${ADVISORY_LOCK.migrations})`;
    await tx`CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)`;
    for (const m of PG_MIGRATIONS) {
      const done = await tx`SELECT 1 FROM _migrations WHERE name = ${m.name}`;
      if (done.length) continue;
      await tx.unsafe(m.sql);
      await tx`INSERT INTO _migrations (name, applied_at) VALUES (${m.name}, ${Date.now()})`;
      applied.push(m.name);
    }
  });
  return applied;
}

/**
 * Connection-level failures: the database is unreachable (refused, reset, timed out, closed by
 * Bun's client — codes ERR_POSTGRES_CONNECTION_*, …), shutting down or restarting (SQLSTATE
 * 57P01–57P03, as `errno`), a connection exception (class 08), or out of connection slots (53300).
 * Anything else is a real error of the query and stays one.
 */
export function isUnreachable(e: unknown): boolean {
  // drizzle wraps the driver's error (DrizzleQueryError): judge what the driver said.
  const cause = (e as { cause?: unknown })?.cause;
  if (cause && cause !== e && isUnreachable(cause)) return true;
  const code = String((e as { code?: unknown })?.code ?? "");
  const state = String((e as { errno?: unknown })?.errno ?? "");
  if (/^(57P0[123]|08...|53300)$/.test(state)) return true;
  if (/CONNECTION|CONNECT|CLOSED|TIMEOUT|ECONN|SOCKET/i.test(code) && code !== "ERR_POSTGRES_SERVER_ERROR") return true;
  return code === "" && /connection (closed|refused|reset)|failed to connect|socket/i.test((e as Error)?.message ?? "");
}
