/**
 * Stores of one backend as a process or replica sees them, for store tests that record events:
 * `record` writes an event in a transaction of its own, the way a store does (synchronous on
 * SQLite, `orm.transaction` on PostgreSQL), and rolls it back when asked. `openShared` opens two
 * such replicas, each with its own connection, over one fresh data dir or database.
 */
import { rmSync } from "node:fs";
import { SecretBox } from "../src/domain/crypto.ts";
import type { NewEvent, StoredEvent } from "../src/domain/events.ts";
import { createLogger } from "../src/log.ts";
import { closeBackend, openBackend, type Backend } from "../src/store/backend.ts";
import type { Stores } from "../src/store/index.ts";
import { pgStores } from "../src/store/pg/index.ts";
import { sqliteStores } from "../src/store/sqlite/index.ts";
import type { BackendKind } from "./backends.ts";
import { tempDir } from "./helpers.ts";
import { freshDatabase } from "./pg.ts";

export const box = new SecretBox("test master key");
export const logger = createLogger("silent");

export interface Replica {
  backend: Backend;
  stores: Stores;
  /** Records an event in a transaction of its own; `fail` makes the change fail after it, rolling both back. */
  record(e: NewEvent, opts?: { fail?: boolean; now?: number }): Promise<StoredEvent>;
  /** Subscribes a writer that runs inside every recorded event's transaction. */
  addSink(sink: (e: StoredEvent) => void): void;
}

export function replica(backend: Backend): Replica {
  const failed = () => {
    throw new Error("the change failed");
  };
  if (backend.kind === "sqlite") {
    const stores = sqliteStores(backend, { logger, box });
    return {
      backend,
      stores,
      async record(e, opts = {}) {
        return backend.db.sqlite.transaction(() => {
          const stored = stores.eventLog.record(e, opts.now);
          return opts.fail ? failed() : stored;
        })();
      },
      addSink: (sink) => stores.eventLog.addSink(sink),
    };
  }
  const stores = pgStores(backend, { logger, box });
  return {
    backend,
    stores,
    record: (e, opts = {}) =>
      backend.orm.transaction(async (tx) => {
        const stored = await stores.eventLog.record(tx, e, opts.now);
        return opts.fail ? failed() : stored;
      }),
    addSink: (sink) => stores.eventLog.addSink(async (_, e) => sink(e)),
  };
}

export async function openShared(kind: BackendKind, name: string) {
  const dataDir = tempDir(`keybrake-${name}-`);
  const databaseUrl = kind === "postgres" ? await freshDatabase(name) : undefined;
  const a = replica(await openBackend({ dataDir, databaseUrl }));
  const b = replica(await openBackend({ dataDir, databaseUrl }));
  return {
    a,
    b,
    async close() {
      await closeBackend(a.backend);
      await closeBackend(b.backend);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
