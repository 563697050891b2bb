import type { PgBackend } from "../backend.ts";
import type { StoreDeps, Stores } from "../index.ts";
import { PgCapAlerts } from "../../ledger/pg-alerts.ts";
import { PgLedger } from "../../ledger/pg.ts";
import { PgAuditStore } from "./audit.ts";
import { PgBudgetStore } from "./budgets.ts";
import { PgEventLog } from "./events.ts";
import { PgVendorSecretStore } from "./secrets.ts";
import { PgKeyStore } from "./keys.ts";
import { PgRunStore } from "./runs.ts";
import { PgSessionStore } from "./sessions.ts";
import { PgTokenStore } from "./tokens.ts";
import { PgWebhookStore } from "./webhooks.ts";

/** The stores of a PostgreSQL database shared by replicas. Writes that record an event do it with `eventLog.record(tx, …)`, inside their own transaction. */
export function pgStores(b: PgBackend, deps: StoreDeps): Stores & { eventLog: PgEventLog } {
  const eventLog = new PgEventLog(b.orm, deps.logger);
  const webhooks = new PgWebhookStore(b.orm, eventLog);
  return {
    eventLog,
    audit: new PgAuditStore(b.orm, b.sql),
    events: eventLog,
    sessions: new PgSessionStore(b.orm),
    tokens: new PgTokenStore(b.orm, eventLog),
    vendorSecrets: new PgVendorSecretStore(b.orm, eventLog),
    keys: new PgKeyStore(b.orm, eventLog),
    runs: new PgRunStore(b.orm),
    budgets: new PgBudgetStore(b.orm, eventLog),
    webhooks,
    ledger: new PgLedger(b.sql, new PgCapAlerts(() => webhooks.queued(), (e) => deps.logger.action({ type: e.type, actor: null, target: e.target, data: e.data }))),
    async ping() {
      await b.sql`SELECT 1`;
    },
  };
}
