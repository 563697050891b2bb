import type { SQL } from "bun";
import { DEFAULT_THRESHOLDS, scopeData, thresholdMicros, type AlertScope, type SpendChange } from "../domain/alerts.ts";
import type { EventType, StoredEvent } from "../domain/events.ts";
import { outboxRows } from "../domain/webhooks.ts";
import { newId } from "../ids.ts";
import { microsToUsd } from "../money.ts";

/**
 * Cap alerts on PostgreSQL: the same rules as CapAlerts (src/domain/alerts.ts) — cap.threshold
 * when settled spend reaches a threshold, cap.hit on the first refusal of the day, each once per
 * key or budget, UTC day and threshold — written inside the ledger transaction that moved (or
 * refused) the money, together with the event row and its webhook outbox rows, so they exist if
 * and only if that transaction commits. "Once" across replicas is the mark's primary key:
 * `INSERT … ON CONFLICT DO NOTHING RETURNING` lets exactly one transaction raise it.
 */
const HIT_MARK = -1;

export class PgCapAlerts {
  constructor(
    /** Called after a commit that queued a delivery (the webhook sender polls the outbox). */
    private readonly queued: () => void = () => {},
    /** Told of each alert raised, for the log's action line (as EventLog.record logs on SQLite). */
    private readonly raised: (e: StoredEvent) => void = () => {},
  ) {}

  /** The thresholds subscribed to (the defaults when no webhook asks for cap.threshold), ascending. */
  async thresholds(tx: SQL): Promise<number[]> {
    const rows = await tx`SELECT thresholds FROM webhooks WHERE deleted_at IS NULL AND events::jsonb ? 'cap.threshold'`;
    const set = new Set<number>();
    for (const r of rows) for (const t of JSON.parse(r.thresholds) as number[]) set.add(t);
    return rows.length ? [...set].sort((a, b) => a - b) : [...DEFAULT_THRESHOLDS];
  }

  /** `known`: thresholds already read in this transaction (a batch reads them once), so only a crossing costs a round trip. */
  async spent(tx: SQL, changes: readonly SpendChange[], day: string, now: number, known?: readonly number[]): Promise<boolean> {
    const moved = changes.filter((c) => c.capMicros > 0 && c.after > c.before);
    if (moved.length === 0) return false;
    const thresholds = known ?? (await this.thresholds(tx));
    let queued = false;
    for (const { scope, before, after, capMicros } of moved) {
      for (const t of thresholds) {
        const line = thresholdMicros(t, capMicros);
        if (before >= line || after < line) continue;
        queued = (await this.once(tx, scope.id, day, t, now, "cap.threshold", { ...scopeData(scope), threshold: t, spent_usd: microsToUsd(after), cap_usd: microsToUsd(capMicros), day })) || queued;
      }
    }
    return queued;
  }

  hit(tx: SQL, scope: AlertScope, heldMicros: number, attemptedMicros: number, capMicros: number, day: string, now: number): Promise<boolean> {
    return this.once(tx, scope.id, day, HIT_MARK, now, "cap.hit", {
      ...scopeData(scope),
      spent_usd: microsToUsd(heldMicros),
      cap_usd: microsToUsd(capMicros),
      attempted_usd: microsToUsd(attemptedMicros),
      day,
    });
  }

  /** Raises the event unless this scope, day and threshold already has; returns whether a delivery was queued. */
  private async once(tx: SQL, scopeId: string, day: string, threshold: number, now: number, type: EventType, data: Record<string, unknown>): Promise<boolean> {
    const event: StoredEvent = { id: newId("evt", now), ts: now, type, actor: null, target: scopeId, data };
    const won = await tx`INSERT INTO cap_alert_marks (scope_id, day, threshold, event_id) VALUES (${scopeId}, ${day}, ${threshold}, ${event.id})
                         ON CONFLICT DO NOTHING RETURNING 1`;
    if (won.length === 0) return false;
    this.raised(event);
    await tx`INSERT INTO events (id, ts, type, actor_token_id, actor_name, target, data) VALUES (${event.id}, ${now}, ${type}, NULL, NULL, ${scopeId}, ${JSON.stringify(data)})`;
    // The outbox rows the stores' event sinks write (outboxRows), in this raw-SQL transaction.
    const subs = await tx`SELECT id, thresholds, format FROM webhooks WHERE deleted_at IS NULL AND events::jsonb ? ${type}`;
    const rows = outboxRows(event, subs.map((w: any) => ({ id: w.id, format: w.format, thresholds: JSON.parse(w.thresholds) })));
    for (const d of rows) {
      await tx`INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, state, attempts, next_attempt_at, created_at)
               VALUES (${d.id}, ${d.webhookId}, ${d.eventId}, ${d.eventType}, ${d.body}, ${d.state}, ${d.attempts}, ${d.nextAttemptAt}, ${d.createdAt})
               ON CONFLICT DO NOTHING`;
    }
    return rows.length > 0;
  }

  kick(): void {
    this.queued();
  }
}
