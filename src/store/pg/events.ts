import { and, desc, eq, gte, lt, type SQL } from "drizzle-orm";
import type { EventFilter, EventReader, NewEvent, StoredEvent } from "../../domain/events.ts";
import { newId } from "../../ids.ts";
import type { Logger } from "../../log.ts";
import { pgSchema, type PgExec, type PgOrm } from "../backend.ts";

const { events } = pgSchema;

/** Runs inside the transaction that records an event (the webhook outbox writes its deliveries here). */
export type PgEventSink = (tx: PgExec, event: StoredEvent) => Promise<void>;

/**
 * The operator trail on PostgreSQL: the same rows and rules as EventLog (src/domain/events.ts).
 * `record` takes the transaction of the change it describes, so the trail, its outbox rows and
 * the change commit together or not at all, on whichever replica made it.
 */
export class PgEventLog implements EventReader {
  private readonly sinks: PgEventSink[] = [];

  constructor(
    private readonly orm: PgOrm,
    private readonly logger: Logger,
  ) {}

  addSink(sink: PgEventSink): void {
    this.sinks.push(sink);
  }

  async record(tx: PgExec, e: NewEvent, now = Date.now()): Promise<StoredEvent> {
    const event: StoredEvent = { ...e, id: newId("evt", now), ts: now };
    await tx.insert(events).values({ id: event.id, ts: now, type: e.type, actorTokenId: e.actor?.tokenId ?? null, actorName: e.actor?.name ?? null, target: e.target, data: JSON.stringify(e.data) });
    for (const sink of this.sinks) await sink(tx, event);
    this.logger.action({ type: e.type, actor: e.actor ? `${e.actor.name} (${e.actor.tokenId})` : null, target: e.target, data: e.data });
    return event;
  }

  async list(f: EventFilter): Promise<{ rows: StoredEvent[]; nextCursor: string | null }> {
    const where: SQL[] = [];
    if (f.type) where.push(eq(events.type, f.type));
    if (f.since !== undefined) where.push(gte(events.ts, f.since));
    if (f.until !== undefined) where.push(lt(events.ts, f.until));
    if (f.cursor) where.push(lt(events.id, f.cursor));
    const found = await this.orm.select().from(events).where(and(...where)).orderBy(desc(events.id)).limit(f.limit + 1);
    const rows: StoredEvent[] = found.map((r) => ({
      id: r.id,
      ts: r.ts,
      type: r.type as StoredEvent["type"],
      actor: r.actorTokenId === null ? null : { tokenId: r.actorTokenId, name: r.actorName ?? "" },
      target: r.target,
      data: JSON.parse(r.data),
    }));
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { rows, nextCursor: more ? rows[rows.length - 1]!.id : null };
  }
}
