import type { Database, Statement } from "bun:sqlite";
import { createHmac } from "node:crypto";
import { and, desc, eq, lt } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "../db/connection.ts";
import { webhookAttempts, webhookDeliveries, webhooks, type WebhookAttemptRow, type WebhookDeliveryRow, type WebhookRow } from "../db/schema.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import type { Logger } from "../log.ts";
import { DEFAULT_THRESHOLDS } from "./alerts.ts";
import { randomToken, type SecretBox } from "./crypto.ts";
import { EVENT_TYPES, type StoredEvent } from "./events.ts";

/**
 * Webhooks (SPEC §7): subscriptions, a durable outbox and the worker that drains it.
 *
 * The outbox is written by an EventLog sink, i.e. inside the transaction that records the event,
 * so a delivery exists if and only if the change that caused it committed. The worker claims a
 * due row with a conditional UPDATE (compare-and-set on its due time and attempt count), so
 * several processes on one data dir never send one attempt twice; it then sends with no
 * transaction open, under a timeout and a concurrency bound, so a slow or dead receiver costs
 * the proxy nothing.
 */

export const WEBHOOK_FORMATS = ["json", "slack"] as const;
export type WebhookFormat = (typeof WEBHOOK_FORMATS)[number];

export const createWebhookSchema = z.strictObject({
  url: z
    .string({ error: "url must be a string" })
    .max(2048, "url must be at most 2048 characters")
    .superRefine((text, ctx) => {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        ctx.addIssue({ code: "custom", message: "url must be an absolute http(s) URL" });
        return;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") ctx.addIssue({ code: "custom", message: `url must be http or https, not ${url.protocol.replace(":", "")}` });
    }),
  events: z
    .array(z.enum(EVENT_TYPES, { error: `each event must be one of ${EVENT_TYPES.join(", ")}` }), { error: "events must be a list of event types" })
    .min(1, "events must not be empty")
    .transform((list) => [...new Set(list)]),
  thresholds: z
    .array(z.number({ error: "thresholds must be numbers" }).gt(0, "each threshold must be > 0").lte(1, "each threshold must be ≤ 1 (a fraction of the daily cap)"), {
      error: "thresholds must be a list of fractions like 0.8",
    })
    .min(1, "thresholds must not be empty")
    .max(20, "thresholds takes at most 20 entries")
    .transform((list) => [...new Set(list)].sort((a, b) => a - b))
    .optional(),
  format: z.enum(WEBHOOK_FORMATS, { error: 'format must be "json" or "slack"' }).optional(),
});

/** When attempt n+1 follows attempt n; after the list, every `thenEveryMs` until `giveUpAfterMs` from the event. */
export interface RetryPolicy {
  delaysMs: number[];
  thenEveryMs: number;
  giveUpAfterMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  delaysMs: [1_000, 5_000, 30_000, 120_000, 600_000],
  thenEveryMs: 3_600_000,
  giveUpAfterMs: 24 * 3_600_000,
};

/** When the attempt after `attemptsMade` failed ones is due; null once the policy gives up. */
export function nextAttemptAt(policy: RetryPolicy, attemptsMade: number, createdAt: number, now: number): number | null {
  const delay = policy.delaysMs[attemptsMade - 1] ?? policy.thenEveryMs;
  const at = now + delay;
  return at - createdAt > policy.giveUpAfterMs ? null : at;
}

