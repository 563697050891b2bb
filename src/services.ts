import type { Config } from "./config.ts";
import { AdminSessions } from "./domain/admin-sessions.ts";
import { AuditService } from "./domain/audit.ts";
import { BudgetService } from "./domain/budgets.ts";
import type { EventReader } from "./domain/events.ts";
import { loadMasterKey, requireSharedMasterKey, SecretBox } from "./domain/crypto.ts";
import { KeyService } from "./domain/keys.ts";
import type { SpendLedger } from "./ledger/types.ts";
import { RunsView } from "./domain/runs.ts";
import { AuditRetention } from "./domain/retention.ts";
import { VendorSecretStore } from "./domain/secrets.ts";
import { TokenStore } from "./domain/tokens.ts";
import { WebhookService } from "./domain/webhooks.ts";
import { createLogger, type Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { Forwarder } from "./proxy/forward.ts";
import { loadPricing } from "./vendors/pricing.ts";
import { closeBackend, openBackend, type Backend } from "./store/backend.ts";
import { openStores } from "./store/index.ts";

/** Largest proxied request body, per vendor (SPEC §3): bounded before it is buffered. Also Bun's maxRequestBodySize (main.ts), so /admin bodies are bounded before parsing. */
export const MAX_PROXY_BODY_BYTES = 1024 * 1024;

export interface Services {
  config: Config;
  /** The SQLite file or the PostgreSQL database (src/store/backend.ts); only the wiring below looks at it. */
  backend: Backend;
  tokens: TokenStore;
  secrets: VendorSecretStore;
  keys: KeyService;
  /** The Runs view of the admin pages: keys grouped by run label. */
  runs: RunsView;
  ledger: SpendLedger;
  audit: AuditService;
  metrics: Metrics;
  logger: Logger;
  events: EventReader;
  budgets: BudgetService;
  webhooks: WebhookService;
  forwarder: Forwarder;
  adminSessions: AdminSessions;
  retention: AuditRetention;
  /** Set once SIGTERM/SIGINT began a graceful shutdown: /healthz answers 503 so load balancers stop sending. */
  lifecycle: { draining: boolean };
  startedAt: number;
  /** Answers when the backend can be reached (/healthz); throws otherwise. */
  ping(): Promise<void>;
  /** Stops background work and closes the backend (after the server stopped). */
  close(): Promise<void>;
}

/**
 * Opens the data dir (migrating it) and wires the domain services; no HTTP here. Throws
 * MasterKeyMismatch when the master key cannot decrypt the stored secrets. Background work
 * (audit retention) is started by whoever serves: `retention.start()`.
 */
export async function createServices(config: Config, fetchImpl?: typeof fetch, logger: Logger = createLogger(config.log), clock: () => number = Date.now): Promise<Services> {
  requireSharedMasterKey(config);
  const backend = await openBackend(config);
  const box = new SecretBox(loadMasterKey(config.dataDir, config.masterKey));
  const stores = openStores(backend, { logger, box });
  // Budgets, cap alerts and the webhook outbox (SPEC §7): the webhook store is an event sink, so a
  // delivery is queued in the same transaction as the change or alert it reports.
  const webhooks = new WebhookService(stores.webhooks, box, logger);
  const secrets = new VendorSecretStore(stores.vendorSecrets, box);
  try {
    // Before anything runs: a wrong master key stops start-up here, not at the first call.
    await secrets.verifyMasterKey();
    await secrets.adoptEnvironment(config.vendorSecretsFromEnv);
  } catch (e) {
    await closeBackend(backend);
    throw e;
  }
  webhooks.start();
  const ledger = stores.ledger;
  // Stored answers for replays live 24 h (or the dedupe window); pruning is cheap and indexed.
  const prune = () => Promise.resolve(ledger.pruneRepeats(Date.now())).catch((e) => logger.error(`pruning stored answers failed: ${(e as Error).message}`));
  void prune();
  const pruneTimer = setInterval(prune, 10 * 60_000);
  pruneTimer.unref();
  const metrics = new Metrics();
  const forwarder = new Forwarder({
    ledger,
    secrets,
    pricing: loadPricing(config.pricingFile),
    metrics,
    logger,
    baseUrls: config.baseUrls,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    maxBodyBytes: MAX_PROXY_BODY_BYTES,
    fetch: fetchImpl,
  });
  const tokens = new TokenStore(stores.tokens, config.adminToken, config.maxKeyTtlMs);
  const retention = new AuditRetention(stores.audit, config.auditRetentionMs, clock, (m) => logger.error(m));
  return {
    config,
    backend,
    tokens,
    secrets,
    keys: new KeyService(stores.keys, config.maxKeyTtlMs),
    runs: new RunsView(stores.runs),
    ledger,
    audit: new AuditService(stores.audit),
    metrics,
    logger,
    events: stores.events,
    budgets: new BudgetService(stores.budgets),
    webhooks,
    forwarder,
    adminSessions: new AdminSessions(stores.sessions, tokens),
    retention,
    lifecycle: { draining: false },
    startedAt: Date.now(),
    ping: () => stores.ping(),
    async close() {
      clearInterval(pruneTimer);
      webhooks.stop();
      await retention.stop();
      await closeBackend(backend);
    },
  };
}
