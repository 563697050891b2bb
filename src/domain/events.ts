import type { Database, Statement } from "bun:sqlite";
import { newId } from "../ids.ts";
import type { Logger } from "../log.ts";

/** SPEC §7: every management action and alert is an event; webhooks subscribe to these types. */
export const EVENT_TYPES = [
  "cap.threshold",
  "cap.hit",
  "key.issued",
  "key.updated",
  "key.revoked",
  "run.revoked",
  "budget.updated",
  "vendor.secret_set",
  "token.created",
  "token.revoked",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Who did it: the management token (or the admin session's token). Null for alerts Keybrake raises itself. */
export interface Actor {
  tokenId: string;
  name: string;
}

export interface NewEvent {
  type: EventType;
  actor: Actor | null;
  /** The id of what was acted on (key_…, budget_…, tok_…), a run label, or a vendor. */
  target: string | null;
  data: Record<string, unknown>;
}

export interface StoredEvent extends NewEvent {
  id: string;
  ts: number;
}

/**
 * Runs inside the transaction that records an event: a webhook outbox writes its deliveries here,
 * so a delivery exists if and only if the change that caused it was committed.
 */
export type EventSink = (event: StoredEvent) => void;

export interface EventFilter {
  type?: EventType;
  since?: number;
  until?: number;
  /** An event id from next_cursor: continue with older events. */
  cursor?: string;
  limit: number;
}

interface EventRow {
  id: string;
  ts: number;
  type: EventType;
  actor_token_id: string | null;
  actor_name: string | null;
  target: string | null;
  data: string;
}

/** Reading the trail (GET /events, the admin Events page), on either backend. */
export interface EventReader {
  list(f: EventFilter): Promise<{ rows: StoredEvent[]; nextCursor: string | null }>;
}

/**
 * The operator trail on SQLite (PgEventLog in src/store/pg/events.ts on PostgreSQL). `record` must be called inside the transaction of the change it describes
 * (it writes with the same connection and opens none of its own), so the trail and the change
 * commit together or not at all.
 */
export class EventLog implements EventReader {
  private readonly insert: Statement;
  private readonly sinks: EventSink[] = [];

  constructor(
    private readonly sqlite: Database,
    private readonly logger: Logger,
  ) {
    this.insert = sqlite.prepare(
      "INSERT INTO events (id, ts, type, actor_token_id, actor_name, target, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
    );
  }

  /** Subscribes a writer that runs in the same transaction as every recorded event. */
  addSink(sink: EventSink): void {
    this.sinks.push(sink);
  }

  record(e: NewEvent, now = Date.now()): StoredEvent {
    const event: StoredEvent = { ...e, id: newId("evt", now), ts: now };
    this.insert.run(event.id, now, e.type, e.actor?.tokenId ?? null, e.actor?.name ?? null, e.target, JSON.stringify(e.data));
    for (const sink of this.sinks) sink(event);
    this.logger.action({ type: e.type, actor: e.actor ? `${e.actor.name} (${e.actor.tokenId})` : null, target: e.target, data: e.data });
    return event;
  }

  /** Newest first; next_cursor continues where this page ended. */
  async list(f: EventFilter): Promise<{ rows: StoredEvent[]; nextCursor: string | null }> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (f.type) where.push("type = ?"), args.push(f.type);
    if (f.since !== undefined) where.push("ts >= ?"), args.push(f.since);
    if (f.until !== undefined) where.push("ts < ?"), args.push(f.until);
    if (f.cursor) where.push("id < ?"), args.push(f.cursor);
    const sql = `SELECT * FROM events ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY id DESC LIMIT ?`;
    const rows = (this.sqlite.query(sql).all(...args, f.limit + 1) as EventRow[]).map(fromRow);
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { rows, nextCursor: more ? rows[rows.length - 1]!.id : null };
  }
}

function fromRow(r: EventRow): StoredEvent {
  return {
    id: r.id,
    ts: r.ts,
    type: r.type,
    actor: r.actor_token_id === null ? null : { tokenId: r.actor_token_id, name: r.actor_name ?? "" },
    target: r.target,
    data: JSON.parse(r.data),
  };
}

/** The public shape of an event (GET /events, webhook bodies carry `data` the same way). */
export function presentEvent(e: StoredEvent) {
  return {
    id: e.id,
    type: e.type,
    created_at: new Date(e.ts).toISOString(),
    actor: e.actor ? { token_id: e.actor.tokenId, name: e.actor.name } : null,
    target: e.target,
    data: e.data,
  };
}