/** `Keybrake-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (the scheme Stripe uses). */
export function signatureHeader(secret: string, body: string, unixSeconds: number): string {
  const mac = createHmac("sha256", secret).update(`${unixSeconds}.${body}`).digest("hex");
  return `t=${unixSeconds},v1=${mac}`;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * A receiver URL as lists show it: its origin and the last 4 characters of the rest. A Slack
 * incoming-webhook URL (or any URL with a token in its path or query) is a credential: like a vendor
 * secret, it is shown whole only in the answer that created it.
 */
export function maskUrl(text: string): string {
  const url = new URL(text);
  const rest = url.pathname + url.search;
  return rest.length <= 1 ? url.origin + rest : `${url.origin}/…${rest.slice(-4)}`;
}

export function presentWebhook(row: WebhookRow, opts: { revealUrl?: boolean } = {}) {
  return {
    webhook_id: row.id,
    url: opts.revealUrl ? row.url : maskUrl(row.url),
    events: row.events,
    thresholds: row.thresholds,
    format: row.format,
    secret_hint: row.secretHint,
    status: row.deletedAt === null ? "active" : "deleted",
    created_at: iso(row.createdAt),
    deleted_at: iso(row.deletedAt),
  };
}

export function presentDelivery(row: WebhookDeliveryRow, attempts: WebhookAttemptRow[]) {
  return {
    delivery_id: row.id,
    event_id: row.eventId,
    event_type: row.eventType,
    state: row.state,
    attempt_count: row.attempts,
    next_attempt_at: row.state === "pending" ? iso(row.nextAttemptAt) : null,
    created_at: iso(row.createdAt),
    delivered_at: iso(row.deliveredAt),
    attempts: attempts.map((a) => ({ attempt: a.attempt, at: iso(a.ts), status: a.status, error: a.error, duration_ms: a.durationMs })),
  };
}

/** The JSON body of a delivery: the event as GET /events shows it, the actor folded into `data`. */
export function eventBody(e: StoredEvent): Record<string, unknown> {
  const data = e.actor ? { ...e.data, actor: { token_id: e.actor.tokenId, name: e.actor.name } } : e.data;
  return { id: e.id, type: e.type, created_at: new Date(e.ts).toISOString(), data };
}

/** One line a human reads in Slack. Slack renders `<`, `>` and `&` as markup, so client text is escaped. */
export function slackText(e: StoredEvent): string {
  const d = e.data as Record<string, any>;
  const esc = (v: unknown) => String(v ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const what = d.scope === "budget" ? `budget "${esc(d.name)}" (${esc(d.budget_id)})` : d.key_id ? `key ${esc(d.key_id)} (${esc(d.agent_run_label)})` : esc(e.target);
  const by = e.actor ? ` by ${esc(e.actor.name)}` : "";
  switch (e.type) {
    case "cap.threshold":
      return `Keybrake: ${what} reached ${Math.round(Number(d.threshold) * 100)}% of its $${esc(d.cap_usd)} daily cap ($${esc(d.spent_usd)} spent).`;
    case "cap.hit":
      return `Keybrake: ${what} hit its $${esc(d.cap_usd)} daily cap; calls are being refused.`;
    default:
      return `Keybrake: ${e.type} ${what}${by}.`;
  }
}

export interface WebhookOptions {
  fetch?: typeof fetch;
  /** How long one send may take before it counts as failed. */
  timeoutMs?: number;
  /** Sends in flight at once, per process. */
  concurrency?: number;
  /** How often the outbox is polled for due retries (and rows written by other processes). */
  pollMs?: number;
  policy?: RetryPolicy;
}

interface DueRow {
  id: string;
  webhook_id: string;
  event_id: string;
  body: string;
  attempts: number;
  next_attempt_at: number;
  created_at: number;
}

export class WebhookService {
  /** Mutable so tests can shorten the schedule; read at each failed attempt. */
  policy: RetryPolicy;
  private readonly q: Record<string, Statement<any, any[]>>;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly pollMs: number;
  private inFlight = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private kicked = false;
  private stopped = false;

  constructor(
    private readonly db: Db,
    private readonly box: SecretBox,
    private readonly logger: Logger,
    opts: WebhookOptions = {},
  ) {
    this.policy = opts.policy ?? DEFAULT_RETRY_POLICY;
    this.fetchImpl = opts.fetch ?? fetch;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.concurrency = opts.concurrency ?? 4;
    this.pollMs = opts.pollMs ?? 500;
    const p = (s: string) => db.sqlite.prepare(s);
    this.q = {
      subscribers: p(
        `SELECT id, thresholds, format FROM webhooks
          WHERE deleted_at IS NULL AND EXISTS (SELECT 1 FROM json_each(webhooks.events) WHERE value = ?)`,
      ),
      enqueue: p(
        `INSERT OR IGNORE INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, state, attempts, next_attempt_at, created_at)
         VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)`,
      ),
      due: p(
        `SELECT id, webhook_id, event_id, body, attempts, next_attempt_at, created_at FROM webhook_deliveries
          WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`,
      ),
      // The claim: only the process whose UPDATE still sees the row as it read it sends this attempt.
      // Moving next_attempt_at past the send's timeout makes a claim lost in a crash come due again.
      claim: p(
        `UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?
          WHERE id = ? AND state = 'pending' AND attempts = ? AND next_attempt_at = ?`,
      ),
      target: p(`SELECT url, secret_sealed, deleted_at FROM webhooks WHERE id = ?`),
      attempt: p(`INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, ts, status, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)`),
      delivered: p(`UPDATE webhook_deliveries SET state = 'delivered', delivered_at = ? WHERE id = ? AND attempts = ?`),
      retryAt: p(`UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ? AND attempts = ?`),
      failed: p(`UPDATE webhook_deliveries SET state = 'failed' WHERE id = ? AND attempts = ?`),
    };
  }

  create(body: unknown, now = Date.now()): { row: WebhookRow; secret: string } {
    const parsed = createWebhookSchema.safeParse(body);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    const input = parsed.data;
    const secret = "whsec_" + randomToken(32);
    const row: WebhookRow = {
      id: newId("whk", now),
      url: input.url,
      events: input.events,
      thresholds: input.thresholds ?? [...DEFAULT_THRESHOLDS],
      format: input.format ?? "json",
      secretSealed: this.box.seal(secret),
      secretHint: secret.slice(-4),
      createdAt: now,
      deletedAt: null,
    };
    this.db.orm.insert(webhooks).values(row).run();
    return { row, secret };
  }

  get(id: string): WebhookRow {
    const row = this.db.orm.select().from(webhooks).where(eq(webhooks.id, id)).get();
    if (!row) throw new ApiError("not_found", `No webhook ${id}`);
    return row;
  }

  list(): WebhookRow[] {
    return this.db.orm.select().from(webhooks).orderBy(desc(webhooks.id)).all();
  }

  /** Stops new deliveries at once; deliveries already queued are not sent. Idempotent. */
  remove(id: string, now = Date.now()): WebhookRow {
    const row = this.get(id);
    if (row.deletedAt === null) this.db.orm.update(webhooks).set({ deletedAt: now }).where(eq(webhooks.id, id)).run();
    return this.get(id);
  }

  /** Newest first, each with its attempts. */
  deliveries(webhookId: string, f: { cursor?: string; limit: number }) {
    this.get(webhookId);
    const where = f.cursor ? and(eq(webhookDeliveries.webhookId, webhookId), lt(webhookDeliveries.id, f.cursor)) : eq(webhookDeliveries.webhookId, webhookId);
    const rows = this.db.orm.select().from(webhookDeliveries).where(where).orderBy(desc(webhookDeliveries.id)).limit(f.limit + 1).all();
    const more = rows.length > f.limit;
    if (more) rows.pop();
    const data = rows.map((r) => {
      const attempts = this.db.orm.select().from(webhookAttempts).where(eq(webhookAttempts.deliveryId, r.id)).orderBy(webhookAttempts.attempt).all();
      return presentDelivery(r, attempts);
    });
    return { data, nextCursor: more ? rows[rows.length - 1]!.id : null };
  }

  /** The EventLog sink: runs inside the event's transaction and queues one delivery per subscribed webhook. */
  readonly outboxSink = (e: StoredEvent): void => {
    const subs = this.q.subscribers!.all(e.type) as { id: string; thresholds: string; format: WebhookFormat }[];
    let queued = false;
    for (const w of subs) {
      // A webhook hears only its own thresholds; the union is what the alerts watch for.
      if (e.type === "cap.threshold" && !(JSON.parse(w.thresholds) as number[]).includes(Number(e.data.threshold))) continue;
      const body = w.format === "slack" ? { text: slackText(e) } : eventBody(e);
      this.q.enqueue!.run(newId("whd", e.ts), w.id, e.id, e.type, JSON.stringify(body), e.ts, e.ts);
      queued = true;
    }
    if (queued) this.kick();
  };

  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => this.poll(), this.pollMs);
    this.timer.unref?.();
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Polls soon (after the transaction that queued a delivery has committed). */
  kick(): void {
    if (this.kicked || this.stopped) return;
    this.kicked = true;
    setTimeout(() => {
      this.kicked = false;
      this.poll();
    }, 0);
  }

  /** Claims due deliveries up to the concurrency bound and sends them; never waits for a send. */
  poll(now = Date.now()): void {
    if (this.stopped) return;
    const room = this.concurrency - this.inFlight;
    if (room <= 0) return;
    let due: DueRow[];
    try {
      due = this.q.due!.all(now, room) as DueRow[];
    } catch (e) {
      // The database was closed under us (shutdown): stop quietly; anything else is reported.
      if (/closed/i.test(String((e as Error).message))) return this.stop();
      this.logger.error(`webhook outbox: ${(e as Error).message}`);
      return;
    }
    for (const row of due) {
      const leaseUntil = now + this.timeoutMs + 5_000;
      if (this.q.claim!.run(leaseUntil, row.id, row.attempts, row.next_attempt_at).changes !== 1) continue; // another process has it
      this.inFlight++;
      void this.send(row, row.attempts + 1).finally(() => {
        this.inFlight--;
        this.kick();
      });
    }
  }

  private async send(row: DueRow, attempt: number): Promise<void> {
    const target = this.q.target!.get(row.webhook_id) as { url: string; secret_sealed: string; deleted_at: number | null } | null;
    const started = Date.now();
    if (!target || target.deleted_at !== null) {
      this.finishAttempt(row, attempt, started, null, "webhook deleted", 0, true);
      return;
    }
    const t = Math.floor(started / 1000);
    let status: number | null = null;
    let error: string | null = null;
    try {
      const res = await this.fetchImpl(target.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "Keybrake-Webhooks/1",
          "keybrake-signature": signatureHeader(this.box.open(target.secret_sealed), row.body, t),
          "keybrake-event-id": row.event_id, // also for Slack bodies, which carry no id
          "keybrake-delivery-id": row.id,
        },
        body: row.body,
        redirect: "manual",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      status = res.status;
      await res.body?.cancel().catch(() => {}); // the receiver's answer is not read, only its status
    } catch (e) {
      error = (e as Error).name === "TimeoutError" ? `no answer within ${this.timeoutMs} ms` : "connection failed";
    }
    const ok = status !== null && status >= 200 && status < 300;
    if (!ok && error === null) error = `HTTP ${status}`;
    this.finishAttempt(row, attempt, started, status, ok ? null : error, Date.now() - started, false);
  }

  private finishAttempt(row: DueRow, attempt: number, started: number, status: number | null, error: string | null, durationMs: number, giveUp: boolean) {
    if (this.stopped) return;
    try {
      const now = Date.now();
      const next = error === null || giveUp ? null : nextAttemptAt(this.policy, attempt, row.created_at, now);
      this.db.sqlite.transaction(() => {
        this.q.attempt!.run(row.id, attempt, started, status, error, durationMs);
        if (error === null) this.q.delivered!.run(now, row.id, attempt);
        else if (next === null) this.q.failed!.run(row.id, attempt);
        else this.q.retryAt!.run(next, row.id, attempt);
      })();
      // A retry due before the next regular poll (the first one, after ~1 s) is not left waiting for it.
      if (next !== null && next - now < this.pollMs) setTimeout(() => this.kick(), next - now).unref?.();
    } catch (e) {
      if (!/closed/i.test(String((e as Error).message))) this.logger.error(`webhook outbox: ${(e as Error).message}`);
    }
  }
}
