import type { Database, Statement } from "bun:sqlite";
import { microsToUsd } from "../money.ts";
import type { EventLog } from "./events.ts";

/** SPEC §7: a webhook without its own thresholds is told at 50, 80 and 100 % of a daily cap. */
export const DEFAULT_THRESHOLDS: readonly number[] = [0.5, 0.8, 1.0];

/** What a cap alert is about: one key's daily cap, or one budget's. */
export type AlertScope =
  | { kind: "key"; id: string; label: string }
  | { kind: "budget"; id: string; name: string; labelPrefix: string };

/** Today's settled spend of one key or budget before and after a settlement. */
export interface SpendChange {
  scope: AlertScope;
  before: number;
  after: number;
  capMicros: number;
}

/** A marker row with this "threshold" says the scope's cap.hit was raised that day. */
const HIT_MARK = -1;

/**
 * Cap alerts, raised by the ledger inside the transaction that moved the money, so an alert
 * (and the webhook deliveries its event queues) exists if and only if that spend committed.
 * Each is raised once per key or budget, UTC day and threshold — a marker row under the
 * ledger's write lock decides, so several processes never raise it twice.
 *
 * - `cap.threshold`: settled spend today reaches a threshold of the daily cap (reaching it
 *   exactly counts). The thresholds are those of the live webhooks subscribed to it (their
 *   union; each webhook is sent only its own), or the defaults when none is, so the operator
 *   trail still shows them.
 * - `cap.hit`: the first call of the day that a cap refuses, per key or budget.
 */
export class CapAlerts {
  private readonly q: Record<string, Statement<any, any[]>>;

  constructor(
    sqlite: Database,
    private readonly events: EventLog,
  ) {
    const p = (s: string) => sqlite.prepare(s);
    this.q = {
      subscribed: p(`SELECT thresholds FROM webhooks WHERE deleted_at IS NULL AND EXISTS (SELECT 1 FROM json_each(webhooks.events) WHERE value = 'cap.threshold')`),
      marked: p(`SELECT 1 FROM cap_alert_marks WHERE scope_id = ? AND day = ? AND threshold = ?`),
      mark: p(`INSERT INTO cap_alert_marks (scope_id, day, threshold, event_id) VALUES (?, ?, ?, ?)`),
    };
  }

  /** The thresholds read in this ledger transaction (`newTransaction` forgets them). */
  private cached: number[] | null = null;

  /**
   * Called by the ledger as each of its transactions begins. Within one, the thresholds are read
   * once: it holds the write lock, so no webhook can change until it commits.
   */
  newTransaction(): void {
    this.cached = null;
  }

  /** The thresholds in force: every live subscribed webhook's, else the defaults. */
  thresholds(): number[] {
    return (this.cached ??= this.read());
  }

  private read(): number[] {
    const rows = this.q.subscribed!.all() as { thresholds: string }[];
    if (rows.length === 0) return [...DEFAULT_THRESHOLDS];
    const all = new Set<number>();
    for (const r of rows) for (const t of JSON.parse(r.thresholds) as number[]) all.add(t);
    return [...all].sort((a, b) => a - b);
  }

  /** One settlement moved each scope's spend from `before` to `after` today: raise each threshold reached. */
  spent(changes: readonly SpendChange[], day: string, now: number): void {
    const moved = changes.filter((c) => c.capMicros > 0 && c.after > c.before);
    if (moved.length === 0) return;
    const thresholds = this.thresholds(); // once per transaction, not per settlement or scope
    for (const { scope, before, after, capMicros } of moved) {
      for (const t of thresholds) {
        const line = thresholdMicros(t, capMicros);
        if (before >= line || after < line) continue;
        this.once(scope.id, day, t, () =>
          this.events.record({ type: "cap.threshold", actor: null, target: scope.id, data: { ...scopeData(scope), threshold: t, spent_usd: microsToUsd(after), cap_usd: microsToUsd(capMicros), day } }, now),
        );
      }
    }
  }

  /** A call was refused by this cap. */
  hit(scope: AlertScope, heldMicros: number, attemptedMicros: number, capMicros: number, day: string, now: number): void {
    this.once(scope.id, day, HIT_MARK, () =>
      this.events.record(
        {
          type: "cap.hit",
          actor: null,
          target: scope.id,
          data: { ...scopeData(scope), spent_usd: microsToUsd(heldMicros), cap_usd: microsToUsd(capMicros), attempted_usd: microsToUsd(attemptedMicros), day },
        },
        now,
      ),
    );
  }

  private once(scopeId: string, day: string, threshold: number, raise: () => { id: string }): void {
    if (this.q.marked!.get(scopeId, day, threshold)) return;
    this.q.mark!.run(scopeId, day, threshold, raise().id);
  }
}

/** The smallest spend in micros that counts as having reached `fraction` of the cap. */
export function thresholdMicros(fraction: number, capMicros: number): number {
  // Rounded to whole micros first so float noise (0.8 * cap) never moves the line by one.
  return Math.ceil(Math.round(fraction * capMicros * 1000) / 1000);
}

/** The `data` fields naming a key or budget scope (shared with the PostgreSQL alerts). */
export function scopeData(scope: AlertScope): Record<string, unknown> {
  return scope.kind === "key"
    ? { scope: "key", key_id: scope.id, agent_run_label: scope.label }
    : { scope: "budget", budget_id: scope.id, name: scope.name, label_prefix: scope.labelPrefix };
}
