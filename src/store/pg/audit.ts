import { and, asc, desc, eq, sql } from "drizzle-orm";
import type { Pg } from "../../db/pg.ts";
import type { AuditFilter, AuditStore, SpendWindow } from "../../domain/audit.ts";
import { auditConditions, dayNumber, moneyColumns, type Dialect } from "../audit-sql.ts";
import { pgSchema, type PgOrm } from "../backend.ts";

const { auditLog } = pgSchema;

/** Labels in code point order whatever the database's collation; migrations/pg/0002 indexes this expression. */
const bytewiseLabel = sql`${auditLog.agentRunLabel} COLLATE "C"`;

const dialect: Dialect = {
  label: bytewiseLabel,
  // PostgreSQL's planner weighs the key/label and outcome indexes by their statistics itself.
  narrowedOutcome: (o) => eq(auditLog.outcome, o),
};

/** How long a first page waits for audit writers in flight: ledger transactions take milliseconds. */
const WRITER_WAIT_MS = 1_000;

/**
 * The audit log in PostgreSQL, shared by every replica.
 *
 * Order across replicas. `audit_log.id` comes from an identity sequence when a row is inserted, not
 * when it commits: a ledger transaction may hold id 60 uncommitted while id 61 is committed and
 * read. Pages run newest first by id and next_cursor continues below the last id shown, so a first
 * page showing 61 and a cursor below it would never reach 60. Hence a first page (no cursor) only
 * shows ids up to a horizon below which every row is final (committed, or never to exist):
 *  1. one statement reads the highest committed id `top` (in its snapshot) and then, live, the
 *     transactions holding a ROW EXCLUSIVE lock on audit_log. Every transaction that writes
 *     audit_log takes that lock before its INSERT takes an id, and keeps it until it ends, so
 *     every transaction that could still commit an id ≤ top is in that list;
 *  2. it waits until those transactions have ended (polled in pg_locks; new ones are not waited
 *     for: their ids come from the sequence after `top`);
 *  3. it reads ids ≤ top. Rows above `top` show on the next read, above everything shown.
 * A page with a cursor is below an earlier horizon, so final: no wait. Exports start with a first
 * page, so they hold exactly the rows committed before they started (minus pruned ones).
 * The one way to see less: a writer stuck longer than WRITER_WAIT_MS (a replica cut off mid-
 * transaction, until PostgreSQL drops its connection) is no longer waited for, and a row it commits
 * later below `top` is reached by later first pages and cursors, not by the cursors handed out
 * meanwhile. Summaries and spend totals count what is committed when they run.
 */
export class PgAuditStore implements AuditStore {
  constructor(
    private readonly orm: PgOrm,
    private readonly sql: Pg,
  ) {}

  /** The highest id below which every row is final (see the class comment). */
  async horizon(): Promise<number> {
    const [first] = await this.sql`
      SELECT (SELECT coalesce(max(id), 0) FROM audit_log) AS top,
             (SELECT string_agg(virtualtransaction, ',') FROM pg_locks
               WHERE relation = 'audit_log'::regclass AND mode = 'RowExclusiveLock') AS writers`;
    const deadline = Date.now() + WRITER_WAIT_MS;
    let writers: string | null = first.writers;
    while (writers !== null && Date.now() < deadline) {
      await Bun.sleep(1);
      [{ writers }] = await this.sql`
        SELECT string_agg(virtualtransaction, ',') AS writers FROM pg_locks
         WHERE relation = 'audit_log'::regclass AND mode = 'RowExclusiveLock' AND virtualtransaction = ANY(string_to_array(${writers}, ','))`;
    }
    return Number(first.top);
  }

  /** The page query, for the query-plan tests. */
  pageQuery(f: AuditFilter, beforeId: number, limit: number) {
    return this.orm
      .select()
      .from(auditLog)
      .where(and(...auditConditions(auditLog, dialect, f, beforeId)))
      .orderBy(desc(auditLog.id))
      .limit(limit);
  }

  async page(f: AuditFilter, beforeId: number | undefined, limit: number) {
    return this.pageQuery(f, beforeId ?? (await this.horizon()) + 1, limit);
  }

  async summary(f: AuditFilter) {
    const { calls, settled, reserved, refused, capHits } = moneyColumns(auditLog);
    const [r] = await this.orm
      .select({ calls, settled, reserved, refused, capHits })
      .from(auditLog)
      .where(and(...auditConditions(auditLog, dialect, f)));
    return { calls: r!.calls, settledMicros: r!.settled, reservedMicros: r!.reserved, refused: r!.refused, capHits: r!.capHits };
  }

  async spend(w: SpendWindow) {
    const { calls, settled, reserved, capHits } = moneyColumns(auditLog);
    const cols = { calls, settled, reserved, capHits };
    const where = and(...auditConditions(auditLog, dialect, w), sql`${auditLog.keyId} IS NOT NULL`);
    const [byLabel, byKey] = await Promise.all([
      this.orm
        .select({ label: auditLog.agentRunLabel, ...cols })
        .from(auditLog)
        .where(where)
        .groupBy(auditLog.agentRunLabel)
        .orderBy(desc(settled), asc(bytewiseLabel)),
      this.orm
        .select({ keyId: auditLog.keyId, label: auditLog.agentRunLabel, vendor: auditLog.vendor, ...cols })
        .from(auditLog)
        .where(where)
        .groupBy(auditLog.keyId, auditLog.agentRunLabel, auditLog.vendor)
        .orderBy(desc(settled), asc(sql`${auditLog.keyId} COLLATE "C"`)),
    ]);
    return { byLabel, byKey };
  }

  async dailySpend(since: number, label?: string) {
    const day = dayNumber(auditLog);
    const runLabel = sql<string>`coalesce(${auditLog.agentRunLabel}, '')`;
    return this.orm
      .select({ day, label: runLabel, micros: moneyColumns(auditLog).settled })
      .from(auditLog)
      .where(and(...auditConditions(auditLog, dialect, { since, label }), eq(auditLog.ledgerState, "settled")))
      .groupBy(day, runLabel)
      .orderBy(day, sql`${runLabel} COLLATE "C"`);
  }

  /**
   * One statement, so one short transaction. Oldest first through audit_ts; SKIP LOCKED leaves rows
   * that another replica's pass (or a ledger transaction) holds, so two replicas pruning at once
   * delete disjoint batches and neither waits. A stored answer goes with the row it points at.
   */
  async prune(cutoff: number, limit: number): Promise<number> {
    const [r] = await this.sql`
      WITH doomed AS (SELECT id FROM audit_log WHERE ts < ${cutoff} ORDER BY ts LIMIT ${limit} FOR UPDATE SKIP LOCKED),
           repeats AS (DELETE FROM idempotency_records WHERE audit_id IN (SELECT id FROM doomed)),
           gone AS (DELETE FROM audit_log WHERE id IN (SELECT id FROM doomed) RETURNING 1)
      SELECT count(*)::int AS n FROM gone`;
    return Number(r.n);
  }
}
