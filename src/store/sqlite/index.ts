import { CapAlerts } from "../../domain/alerts.ts";
import { EventLog } from "../../domain/events.ts";
import { Ledger } from "../../domain/ledger.ts";
import type { SqliteBackend } from "../backend.ts";
import type { StoreDeps, Stores } from "../index.ts";
import { SqliteAuditStore } from "./audit.ts";
import { SqliteVendorSecretStore } from "./secrets.ts";
import { SqliteKeyStore } from "./keys.ts";
import { SqliteRunStore } from "./runs.ts";
import { SqliteSessionStore } from "./sessions.ts";
import { SqliteTokenStore } from "./tokens.ts";
import { SqliteBudgetStore } from "./budgets.ts";
import { SqliteWebhookStore } from "./webhooks.ts";

/** The stores of the embedded SQLite file. Writes that record an event do it with `events`, inside their own transaction. */
export function sqliteStores(b: SqliteBackend, deps: StoreDeps): Stores & { eventLog: EventLog } {
  const eventLog = new EventLog(b.db.sqlite, deps.logger);
  const ping = b.db.sqlite.prepare("SELECT 1");
  return {
    eventLog,
    audit: new SqliteAuditStore(b.db),
    events: eventLog,
    sessions: new SqliteSessionStore(b.db),
    tokens: new SqliteTokenStore(b.db, eventLog),
    vendorSecrets: new SqliteVendorSecretStore(b.db, eventLog),
    keys: new SqliteKeyStore(b.db, eventLog),
    runs: new SqliteRunStore(b.db),
    budgets: new SqliteBudgetStore(b.db, eventLog),
    webhooks: new SqliteWebhookStore(b.db, eventLog),
    ledger: new Ledger(b.db.sqlite, new CapAlerts(b.db.sqlite, eventLog)),
    async ping() {
      ping.get();
    },
  };
}
