import { and, desc, eq, inArray, isNull, lt, sql } from "drizzle-orm";
import type { WebhookAttemptRow, WebhookRow } from "../../db/schema.ts";
import type { StoredEvent } from "../../domain/events.ts";
import { afterAttempt, outboxRows, type AttemptOutcome, type ClaimedDelivery, type Subscriber, type WebhookStore } from "../../domain/webhooks.ts";
import { pgSchema, type PgExec, type PgOrm } from "../backend.ts";
import type { PgEventLog } from "./events.ts";

const { webhooks, webhookDeliveries, webhookAttempts } = pgSchema;

/** The live webhooks subscribed to an event type (`events` is a JSON list in a TEXT column). */
function subscribers(tx: PgExec, type: string): Promise<Subscriber[]> {
  return tx
    .select({ id: webhooks.id, thresholds: webhooks.thresholds, format: webhooks.format })
    .from(webhooks)
    .where(and(isNull(webhooks.deletedAt), sql`${webhooks.events}::jsonb ? ${type}`));
}

/** Webhooks and their outbox in PostgreSQL, drained by every replica. */
export class PgWebhookStore implements WebhookStore {
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly orm: PgOrm,
    events: PgEventLog,
  ) {
    events.addSink((tx, e) => this.queue(tx, e));
  }

  /** Runs inside the event's transaction; UNIQUE (webhook_id, event_id) keeps it to one delivery per webhook and event. */
  private async queue(tx: PgExec, e: StoredEvent): Promise<void> {
    const rows = outboxRows(e, await subscribers(tx, e.type));
    if (rows.length === 0) return;
    await tx.insert(webhookDeliveries).values(rows).onConflictDoNothing();
    this.queued();
  }

  /** Tells the sender a delivery was queued (the ledger's cap alerts call it after their commit). */
  queued(): void {
    for (const l of this.listeners) l();
  }

  onQueued(listener: () => void): void {
    this.listeners.push(listener);
  }

  async insert(row: WebhookRow): Promise<void> {
    await this.orm.insert(webhooks).values(row);
  }

  async get(id: string): Promise<WebhookRow | null> {
    const [row] = await this.orm.select().from(webhooks).where(eq(webhooks.id, id));
    return row ?? null;
  }

  list(): Promise<WebhookRow[]> {
    return this.orm.select().from(webhooks).orderBy(desc(webhooks.id));
  }

  async markDeleted(id: string, now: number): Promise<WebhookRow | null> {
    await this.orm.update(webhooks).set({ deletedAt: now }).where(and(eq(webhooks.id, id), isNull(webhooks.deletedAt)));
    return this.get(id);
  }

  async deliveries(webhookId: string, cursor: string | undefined, limit: number) {
    const d = webhookDeliveries;
    const rows = await this.orm
      .select()
      .from(d)
      .where(and(eq(d.webhookId, webhookId), cursor ? lt(d.id, cursor) : undefined))
      .orderBy(desc(d.id))
      .limit(limit);
    const attempts = rows.length
      ? await this.orm.select().from(webhookAttempts).where(inArray(webhookAttempts.deliveryId, rows.map((r) => r.id))).orderBy(webhookAttempts.attempt)
      : [];
    return rows.map((row) => ({ row, attempts: attempts.filter((a) => a.deliveryId === row.id) }));
  }

  async claimDue(now: number, limit: number, leaseUntil: number): Promise<ClaimedDelivery[]> {
    // Exact across replicas: SKIP LOCKED leaves a row another replica is claiming to it, and FOR UPDATE
    // re-checks the WHERE on the newest version of each row it locks, so a claim just committed is not due.
    // MATERIALIZED: the rows are picked once, whatever plan the UPDATE gets, so no more than `limit` are claimed.
    const rows = await this.orm.execute<{ id: string; webhook_id: string; event_id: string; body: string; attempts: number; created_at: string }>(sql`
      WITH picked AS MATERIALIZED (
        SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ${now}
         ORDER BY next_attempt_at LIMIT ${limit} FOR UPDATE SKIP LOCKED)
      UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = ${leaseUntil}
        FROM picked WHERE d.id = picked.id
      RETURNING d.id, d.webhook_id, d.event_id, d.body, d.attempts, d.created_at`);
    return [...rows].map((r) => ({ id: r.id, webhookId: r.webhook_id, eventId: r.event_id, body: r.body, attempt: Number(r.attempts), createdAt: Number(r.created_at) }));
  }

  async target(webhookId: string) {
    const [row] = await this.orm.select({ url: webhooks.url, secretSealed: webhooks.secretSealed, deletedAt: webhooks.deletedAt }).from(webhooks).where(eq(webhooks.id, webhookId));
    return row ?? null;
  }

  async finish(a: WebhookAttemptRow, outcome: AttemptOutcome): Promise<void> {
    const d = webhookDeliveries;
    await this.orm.transaction(async (tx) => {
      await tx.insert(webhookAttempts).values(a).onConflictDoUpdate({ target: [webhookAttempts.deliveryId, webhookAttempts.attempt], set: a });
      // attempts = this attempt: a claim that outlived its lease must not undo the next one's state.
      await tx.update(d).set(afterAttempt(outcome)).where(and(eq(d.id, a.deliveryId), eq(d.attempts, a.attempt)));
    });
  }
}
