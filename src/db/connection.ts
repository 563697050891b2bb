import { Database } from "bun:sqlite";
import { drizzle, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startCheckpointer } from "./checkpointer.ts";
import { MIGRATIONS } from "./migrations.ts";
import * as schema from "./schema.ts";

export type Orm = BunSQLiteDatabase<typeof schema>;
export interface Db {
  sqlite: Database;
  orm: Orm;
}

/**
 * Opens keybrake.db in the data dir. WAL so readers never block the writer;
 * synchronous=NORMAL set explicitly because Bun leaves it at FULL, which costs
 * an fsync per commit (~0.5 ms here) and adds no safety in WAL mode against a
 * process crash — the ledger switches to FULL for the one commit whose loss in a
 * power cut would matter, a reservation about to be forwarded (domain/ledger.ts);
 * busy_timeout so a second process waits for the write lock instead of failing.
 */
export function openDatabase(dataDir: string): Db {
  let sqlite: Database;
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    sqlite = new Database(join(dataDir, "keybrake.db"), { create: true, strict: true });
    sqlite.exec("PRAGMA journal_mode = WAL");
  } catch (e) {
    // A read-only or missing mount shows up here: say which setting points at it.
    throw new Error(`KEYBRAKE_DATA_DIR (${dataDir}): cannot open ${join(dataDir, "keybrake.db")} for writing: ${(e as Error).message}`);
  }
  sqlite.exec("PRAGMA synchronous = NORMAL");
  sqlite.exec("PRAGMA busy_timeout = 10000");
  sqlite.exec("PRAGMA foreign_keys = ON");
  migrate(sqlite);
  // Checkpoints run on a worker thread, not inside a commit on the event loop (src/db/checkpointer.ts).
  const checkpointer = startCheckpointer(sqlite, join(dataDir, "keybrake.db"));
  const close = sqlite.close.bind(sqlite);
  sqlite.close = (throwOnError?: boolean) => {
    checkpointer.stop();
    close(throwOnError);
  };
  return { sqlite, orm: drizzle(sqlite, { schema }) };
}

/** Applies each embedded migration once, in order, each in its own transaction. */
export function migrate(sqlite: Database): string[] {
  sqlite.exec("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)");
  const applied: string[] = [];
  for (const m of MIGRATIONS) {
    // IMMEDIATE: two processes starting together must not both apply a migration.
    sqlite
      .transaction(() => {
        const done = sqlite.query("SELECT 1 FROM _migrations WHERE name = ?").get(m.name);
        if (done) return;
        sqlite.exec(m.sql);
        sqlite.query("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)").run(m.name, Date.now());
        applied.push(m.name);
      })
      .immediate();
  }
  return applied;
}
