import type { PgBackend } from "../backend.ts";
import type { StoreDeps, Stores } from "../index.ts";
import { PgEventLog } from "./events.ts";
import { PgKeyStore } from "./keys.ts";
import { PgRunStore } from "./runs.ts";
import { PgSessionStore } from "./sessions.ts";

/** The stores of a PostgreSQL database shared by replicas. Writes that record an event do it with `eventLog.record(tx, …)`, inside their own transaction. */
export function pgStores(b: PgBackend, deps: StoreDeps): Stores & { eventLog: PgEventLog } {
  const eventLog = new PgEventLog(b.orm, deps.logger);
  return {
    eventLog,
    events: eventLog,
    sessions: new PgSessionStore(b.orm),
    keys: new PgKeyStore(b.orm, eventLog),
    runs: new PgRunStore(b.orm),
    async ping() {
      await b.sql`SELECT 1`;
    },
  };
}
