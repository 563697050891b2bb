import { and, asc, desc, eq, sql } from "drizzle-orm";
import type { Pg } from "../../db/pg.ts";
import type { AuditFilter, AuditStore, SpendWindow } from "../../domain/audit.ts";
import { auditConditions, dayNumber, moneyColumns, type Dialect } from "../audit-sql.ts";
import { pgSchema, type PgOrm } from "../backend.ts";

const { auditLog } = pgSchema;

const dialect: Dialect = {
  // PostgreSQL's planner weighs the key/label and outcome indexes by their statistics itself.
  narrowedOutcome: (o) => eq(auditLog.outcome, o),
};

/** Where the ordering keys start in the bigint advisory lock space, clear of the migrations' lock and of any small keys. */
const ORDER_KEY_BASE = 2n ** 62n;
/** A ledger transaction older than this is stuck (a replica cut off mid-transaction): its key no longer holds readers back. */
const STUCK_WRITER = "10 seconds";

/**
 * The statement every ledger transaction runs first (src/ledger/pg.ts), before any audit row it
 * inserts takes an id: a shared advisory lock on ORDER_KEY_BASE + the sequence's last id - 1, held
 * to commit. Every id the transaction takes comes later from the sequence (CACHE 1, the default),
 * so it is above that. Shared locks never conflict with each other: no writer waits on another.
 */
export const AUDIT_ORDER_LOCK = `SELECT pg_advisory_xact_lock_shared(${ORDER_KEY_BASE} + last_value - 1) FROM audit_log_id_seq`;

/**
 * The audit log in PostgreSQL, shared by every replica.
 *
 * Order across replicas. `audit_log.id` comes from an identity sequence when a row is inserted, not
 * when it commits: a ledger transaction may hold id 60 uncommitted while id 61 is committed and
 * read. Pages run newest first by id and next_cursor continues below the last id shown, so a first
 * page showing 61, and any reader that goes on from the newest id it saw, would never reach 60.
 * Hence a first page (no cursor) shows only ids up to a horizon below which every row is final:
 * one statement reads the highest committed id `top` (in its snapshot) and then, live from pg_locks,
 * the smallest AUDIT_ORDER_LOCK key held. A transaction that takes ids holds its key from before
 * its first id to its commit, so: one still in flight is seen with a key below its ids; one that
 * took its lock after the read takes ids above `top`; one that committed in between is visible to
 * the page query, which runs after. The horizon is min(top, smallest key): no reader waits, and
 * rows committed while a ledger transaction with smaller ids is in flight show once it ends
 * (milliseconds). A page with a cursor lies below an earlier horizon, so it is final too. An export
 * starts with a first page: it holds exactly the rows committed before it started (minus pruned).
 * The one exception: a transaction in flight longer than STUCK_WRITER is not waited for, so the
 * log keeps moving; should it commit later, its rows are on later first pages but not below cursors
 * handed out meanwhile. Summaries and spend totals count what is committed when they run.
 */
export class PgAuditStore implements AuditStore {
  constructor(
    private readonly orm: PgOrm,
    private readonly sql: Pg,
  ) {}

  /** The highest id at or below which every row is final (see the class comment). */
  async horizon(): Promise<number> {
    // Advisory locks are per database but pg_locks lists the cluster's. A bigint key is listed as classid
    // (high 32 bits) and objid (low 32 bits), objsubid 1. A session whose transaction start this role may
    // not see counts as in flight.
    const [h] = await this.sql`
      SELECT (SELECT coalesce(max(id), 0) FROM audit_log) AS top,
             (SELECT min(((l.classid::bigint << 32) | l.objid::bigint) - ${ORDER_KEY_BASE.toString()}::bigint)
                FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.objsubid = 1 AND l.mode = 'ShareLock' AND l.classid::bigint >= ${Number(ORDER_KEY_BASE >> 32n)}
                 AND coalesce(a.xact_start, now()) > now() - ${STUCK_WRITER}::interval) AS held`;
    return h.held === null ? Number(h.top) : Math.min(Number(h.top), Number(h.held));
  }

  /**
   * The page query, for the query-plan tests. For a time window with nothing else to narrow by, the
   * planner walks the id index down from the newest row, filtering on ts: it cannot know that ids and
   * times rise together, so a day two weeks back cost a walk over two weeks of rows (40-60 ms among 1M).
   * A window nearer its start than the present is read through the ts index instead, as ids, sorted,
   * then the page's rows (OFFSET 0 keeps the planner from turning it back into the walk): 38 → 8 ms for
   * that day. Both read the same rows; each is the fast one when its end of the log is the nearer.
   */
  pageQuery(f: AuditFilter, beforeId: number, limit: number) {
    const conditions = and(...auditConditions(auditLog, dialect, f, beforeId));
    const narrowWindow = f.since !== undefined && f.until !== undefined && !f.key_id && f.label === undefined && f.until - f.since < Date.now() - f.until;
    if (narrowWindow) {
      // = ANY(ARRAY(…)): the page's ids are computed once, then each row is fetched by its primary key
      // (an IN (…) was planned as a hash join over a scan of the whole log).
      const ids = sql`ARRAY(SELECT id FROM (SELECT id FROM ${auditLog} WHERE ${conditions} OFFSET 0) w ORDER BY id DESC LIMIT ${limit})`;
      return this.orm.select().from(auditLog).where(sql`${auditLog.id} = ANY(${ids})`).orderBy(desc(auditLog.id));
    }
    return this.orm.select().from(auditLog).where(conditions).orderBy(desc(auditLog.id)).limit(limit);
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
        .orderBy(desc(settled), asc(auditLog.agentRunLabel)),
      this.orm
        .select({ keyId: auditLog.keyId, label: auditLog.agentRunLabel, vendor: auditLog.vendor, ...cols })
        .from(auditLog)
        .where(where)
        .groupBy(auditLog.keyId, auditLog.agentRunLabel, auditLog.vendor)
        .orderBy(desc(settled), asc(auditLog.keyId)),
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
      .orderBy(day, runLabel);
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
