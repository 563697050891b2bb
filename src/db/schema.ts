import { index, integer, primaryKey, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

/** drizzle's view of migrations/*.sql — the SQL files are the source of truth. */

export const managementTokens = sqliteTable("management_tokens", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  tokenHash: text("token_hash").notNull().unique(),
  createdAt: integer("created_at").notNull(),
  revokedAt: integer("revoked_at"),
  role: text("role", { enum: ["admin", "issuer", "viewer"] }).notNull().default("admin"),
  policy: text("policy", { mode: "json" }).$type<Record<string, unknown>>(),
});

export const vendorSecrets = sqliteTable(
  "vendor_secrets",
  {
    vendor: text("vendor").notNull(),
    field: text("field").notNull(),
    ciphertext: text("ciphertext").notNull(),
    last4: text("last4").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.vendor, t.field] })],
);

export const vaultKeys = sqliteTable(
  "vault_keys",
  {
    id: text("id").primaryKey(),
    keyHash: text("key_hash").notNull().unique(),
    keyHint: text("key_hint").notNull(),
    vendor: text("vendor", { enum: ["stripe", "twilio", "resend"] }).notNull(),
    dailyCapMicros: integer("daily_cap_micros").notNull(),
    totalCapMicros: integer("total_cap_micros"),
    allowedEndpoints: text("allowed_endpoints", { mode: "json" }).$type<string[]>().notNull(),
    agentRunLabel: text("agent_run_label").notNull(),
    metadata: text("metadata", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    dedupeWindowMs: integer("dedupe_window_ms"),
    requireIdempotencyKey: integer("require_idempotency_key", { mode: "boolean" }).notNull(),
    allowUnpriced: integer("allow_unpriced", { mode: "boolean" }).notNull(),
    expiresAt: integer("expires_at").notNull(),
    createdAt: integer("created_at").notNull(),
    revokedAt: integer("revoked_at"),
    spentTotalMicros: integer("spent_total_micros").notNull().default(0),
    reservedTotalMicros: integer("reserved_total_micros").notNull().default(0),
    stripeAccounts: text("stripe_accounts", { mode: "json" }).$type<string[]>(),
    issuedByTokenId: text("issued_by_token_id"),
  },
  (t) => [index("vault_keys_label").on(t.agentRunLabel, t.id)],
);

export const keySpendDays = sqliteTable(
  "key_spend_days",
  {
    keyId: text("key_id").notNull(),
    day: text("day").notNull(),
    spentMicros: integer("spent_micros").notNull().default(0),
    reservedMicros: integer("reserved_micros").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.keyId, t.day] })],
);

export const auditLog = sqliteTable("audit_log", {
  id: integer("id").primaryKey(),
  ts: integer("ts").notNull(),
  keyId: text("key_id"),
  agentRunLabel: text("agent_run_label"),
  vendor: text("vendor").notNull(),
  method: text("method").notNull(),
  path: text("path").notNull(),
  outcome: text("outcome").notNull(),
  errorCode: text("error_code"),
  vendorStatus: integer("vendor_status"),
  estimatedMicros: integer("estimated_micros").notNull(),
  settledMicros: integer("settled_micros"),
  ledgerState: text("ledger_state").notNull(),
  spendDay: text("spend_day"),
  vendorRequestId: text("vendor_request_id"),
  vendorObjectId: text("vendor_object_id"),
  idempotencyKey: text("idempotency_key"),
  latencyMs: real("latency_ms"),
  replayOf: integer("replay_of"),
});

export const pricedObjects = sqliteTable(
  "priced_objects",
  {
    keyId: text("key_id").notNull(),
    objectId: text("object_id").notNull(),
    kind: text("kind").notNull(),
    amount: integer("amount").notNull(),
    currency: text("currency").notNull(),
    countedMicros: integer("counted_micros").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.keyId, t.objectId] })],
);

export const adminSessions = sqliteTable("admin_sessions", {
  idHash: text("id_hash").primaryKey(),
  csrfToken: text("csrf_token").notNull(),
  createdAt: integer("created_at").notNull(),
  expiresAt: integer("expires_at").notNull(),
  endedAt: integer("ended_at"),
  tokenId: text("token_id"),
});

/** Instance-wide values (migrations/0006): the master key check. */
export const settings = sqliteTable("settings", {
  name: text("name").primaryKey(),
  value: text("value").notNull(),
});

export type VaultKeyRow = typeof vaultKeys.$inferSelect;
export type AuditRow = typeof auditLog.$inferSelect;

/** Pooled daily caps over label prefixes (migrations/0008). */
export const budgets = sqliteTable("budgets", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  labelPrefix: text("label_prefix").notNull(),
  vendor: text("vendor", { enum: ["stripe", "twilio", "resend"] }),
  dailyCapMicros: integer("daily_cap_micros").notNull(),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
  deletedAt: integer("deleted_at"),
});

export const budgetSpendDays = sqliteTable(
  "budget_spend_days",
  {
    budgetId: text("budget_id").notNull(),
    day: text("day").notNull(),
    spentMicros: integer("spent_micros").notNull().default(0),
    reservedMicros: integer("reserved_micros").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.budgetId, t.day] })],
);

export const webhooks = sqliteTable("webhooks", {
  id: text("id").primaryKey(),
  url: text("url").notNull(),
  events: text("events", { mode: "json" }).$type<string[]>().notNull(),
  thresholds: text("thresholds", { mode: "json" }).$type<number[]>().notNull(),
  format: text("format", { enum: ["json", "slack"] }).notNull(),
  secretSealed: text("secret_sealed").notNull(),
  secretHint: text("secret_hint").notNull(),
  createdAt: integer("created_at").notNull(),
  deletedAt: integer("deleted_at"),
});

export const webhookDeliveries = sqliteTable("webhook_deliveries", {
  id: text("id").primaryKey(),
  webhookId: text("webhook_id").notNull(),
  eventId: text("event_id").notNull(),
  eventType: text("event_type").notNull(),
  body: text("body").notNull(),
  state: text("state", { enum: ["pending", "delivered", "failed"] }).notNull(),
  attempts: integer("attempts").notNull(),
  nextAttemptAt: integer("next_attempt_at").notNull(),
  createdAt: integer("created_at").notNull(),
  deliveredAt: integer("delivered_at"),
});

export const webhookAttempts = sqliteTable(
  "webhook_attempts",
  {
    deliveryId: text("delivery_id").notNull(),
    attempt: integer("attempt").notNull(),
    ts: integer("ts").notNull(),
    status: integer("status"),
    error: text("error"),
    durationMs: integer("duration_ms").notNull(),
  },
  (t) => [primaryKey({ columns: [t.deliveryId, t.attempt] })],
);

export type BudgetRow = typeof budgets.$inferSelect;
export type WebhookRow = typeof webhooks.$inferSelect;
export type WebhookDeliveryRow = typeof webhookDeliveries.$inferSelect;
export type WebhookAttemptRow = typeof webhookAttempts.$inferSelect;
