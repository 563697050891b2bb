import type { SessionStore } from "../domain/admin-sessions.ts";
import type { AuditStore } from "../domain/audit.ts";
import type { SecretBox } from "../domain/crypto.ts";
import type { EventReader } from "../domain/events.ts";
import type { VendorSecretStorage } from "../domain/secrets.ts";
import type { TokenStorage } from "../domain/tokens.ts";
import type { KeyStore } from "../domain/keys.ts";
import type { RunStore } from "../domain/runs.ts";
import type { BudgetStore } from "../domain/budgets.ts";
import type { WebhookStore } from "../domain/webhooks.ts";
import type { SpendLedger } from "../ledger/types.ts";
import type { Logger } from "../log.ts";
import type { Backend } from "./backend.ts";
import { pgStores } from "./pg/index.ts";
import { sqliteStores } from "./sqlite/index.ts";

/**
 * Every store of one backend (src/store/backend.ts says how the two differ). Domain services
 * are built from these in src/services.ts and never see which backend runs.
 */
export interface Stores {
  audit: AuditStore;
  events: EventReader;
  sessions: SessionStore;
  tokens: TokenStorage;
  vendorSecrets: VendorSecretStorage;
  keys: KeyStore;
  runs: RunStore;
  budgets: BudgetStore;
  webhooks: WebhookStore;
  /** The spend ledger: the proxy's hot path (SQLite: src/domain/ledger.ts, PostgreSQL: src/ledger/pg.ts). */
  ledger: SpendLedger;
  /** Resolves when the database answers (/healthz); throws when it cannot be reached. */
  ping(): Promise<void>;
}

export interface StoreDeps {
  logger: Logger;
  box: SecretBox;
}

export function openStores(backend: Backend, deps: StoreDeps): Stores {
  return backend.kind === "sqlite" ? sqliteStores(backend, deps) : pgStores(backend, deps);
}
