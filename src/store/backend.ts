import { drizzle, type BunSQLDatabase } from "drizzle-orm/bun-sql";
import type { Config } from "../config.ts";
import { openDatabase, type Db } from "../db/connection.ts";
import { migratePostgres, openPostgres, type Pg } from "../db/pg.ts";
import * as pgSchema from "../db/pg-schema.ts";

/**
 * Where Keybrake keeps its state (SPEC §1, §8): the embedded SQLite file in KEYBRAKE_DATA_DIR (the
 * default), or the PostgreSQL database of KEYBRAKE_DATABASE_URL shared by any number of replicas.
 *
 * Every store has one interface in src/domain and one implementation per backend, in
 * src/store/sqlite and src/store/pg. Domain services (validation, policy, events, presentation)
 * are written once against the interfaces and never look at `kind`; only the factories in
 * src/store/index.ts do.
 *
 * Transactions differ by nature and stay inside the store: on SQLite a transaction is synchronous
 * (one connection, BEGIN IMMEDIATE, never an `await` inside — another request's statements would
 * land in it); on PostgreSQL it is `orm.transaction(async tx => …)` under READ COMMITTED, with the
 * rows a decision depends on locked (`SELECT … FOR UPDATE`) or changed by a conditional UPDATE.
 * Both expose the same async methods.
 */
export type PgOrm = BunSQLDatabase<typeof pgSchema>;
/** A drizzle transaction on PostgreSQL. */
export type PgTx = Parameters<Parameters<PgOrm["transaction"]>[0]>[0];
/** Either the whole database or a transaction: what a PostgreSQL store method writes with. */
export type PgExec = PgOrm | PgTx;

export interface SqliteBackend {
  kind: "sqlite";
  db: Db;
}

export interface PgBackend {
  kind: "postgres";
  /** Bun.SQL pool: the ledger's hot path speaks SQL to it directly (src/ledger/pg.ts). */
  sql: Pg;
  /** drizzle over the same pool, for every other store. */
  orm: PgOrm;
}

export type Backend = SqliteBackend | PgBackend;

export { pgSchema };

/** Opens (and migrates) the backend the configuration names. */
export async function openBackend(config: Pick<Config, "dataDir" | "databaseUrl">): Promise<Backend> {
  if (!config.databaseUrl) return { kind: "sqlite", db: openDatabase(config.dataDir) };
  const sql = openPostgres(config.databaseUrl, { max: 10 });
  try {
    await migratePostgres(sql);
  } catch (e) {
    await sql.close().catch(() => {});
    // Never echo the URL: it usually carries the database password.
    throw new Error(`KEYBRAKE_DATABASE_URL: cannot connect to or migrate the PostgreSQL database: ${(e as Error).message}`);
  }
  return { kind: "postgres", sql, orm: pgOrm(sql) };
}

export function pgOrm(sql: Pg): PgOrm {
  return drizzle({ client: sql, schema: pgSchema });
}

export async function closeBackend(b: Backend): Promise<void> {
  if (b.kind === "sqlite") b.db.sqlite.close();
  else await b.sql.close();
}
