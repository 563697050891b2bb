import { bigint, customType, doublePrecision, index, integer, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * drizzle's view of migrations/pg/*.sql — the SQL files are the source of truth, as src/db/schema.ts
 * is for SQLite. Drizzle has no dialect-neutral schema, so this file mirrors schema.ts table for
 * table with the same property names and row types: a store written for one reads like the other.
 * test/pg-schema.test.ts checks both against the migrated databases.
 */

/** JSON kept in a TEXT column, as on SQLite (`text(…, { mode: "json" })`). */
const jsonText = <T>(name: string) =>
  customType<{ data: T; driverData: string }>({
    dataType: () => "text",
    toDriver: (v) => JSON.stringify(v),
    fromDriver: (v) => JSON.parse(v) as T,
  })(name);

/** A boolean kept as INTEGER 0/1, as on SQLite (`integer(…, { mode: "boolean" })`). */
const intBool = customType<{ data: boolean; driverData: number }>({
  dataType: () => "integer",
  toDriver: (v) => (v ? 1 : 0),
  fromDriver: (v) => Number(v) === 1,
});

/** Micro-dollars and epoch milliseconds: BIGINT, read as JS numbers (all stay below 2^53). */
const int8 = (name: string) => bigint(name, { mode: "number" });

type Vendor = "stripe" | "twilio" | "resend";

export const managementTokens = pgTable("management_tokens", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  tokenHash: text("token_hash").notNull().unique(),
  createdAt: int8("created_at").notNull(),
  revokedAt: int8("revoked_at"),
  role: text("role", { enum: ["admin", "issuer", "viewer"] }).notNull().default("admin"),
  policy: jsonText<Record<string, unknown>>("policy"),
});

export const vendorSecrets = pgTable(
  "vendor_secrets",
  {
    vendor: text("vendor").notNull(),
    field: text("field").notNull(),
    ciphertext: text("ciphertext").notNull(),
    last4: text("last4").notNull(),
    updatedAt: int8("updated_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.vendor, t.field] })],
);

export const vaultKeys = pgTable(
  "vault_keys",
  {
    id: text("id").primaryKey(),
    keyHash: text("key_hash").notNull().unique(),
    keyHint: text("key_hint").notNull(),
    vendor: text("vendor").$type<Vendor>().notNull(),
    dailyCapMicros: int8("daily_cap_micros").notNull(),
    totalCapMicros: int8("total_cap_micros"),
    allowedEndpoints: jsonText<string[]>("allowed_endpoints").notNull(),
    agentRunLabel: text("agent_run_label").notNull(),
    metadata: jsonText<Record<string, unknown>>("metadata").notNull(),
    dedupeWindowMs: int8("dedupe_window_ms"),
    requireIdempotencyKey: intBool("require_idempotency_key").notNull(),
    allowUnpriced: intBool("allow_unpriced").notNull(),
    expiresAt: int8("expires_at").notNull(),
    createdAt: int8("created_at").notNull(),
    revokedAt: int8("revoked_at"),
    spentTotalMicros: int8("spent_total_micros").notNull().default(0),
    reservedTotalMicros: int8("reserved_total_micros").notNull().default(0),
    stripeAccounts: jsonText<string[]>("stripe_accounts"),
    issuedByTokenId: text("issued_by_token_id"),
  },
  (t) => [index("vault_keys_label").on(t.agentRunLabel, t.id)],
);

export const keySpendDays = pgTable(
  "key_spend_days",
  {
    keyId: text("key_id").notNull(),
    day: text("day").notNull(),
    spentMicros: int8("spent_micros").notNull().default(0),
    reservedMicros: int8("reserved_micros").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.keyId, t.day] })],
);

