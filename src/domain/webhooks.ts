import { createHmac } from "node:crypto";
import { z } from "zod";
import type { WebhookAttemptRow, WebhookDeliveryRow, WebhookRow } from "../db/schema.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import type { Logger } from "../log.ts";
import { DEFAULT_THRESHOLDS } from "./alerts.ts";
import { randomToken, type SecretBox } from "./crypto.ts";
import { EVENT_TYPES, type StoredEvent } from "./events.ts";

/**
 * Webhooks (SPEC §7): subscriptions, a durable outbox and the worker that drains it.
 *
 * The outbox is written by an event-log sink, i.e. inside the transaction that records the event,
 * so a delivery exists if and only if the change that caused it committed. The worker claims each
 * due attempt exactly once across the processes on one data dir or the replicas on one PostgreSQL
 * database (WebhookStore.claimDue); it then sends with no transaction open, under a timeout and a
 * concurrency bound, so a slow or dead receiver costs the proxy nothing.
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

/** The fields of a live webhook the outbox needs to queue an event for it. */
export interface Subscriber {
  id: string;
  thresholds: number[];
  format: WebhookFormat;
}

/**
 * The outbox rows one event queues: one per subscribed webhook, in its format. A webhook hears
 * only its own cap thresholds (the union is what the alerts watch for). The one writer of
 * deliveries on both backends (the stores' event sinks, and PgCapAlerts in its raw-SQL transaction).
 */
export function outboxRows(e: StoredEvent, subscribers: readonly Subscriber[]): WebhookDeliveryRow[] {
  return subscribers
    .filter((w) => e.type !== "cap.threshold" || w.thresholds.includes(Number(e.data.threshold)))
    .map((w) => ({
      id: newId("whd", e.ts),
      webhookId: w.id,
      eventId: e.id,
      eventType: e.type,
      body: JSON.stringify(w.format === "slack" ? { text: slackText(e) } : eventBody(e)),
      state: "pending",
      attempts: 0,
      nextAttemptAt: e.ts,
      createdAt: e.ts,
      deliveredAt: null,
    }));
}

/** One attempt of one delivery, claimed by this process. */
export interface ClaimedDelivery {
  id: string;
  webhookId: string;
  eventId: string;
  body: string;
  /** This attempt's number (1 for the first). */
  attempt: number;
  createdAt: number;
}

/** Where a delivery stands after an attempt. */
export type AttemptOutcome = { state: "delivered"; at: number } | { state: "pending"; retryAt: number } | { state: "failed" };

/** The columns of a delivery an attempt's outcome sets. */
export function afterAttempt(o: AttemptOutcome): Partial<WebhookDeliveryRow> {
  if (o.state === "delivered") return { state: "delivered", deliveredAt: o.at };
  return o.state === "failed" ? { state: "failed" } : { nextAttemptAt: o.retryAt };
}

/** Where webhooks and their outbox live (src/store/sqlite/webhooks.ts, src/store/pg/webhooks.ts). */
export interface WebhookStore {
  insert(row: WebhookRow): Promise<void>;
  get(id: string): Promise<WebhookRow | null>;
  /** Newest first, deleted ones too. */
  list(): Promise<WebhookRow[]>;
  /** Sets deleted_at unless it is set; the row as stored after, or null when there is none. */
  markDeleted(id: string, now: number): Promise<WebhookRow | null>;
  /** A webhook's deliveries older than `cursor` (a delivery id), newest first, each with its attempts in order. */
  deliveries(webhookId: string, cursor: string | undefined, limit: number): Promise<{ row: WebhookDeliveryRow; attempts: WebhookAttemptRow[] }[]>;
  /**
   * The store queues outbox rows (outboxRows) inside the transaction of every event its backend's
   * event log records; `listener` runs when one event queued some, before that transaction commits.
   */
  onQueued(listener: () => void): void;
  /**
   * Claims up to `limit` due deliveries for their next attempt, each exactly once across every
   * process and replica, and moves their due time to `leaseUntil`: a claim lost with its process
   * comes due again then.
   */
  claimDue(now: number, limit: number, leaseUntil: number): Promise<ClaimedDelivery[]>;
  /** Where to send: null when the webhook is gone. */
  target(webhookId: string): Promise<{ url: string; secretSealed: string; deletedAt: number | null } | null>;
  /** Records the attempt and, unless a later claim took the delivery over, its new state. */
  finish(attempt: WebhookAttemptRow, outcome: AttemptOutcome): Promise<void>;
}

export interface WebhookOptions {
  fetch?: typeof fetch;
  /** How long one send may take before it counts as failed. */
  timeoutMs?: number;
  /** Sends in flight at once, per process. */
  concurrency?: number;
  /** How often the outbox is polled for due retries (and rows written by other processes or replicas). */
  pollMs?: number;
  policy?: RetryPolicy;
}

export class WebhookService {
  /** Mutable so tests can shorten the schedule; read at each failed attempt. */
  policy: RetryPolicy;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly pollMs: number;
  private inFlight = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private kicked = false;
  private polling = false;
  private pollAgain = false;
  private stopped = false;

