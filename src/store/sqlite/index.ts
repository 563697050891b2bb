import { EventLog } from "../../domain/events.ts";
import type { SqliteBackend } from "../backend.ts";
import type { StoreDeps, Stores } from "../index.ts";
import { SqliteBudgetStore } from "./budgets.ts";
import { SqliteSessionStore } from "./sessions.ts";
import { SqliteWebhookStore } from "./webhooks.ts";

/** The stores of the embedded SQLite file. Writes that record an event do it with `events`, inside their own transaction. */
export function sqliteStores(b: SqliteBackend, deps: StoreDeps): Stores & { eventLog: EventLog } {
  const eventLog = new EventLog(b.db.sqlite, deps.logger);
  const ping = b.db.sqlite.prepare("SELECT 1");
  return {
    eventLog,
    events: eventLog,
    sessions: new SqliteSessionStore(b.db),
    budgets: new SqliteBudgetStore(b.db, eventLog),
    webhooks: new SqliteWebhookStore(b.db, eventLog),
    async ping() {
      ping.get();
    },
  };
}