export const auditLog = pgTable("audit_log", {
  id: int8("id").primaryKey(),
  ts: int8("ts").notNull(),
  keyId: text("key_id"),
  agentRunLabel: text("agent_run_label"),
  vendor: text("vendor").notNull(),
  method: text("method").notNull(),
  path: text("path").notNull(),
  outcome: text("outcome").notNull(),
  errorCode: text("error_code"),
  vendorStatus: integer("vendor_status"),
  estimatedMicros: int8("estimated_micros").notNull(),
  settledMicros: int8("settled_micros"),
  ledgerState: text("ledger_state").notNull(),
  spendDay: text("spend_day"),
  vendorRequestId: text("vendor_request_id"),
  vendorObjectId: text("vendor_object_id"),
  idempotencyKey: text("idempotency_key"),
  latencyMs: doublePrecision("latency_ms"),
  replayOf: int8("replay_of"),
});

export const pricedObjects = pgTable(
  "priced_objects",
  {
    keyId: text("key_id").notNull(),
    objectId: text("object_id").notNull(),
    kind: text("kind").notNull(),
    amount: int8("amount").notNull(),
    currency: text("currency").notNull(),
    countedMicros: int8("counted_micros").notNull(),
    updatedAt: int8("updated_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.keyId, t.objectId] })],
);

export const adminSessions = pgTable("admin_sessions", {
  idHash: text("id_hash").primaryKey(),
  csrfToken: text("csrf_token").notNull(),
  createdAt: int8("created_at").notNull(),
  expiresAt: int8("expires_at").notNull(),
  endedAt: int8("ended_at"),
  tokenId: text("token_id"),
});

export const settings = pgTable("settings", {
  name: text("name").primaryKey(),
  value: text("value").notNull(),
});

export const events = pgTable("events", {
  id: text("id").primaryKey(),
  ts: int8("ts").notNull(),
  type: text("type").notNull(),
  actorTokenId: text("actor_token_id"),
  actorName: text("actor_name"),
  target: text("target"),
  data: text("data").notNull(),
});

export const budgets = pgTable("budgets", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  labelPrefix: text("label_prefix").notNull(),
  vendor: text("vendor").$type<Vendor>(),
  dailyCapMicros: int8("daily_cap_micros").notNull(),
  createdAt: int8("created_at").notNull(),
  updatedAt: int8("updated_at").notNull(),
  deletedAt: int8("deleted_at"),
});

export const budgetSpendDays = pgTable(
  "budget_spend_days",
  {
    budgetId: text("budget_id").notNull(),
    day: text("day").notNull(),
    spentMicros: int8("spent_micros").notNull().default(0),
    reservedMicros: int8("reserved_micros").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.budgetId, t.day] })],
);

export const webhooks = pgTable("webhooks", {
  id: text("id").primaryKey(),
  url: text("url").notNull(),
  events: jsonText<string[]>("events").notNull(),
  thresholds: jsonText<number[]>("thresholds").notNull(),
  format: text("format", { enum: ["json", "slack"] }).notNull(),
  secretSealed: text("secret_sealed").notNull(),
  secretHint: text("secret_hint").notNull(),
  createdAt: int8("created_at").notNull(),
  deletedAt: int8("deleted_at"),
});

export const webhookDeliveries = pgTable("webhook_deliveries", {
  id: text("id").primaryKey(),
  webhookId: text("webhook_id").notNull(),
  eventId: text("event_id").notNull(),
  eventType: text("event_type").notNull(),
  body: text("body").notNull(),
  state: text("state", { enum: ["pending", "delivered", "failed"] }).notNull(),
  attempts: integer("attempts").notNull(),
  nextAttemptAt: int8("next_attempt_at").notNull(),
  createdAt: int8("created_at").notNull(),
  deliveredAt: int8("delivered_at"),
});

export const webhookAttempts = pgTable(
  "webhook_attempts",
  {
    deliveryId: text("delivery_id").notNull(),
    attempt: integer("attempt").notNull(),
    ts: int8("ts").notNull(),
    status: integer("status"),
    error: text("error"),
    durationMs: int8("duration_ms").notNull(),
  },
  (t) => [primaryKey({ columns: [t.deliveryId, t.attempt] })],
);
