import type { Statement } from "bun:sqlite";
import { and, desc, eq, inArray, isNull, lt } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { webhookAttempts, webhookDeliveries, webhooks, type WebhookAttemptRow, type WebhookRow } from "../../db/schema.ts";
import type { EventLog, StoredEvent } from "../../domain/events.ts";
import { afterAttempt, outboxRows, type AttemptOutcome, type ClaimedDelivery, type Subscriber, type WebhookStore } from "../../domain/webhooks.ts";

interface DueRow {
  id: string;
  webhook_id: string;
  event_id: string;
  body: string;
  attempts: number;
  next_attempt_at: number;
  created_at: number;
}

/** Webhooks and their outbox in the SQLite file, drained by every process that opens it. */
export class SqliteWebhookStore implements WebhookStore {
  private readonly q: Record<string, Statement<any, any[]>>;
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly db: Db,
    events: EventLog,
  ) {
    const p = (s: string) => db.sqlite.prepare(s);
    this.q = {
      subscribers: p(
        `SELECT id, thresholds, format FROM webhooks
          WHERE deleted_at IS NULL AND EXISTS (SELECT 1 FROM json_each(webhooks.events) WHERE value = ?)`,
      ),
      due: p(
        `SELECT id, webhook_id, event_id, body, attempts, next_attempt_at, created_at FROM webhook_deliveries
          WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`,
      ),
      // The claim: only the process whose UPDATE still sees the row as it read it sends this attempt.
      // Read first, claim only what is due: an idle poll never takes the file's write lock from the ledger.
      claim: p(
        `UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?
          WHERE id = ? AND state = 'pending' AND attempts = ? AND next_attempt_at = ?`,
      ),
    };
    events.addSink((e) => this.queue(e));
  }

  /** Runs inside the event's transaction (EventLog sinks do). */
  private queue(e: StoredEvent): void {
    const subs = (this.q.subscribers!.all(e.type) as { id: string; thresholds: string; format: Subscriber["format"] }[]).map((w) => ({ ...w, thresholds: JSON.parse(w.thresholds) as number[] }));
    const rows = outboxRows(e, subs);
    if (rows.length === 0) return;
    this.db.orm.insert(webhookDeliveries).values(rows).onConflictDoNothing().run();
    for (const l of this.listeners) l();
  }

  onQueued(listener: () => void): void {
    this.listeners.push(listener);
  }

  async insert(row: WebhookRow): Promise<void> {
    this.db.orm.insert(webhooks).values(row).run();
  }

  async get(id: string): Promise<WebhookRow | null> {
    return this.db.orm.select().from(webhooks).where(eq(webhooks.id, id)).get() ?? null;
  }

  async list(): Promise<WebhookRow[]> {
    return this.db.orm.select().from(webhooks).orderBy(desc(webhooks.id)).all();
  }

  async markDeleted(id: string, now: number): Promise<WebhookRow | null> {
    this.db.orm.update(webhooks).set({ deletedAt: now }).where(and(eq(webhooks.id, id), isNull(webhooks.deletedAt))).run();
    return this.get(id);
  }

  async deliveries(webhookId: string, cursor: string | undefined, limit: number) {
    const d = webhookDeliveries;
    const rows = this.db.orm
      .select()
      .from(d)
      .where(and(eq(d.webhookId, webhookId), cursor ? lt(d.id, cursor) : undefined))
      .orderBy(desc(d.id))
      .limit(limit)
      .all();
    const attempts = rows.length
      ? this.db.orm.select().from(webhookAttempts).where(inArray(webhookAttempts.deliveryId, rows.map((r) => r.id))).orderBy(webhookAttempts.attempt).all()
      : [];
    return rows.map((row) => ({ row, attempts: attempts.filter((a) => a.deliveryId === row.id) }));
  }

  async claimDue(now: number, limit: number, leaseUntil: number): Promise<ClaimedDelivery[]> {
    const claimed: ClaimedDelivery[] = [];
    for (const r of this.q.due!.all(now, limit) as DueRow[]) {
      if (this.q.claim!.run(leaseUntil, r.id, r.attempts, r.next_attempt_at).changes !== 1) continue; // another process has it
      claimed.push({ id: r.id, webhookId: r.webhook_id, eventId: r.event_id, body: r.body, attempt: r.attempts + 1, createdAt: r.created_at });
    }
    return claimed;
  }

  async target(webhookId: string) {
    const row = this.db.orm.select({ url: webhooks.url, secretSealed: webhooks.secretSealed, deletedAt: webhooks.deletedAt }).from(webhooks).where(eq(webhooks.id, webhookId)).get();
    return row ?? null;
  }

  async finish(a: WebhookAttemptRow, outcome: AttemptOutcome): Promise<void> {
    const d = webhookDeliveries;
    this.db.sqlite
      .transaction(() => {
        this.db.orm.insert(webhookAttempts).values(a).onConflictDoUpdate({ target: [webhookAttempts.deliveryId, webhookAttempts.attempt], set: a }).run();
        // attempts = this attempt: a claim that outlived its lease must not undo the next one's state.
        this.db.orm.update(d).set(afterAttempt(outcome)).where(and(eq(d.id, a.deliveryId), eq(d.attempts, a.attempt))).run();
      })
      .immediate();
  }
}