  constructor(
    private readonly store: WebhookStore,
    private readonly box: SecretBox,
    private readonly logger: Logger,
    opts: WebhookOptions = {},
  ) {
    this.policy = opts.policy ?? DEFAULT_RETRY_POLICY;
    this.fetchImpl = opts.fetch ?? fetch;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.concurrency = opts.concurrency ?? 4;
    this.pollMs = opts.pollMs ?? 500;
    store.onQueued(() => this.kick());
  }

  async create(body: unknown, now = Date.now()): Promise<{ row: WebhookRow; secret: string }> {
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
    await this.store.insert(row);
    return { row, secret };
  }

  async get(id: string): Promise<WebhookRow> {
    return found(id, await this.store.get(id));
  }

  list(): Promise<WebhookRow[]> {
    return this.store.list();
  }

  /** Stops new deliveries at once; deliveries already queued are not sent. Idempotent. */
  async remove(id: string, now = Date.now()): Promise<WebhookRow> {
    return found(id, await this.store.markDeleted(id, now));
  }

  /** Newest first, each with its attempts. */
  async deliveries(webhookId: string, f: { cursor?: string; limit: number }) {
    await this.get(webhookId);
    const rows = await this.store.deliveries(webhookId, f.cursor, f.limit + 1);
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { data: rows.map((d) => presentDelivery(d.row, d.attempts)), nextCursor: more ? rows[rows.length - 1]!.row.id : null };
  }

  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref?.();
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * Polls soon. Called as an event queues a delivery, i.e. before its transaction commits: on
   * SQLite the commit is synchronous, so it is done by then; on PostgreSQL this poll may come
   * too early, and the next regular one (pollMs) finds the row.
   */
  kick(): void {
    if (this.kicked || this.stopped || !this.timer) return; // not started: another process sends
    this.kicked = true;
    setTimeout(() => {
      this.kicked = false;
      void this.poll();
    }, 0);
  }

  /** Claims due deliveries up to the concurrency bound and sends them; never waits for a send. */
  async poll(now = Date.now()): Promise<void> {
    if (this.stopped) return;
    // One claim at a time per process, so the bound holds; a kick meanwhile polls again after.
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    const room = this.concurrency - this.inFlight;
    if (room <= 0) return;
    this.polling = true;
    let claimed: ClaimedDelivery[] = [];
    try {
      claimed = await this.store.claimDue(now, room, now + this.timeoutMs + 5_000);
    } catch (e) {
      this.reportFailure(e);
    } finally {
      this.polling = false;
    }
    for (const d of claimed) {
      this.inFlight++;
      void this.send(d).finally(() => {
        this.inFlight--;
        this.kick();
      });
    }
    if (this.pollAgain) {
      this.pollAgain = false;
      this.kick();
    }
  }

  private async send(d: ClaimedDelivery): Promise<void> {
    const started = Date.now();
    let target: Awaited<ReturnType<WebhookStore["target"]>>;
    try {
      target = await this.store.target(d.webhookId);
    } catch (e) {
      return this.reportFailure(e); // the lease runs out and the attempt is made again
    }
    if (!target || target.deletedAt !== null) return this.finishAttempt(d, started, null, "webhook deleted", 0, true);
    const t = Math.floor(started / 1000);
    let status: number | null = null;
    let error: string | null = null;
    try {
      const res = await this.fetchImpl(target.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "Keybrake-Webhooks/1",
          "keybrake-signature": signatureHeader(this.box.open(target.secretSealed), d.body, t),
          "keybrake-event-id": d.eventId, // also for Slack bodies, which carry no id
          "keybrake-delivery-id": d.id,
        },
        body: d.body,
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
    return this.finishAttempt(d, started, status, ok ? null : error, Date.now() - started, false);
  }

  private async finishAttempt(d: ClaimedDelivery, started: number, status: number | null, error: string | null, durationMs: number, giveUp: boolean): Promise<void> {
    if (this.stopped) return;
    const now = Date.now();
    const next = error === null || giveUp ? null : nextAttemptAt(this.policy, d.attempt, d.createdAt, now);
    const outcome: AttemptOutcome = error === null ? { state: "delivered", at: now } : next === null ? { state: "failed" } : { state: "pending", retryAt: next };
    try {
      await this.store.finish({ deliveryId: d.id, attempt: d.attempt, ts: started, status, error, durationMs }, outcome);
    } catch (e) {
      return this.reportFailure(e);
    }
    // A retry due before the next regular poll (the first one, after ~1 s) is not left waiting for it.
    if (next !== null && next - now < this.pollMs) setTimeout(() => this.kick(), next - now).unref?.();
  }

  /** A failed outbox query is reported, except once stopping (the database is being closed under us). */
  private reportFailure(e: unknown): void {
    if (this.stopped || /closed/i.test(String((e as Error).message))) return;
    this.logger.error(`webhook outbox: ${(e as Error).message}`);
  }
}

function found(id: string, row: WebhookRow | null): WebhookRow {
  if (!row) throw new ApiError("not_found", `No webhook ${id}`);
  return row;
}
