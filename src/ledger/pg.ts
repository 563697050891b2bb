import type { SQL } from "bun";
import type { Admission, AuditOutcome, CallFacts, CapScope, LiveKey, RepeatGuard, Reservation, Settlement, StoredAnswer } from "../domain/ledger.ts";
import type { SpendChange } from "../domain/alerts.ts";
import { budgetLeft, type BudgetHold, type LiveBudget } from "../domain/budgets.ts";
import { utcDay } from "../domain/time.ts";
import type { PricedObject } from "../vendors/types.ts";
import type { PgCapAlerts } from "./pg-alerts.ts";
import { AUDIT_ORDER_LOCK } from "../store/pg/audit.ts";
import { isUnreachable } from "../db/pg.ts";
import { LedgerUnavailable, type LedgerStats, type SpendLedger } from "./types.ts";
import { batchable, runBatch, type LedgerOp } from "./pg-batch.ts";
import { budgetIdsOver, dayState, decideOnKey, finishAudit, lockKey, n, nn } from "./pg-rows.ts";

/**
 * The spend ledger on PostgreSQL (SPEC §8): any number of replicas share it, and every guarantee
 * of the SQLite ledger holds across them — same decisions, same rows, same order of checks.
 *
 * Why admission is exact. Each admission is one short READ COMMITTED transaction that first takes
 * `SELECT … FROM vault_keys … FOR UPDATE` on the key's row. Every transaction that changes what the
 * key may spend — another admission, a settlement or release (they update the same row's lifetime
 * totals), a revocation or PATCH (they update the row itself) — writes or locks that row, so they
 * queue on it; once granted, FOR UPDATE returns the newest committed version, so revoked_at,
 * expires_at, the caps and the totals this transaction checks are those at the moment it reserves,
 * and no other transaction can change them until it commits. The key's day row and idempotency
 * record are written only by transactions holding that lock, so reading them next is exact too.
 * Budgets are shared by many keys: their day rows are locked `FOR UPDATE` (and the budget rows
 * `FOR SHARE`, so a PATCH of the cap waits) in budget-id order, then checked and reserved in the
 * same transaction. Lock order is always key row → budget day rows by id, in admission and
 * settlement alike, so two transactions never wait on each other in a cycle. Nothing is cached:
 * a replica's decision is only ever taken on rows it holds locked.
 *
 * Writes of one key that arrive together share one such transaction (group commit, below); the
 * checks of each still run on the locked rows, after the writes before it. In the common case
 * (no budgets, no carried-over retry, and no idempotency record yet for a guarded admission — a
 * fresh Idempotency-Key per call) the batch reads the key row FOR UPDATE, its day rows and its
 * guards' records once, decides every write in arrival order in memory on that state with the same
 * decision function as admitIn (src/ledger/pg-rows.ts), and writes the net result (pg-batch.ts).
 * That is as exact as one transaction per write: the key row lock is held from the first read to
 * the commit, so nothing else can change what was decided on in between; the day rows are written
 * only under that lock; the rows written are checked to hold exactly what was decided (else the
 * batch rolls back); and the batch takes no budget lock, so the lock order stays key row → budget
 * day rows.
 *
 * A transaction that cannot reach the database throws LedgerUnavailable: the proxy answers 503
 * and forwards nothing. A replica that dies mid-call leaves its committed reservation held
 * (unsettled), visible to every other replica, exactly like a crashed process on SQLite.
 */

type Tx = SQL;

/** The most writes of one key that share a transaction: bounds its locks' hold time and its statements' size under a flood. */
export const MAX_BATCH = 256;

interface PendingWrite {
  work: (tx: Tx, queue: () => void) => Promise<any>;
  /** The same write as data, for the batched path (runBatch). */
  op: LedgerOp | null;
  resolve: (value: any) => void;
  reject: (error: unknown) => void;
}

export class PgLedger implements SpendLedger {
  /** `alerts` raises cap.threshold and cap.hit (and queues their webhooks) inside the transaction that moved the money. */
  constructor(
    private readonly sql: SQL,
    private readonly alerts: PgCapAlerts | null = null,
  ) {}

  private readonly counts: LedgerStats = { commits: 0, writes: 0, fsyncs: 0 };

  stats(): LedgerStats {
    return { ...this.counts, batchedWrites: this.batchedWrites, batchRollbacks: this.batchRollbacks };
  }

  /** Set by a transaction that queued a webhook delivery: the sender is kicked once it has committed. */
  private async committed<T>(work: (tx: Tx, queue: () => void) => Promise<T>): Promise<T> {
    let queued = false;
    const out = await this.tx((tx) => work(tx, () => (queued = true)));
    this.counts.commits++;
    if (queued) this.alerts?.kick();
    return out;
  }

  /**
   * Group commit, per key: the ledger writes for one key that arrive in one event-loop turn run
   * one after another in one transaction (one BEGIN/COMMIT, one wait for the key's lock), each
   * against the state the ones before it left — the same decisions as one transaction each, as
   * with the SQLite group commit. Only writes of the same key share a transaction, so a batch
   * takes its locks in the one order every transaction uses (key row, then budget day rows by
   * id) and batches of two replicas can never deadlock. A write that fails aborts the batch
   * (nothing of it committed): each write then runs again in a transaction of its own, so only
   * the failing one fails. A reservation is committed before the call is forwarded; a settlement
   * commits after the answer has left (Forwarder.afterAnswer in src/proxy/forward.ts says why that is safe).
   */
  private pending = new Map<string, PendingWrite[]>();
  /** Writes run through the batched path (runBatch): tests check that it is taken. */
  batchedWrites = 0;
  /** Batches rolled back (a write failed, or what was written was not what was decided) and run again one write at a time. */
  batchRollbacks = 0;
  /** The batch of each key now running (or queued behind one): the next batch of that key starts after it. */
  private readonly running = new Map<string, Promise<void>>();
  /** The batch of each key queued behind its running one, still open to new writes until it starts or is full. */
  private readonly waiting = new Map<string, PendingWrite[]>();
  /** The most writes one transaction has carried: tests check MAX_BATCH holds. */
  largestBatch = 0;

  private write<T>(keyId: string, op: LedgerOp | null, work: (tx: Tx, queue: () => void) => Promise<T>): Promise<T> {
    this.counts.writes++;
    return new Promise<T>((resolve, reject) => {
      if (this.pending.size === 0) setImmediate(() => this.flush());
      const group = this.pending.get(keyId);
      const w: PendingWrite = { work, op, resolve, reject };
      if (group) group.push(w);
      else this.pending.set(keyId, [w]);
    });
  }

  private flush(): void {
    const groups = [...this.pending];
    this.pending = new Map();
    for (const [keyId, group] of groups) this.enqueue(keyId, group);
  }

  /**
   * One key's batches run one after another, in the order their writes arrived (as every write
   * does on SQLite): a call admitted after an answer always sees that answer's settlement, which
   * was queued before it — two batches in flight at once could take the key's row lock in either order.
   * Writes that arrive while the key's batch runs join the batch waiting behind it, not a batch per
   * event-loop turn: under load a key's batches grow with its arrival rate instead of queuing up —
   * up to MAX_BATCH writes, so a flood makes more batches, never one unbounded transaction.
   */
  private enqueue(keyId: string, writes: PendingWrite[]): void {
    let rest = writes;
    while (rest.length > 0) {
      const open = this.waiting.get(keyId);
      const room = open ? MAX_BATCH - open.length : 0;
      const taken = rest.slice(0, room > 0 ? room : MAX_BATCH);
      if (room > 0) open!.push(...taken);
      else this.schedule(keyId, taken);
      rest = rest.slice(taken.length);
    }
  }

  /** Starts the batch now if the key has none running, else queues it behind the last one (open to new writes until it starts). */
  private schedule(keyId: string, group: PendingWrite[]): void {
    const before = this.running.get(keyId);
    if (before) this.waiting.set(keyId, group);
    const start = (): Promise<void> => {
      if (this.waiting.get(keyId) === group) this.waiting.delete(keyId); // started: later writes wait for the next one
      this.largestBatch = Math.max(this.largestBatch, group.length);
      return this.runGroup(keyId, group);
    };
    const run: Promise<void> = (before ? before.then(start) : start()).finally(() => {
      if (this.running.get(keyId) === run) this.running.delete(keyId);
    });
    this.running.set(keyId, run);
  }

  private async runGroup(keyId: string, group: PendingWrite[]): Promise<void> {
    if (group.length === 1) {
      const w = group[0]!;
      return this.committed(w.work).then(w.resolve, w.reject);
    }
    let results: unknown[];
    try {
      results = await this.committed(async (tx, queue) => {
        const ops = batchable(keyId, group.map((w) => w.op));
        const batched = ops && (await runBatch(tx, queue, keyId, ops, this.alerts));
        if (batched) {
          this.batchedWrites += group.length;
          return batched;
        }
        const out: unknown[] = [];
        for (const w of group) out.push(await w.work(tx, queue));
        return out;
      });
    } catch (e) {
      if (e instanceof LedgerUnavailable) return void group.forEach((w) => w.reject(e));
      this.batchRollbacks++;
      for (const w of group) await this.committed(w.work).then(w.resolve, w.reject);
      return;
    }
    group.forEach((w, i) => w.resolve(results[i]));
  }

  /**
   * Runs `work` in one transaction; a lost database becomes LedgerUnavailable (nothing of it committed, or the commit's fate is the database's).
   * First, before any audit row takes an id, the transaction publishes a bound below its ids: readers of the audit log
   * trust only ids below every bound held (AUDIT_ORDER_LOCK, src/store/pg/audit.ts).
   */
  private async tx<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    try {
      return (await this.sql.begin(async (tx) => {
        const ordered = tx.unsafe(AUDIT_ORDER_LOCK).then(() => undefined); // sent now, so it runs before the work's statements
        ordered.catch(() => {}); // awaited below; a failure of the work first must not leave it unhandled
        const out = await work(tx);
        await ordered;
        return out;
      })) as T;
    } catch (e) {
      if (isUnreachable(e)) throw new LedgerUnavailable(e);
      throw e;
    }
  }

  private async read<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (e) {
      if (isUnreachable(e)) throw new LedgerUnavailable(e);
      throw e;
    }
  }

  async findKeyByHash(hash: string): Promise<LiveKey | null> {
    const rows = await this.read(
      () => this.sql`SELECT id, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, dedupe_window_ms,
                            require_idempotency_key, allow_unpriced, stripe_accounts, expires_at, revoked_at
                       FROM vault_keys WHERE key_hash = ${hash}`,
    );
    const r = rows[0];
    if (!r) return null;
    return {
      ...r,
      daily_cap_micros: n(r.daily_cap_micros),
      total_cap_micros: nn(r.total_cap_micros),
      dedupe_window_ms: nn(r.dedupe_window_ms),
      expires_at: n(r.expires_at),
      revoked_at: nn(r.revoked_at),
    } as LiveKey;
  }

  async pricedObject(keyId: string, objectId: string): Promise<PricedObject | null> {
    const rows = await this.read(
      () => this.sql`SELECT object_id, kind, amount, currency, counted_micros FROM priced_objects WHERE key_id = ${keyId} AND object_id = ${objectId}`,
    );
    const r = rows[0];
    return r ? ({ objectId: r.object_id, kind: r.kind, amount: n(r.amount), currency: r.currency, countedMicros: n(r.counted_micros) } as PricedObject) : null;
  }

  async pruneRepeats(now: number): Promise<number> {
    const rows = await this.read(() => this.sql`DELETE FROM idempotency_records WHERE expires_at <= ${now} RETURNING 1`);
    return rows.length;
  }

  recordRefusal(key: Pick<LiveKey, "id" | "agent_run_label"> | null, call: CallFacts, outcome: AuditOutcome, errorCode: string, now: number): Promise<number> {
    return this.write(key?.id ?? "", { kind: "refusal", key, call, outcome, errorCode, now }, (tx) => insertAudit(tx, now, key, call, outcome, errorCode, 0, "none", null, null, null));
  }

  admit(key: LiveKey, call: CallFacts, micros: number, now: number, guard: RepeatGuard | null): Promise<Admission> {
    return this.write(key.id, { kind: "admit", key, call, micros, now, guard }, (tx, queue) => this.admitIn(tx, queue, key, call, micros, now, guard));
  }

  private async admitIn(tx: Tx, queue: () => void, key: LiveKey, call: CallFacts, micros: number, now: number, guard: RepeatGuard | null): Promise<Admission> {
    const day = utcDay(now);
    // The lock every exact decision below rests on (see the class comment); today's row read with it.
    // One round trip: the statements are pipelined on the transaction's connection and PostgreSQL runs
    // them in order, so the reads after the lock run once it is granted, each with a fresh READ
    // COMMITTED snapshot: they see the newest committed day row, idempotency record and budgets.
    // (Joined into the FOR UPDATE statement they would not: when a lock wait ends, PostgreSQL re-checks
    // only the locked row and keeps joined rows from the statement's older snapshot — measured here as
    // 142 charges admitted under a 123-charge cap.)
    const [cap, [today], [prior], budgetIds] = await Promise.all([
      lockKey(tx, key.id),
      tx`SELECT spent_micros, reserved_micros FROM key_spend_days WHERE key_id = ${key.id} AND day = ${day}`,
      guard
        ? tx`SELECT request_hash, state, audit_id, reserved_micros, spend_day, status, headers, body, updated_at, expires_at
               FROM idempotency_records WHERE key_id = ${key.id} AND idem_key = ${guard.idemKey}`
        : Promise.resolve([]),
      // Share-locked so a PATCH of one waits for this call; their day rows are locked below.
      budgetIdsOver(tx, key),
    ]);
    if (!cap) throw new Error(`ledger: key ${key.id} vanished`);
    const decided = decideOnKey(cap, dayState(today), micros, now);
    if (decided.kind === "closed") {
      const auditId = await insertAudit(tx, now, key, call, decided.outcome, decided.errorCode, micros, "none", null, null, null);
      return { kind: "refused", outcome: decided.outcome, auditId, remainingMicros: 0 };
    }
    const left = decided.left;

    let carried: { audit_id: number; reserved_micros: number; spend_day: string } | null = null;
    if (guard) {
      if (prior && n(prior.expires_at) > now) {
        if (prior.request_hash !== guard.requestHash) {
          return { kind: "mismatch", auditId: await insertAudit(tx, now, key, call, "invalid_request", "idempotency_key_mismatch", 0, "none", null, null, n(prior.audit_id)) };
        }
        if (prior.state === "completed") {
          const answer: StoredAnswer = { status: n(prior.status), headers: JSON.parse(prior.headers ?? "[]"), body: prior.body ? new Uint8Array(prior.body) : new Uint8Array() };
          const auditId = await insertAudit(tx, now, key, call, "replayed", null, 0, "none", null, n(prior.status), n(prior.audit_id));
          return { kind: "replay", answer, auditId, remainingMicros: left };
        }
        const stale = prior.state === "in_flight" && now - n(prior.updated_at) > guard.staleAfterMs;
        if (prior.state === "in_flight" && !stale) return { kind: "in_flight" };
        if (guard.vendorDedupes) carried = { audit_id: n(prior.audit_id), reserved_micros: n(prior.reserved_micros), spend_day: prior.spend_day };
      }
    }

    if (carried) {
      const retryAuditId = await insertAudit(tx, now, key, call, "forwarded", null, 0, "none", day, null, carried.audit_id);
      await tx`UPDATE idempotency_records SET state = 'in_flight', updated_at = ${now} WHERE key_id = ${key.id} AND idem_key = ${guard!.idemKey}`;
      const holds = await tx`SELECT budget_id, day, micros FROM budget_reservations WHERE audit_id = ${carried.audit_id} ORDER BY budget_id`;
      return {
        kind: "reserved",
        reservation: {
          auditId: carried.audit_id,
          keyId: key.id,
          day: carried.spend_day,
          micros: carried.reserved_micros,
          remainingMicros: left,
          retryAuditId,
          guard,
          budgets: holds.map((h: any) => ({ budgetId: h.budget_id, day: h.day, micros: n(h.micros) })),
        },
      };
    }
    if (decided.kind === "cap_hit") {
      const auditId = await insertAudit(tx, now, key, call, "cap_hit", "cap_exceeded", micros, "none", day, null, null);
      if (await this.alerts?.hit(tx, { kind: "key", id: key.id, label: key.agent_run_label }, decided.heldMicros, micros, cap.dailyCapMicros, day, now)) queue();
      return { kind: "refused", outcome: "cap_hit", auditId, remainingMicros: left, capScope: { kind: "key" } };
    }

    const live = await lockBudgets(tx, budgetIds, day);
    const pooled = Math.min(left, ...live.map(budgetLeft));
    const full = live.find((b) => micros > budgetLeft(b));
    if (full) {
      const auditId = await insertAudit(tx, now, key, call, "cap_hit", "budget_cap_exceeded", micros, "none", day, null, null);
      const capScope: CapScope = { kind: "budget", budgetId: full.id, name: full.name };
      const scope = { kind: "budget" as const, id: full.id, name: full.name, labelPrefix: full.label_prefix };
      if (await this.alerts?.hit(tx, scope, full.spent_micros + full.reserved_micros, micros, full.daily_cap_micros, day, now)) queue();
      return { kind: "refused", outcome: "cap_hit", auditId, remainingMicros: pooled, capScope };
    }
    // The writes, pipelined: independent of each other, all under the locks taken above.
    const writes: Promise<unknown>[] = [];
    if (micros > 0) {
      writes.push(
        tx`INSERT INTO key_spend_days (key_id, day, reserved_micros) VALUES (${key.id}, ${day}, ${micros})
           ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = key_spend_days.reserved_micros + EXCLUDED.reserved_micros`,
        tx`UPDATE vault_keys SET reserved_total_micros = reserved_total_micros + ${micros} WHERE id = ${key.id}`,
      );
    }
    const auditId = await Promise.all([insertAudit(tx, now, key, call, "forwarded", null, micros, micros > 0 ? "reserved" : "none", day, null, null), ...writes]).then(([id]) => id as number);
    const holds: BudgetHold[] = micros > 0 ? live.map((b) => ({ budgetId: b.id, day, micros })) : [];
    const after: Promise<unknown>[] = holds.map(async (h) => {
      const [row] = await tx`UPDATE budget_spend_days SET reserved_micros = reserved_micros + ${micros}
                              WHERE budget_id = ${h.budgetId} AND day = ${day} RETURNING spent_micros + reserved_micros AS held`;
      const cap = live.find((b) => b.id === h.budgetId)!.daily_cap_micros;
      // Checked on the same locked row a moment ago: a failure here is a ledger bug, and throwing rolls the call back.
      if (n(row?.held) > cap) throw new Error(`ledger invariant broken: budget ${h.budgetId} would hold ${row?.held} > cap ${cap}`);
      await tx`INSERT INTO budget_reservations (audit_id, budget_id, day, micros) VALUES (${auditId}, ${h.budgetId}, ${day}, ${micros})`;
    });
    if (guard) {
      after.push(tx`INSERT INTO idempotency_records (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, updated_at, expires_at)
               VALUES (${key.id}, ${guard.idemKey}, ${guard.requestHash}, 'in_flight', ${auditId}, ${micros}, ${day}, ${now}, ${now + guard.ttlMs})
               ON CONFLICT (key_id, idem_key) DO UPDATE SET request_hash = EXCLUDED.request_hash, state = 'in_flight', audit_id = EXCLUDED.audit_id,
                 reserved_micros = EXCLUDED.reserved_micros, spend_day = EXCLUDED.spend_day, status = NULL, headers = NULL, body = NULL,
                 updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at`);
    }
    await Promise.all(after);
    return { kind: "reserved", reservation: { auditId, keyId: key.id, day, micros, remainingMicros: pooled - micros, retryAuditId: null, guard, budgets: holds } };
  }

  settle(r: Reservation, s: Settlement, answer: StoredAnswer | null, produced?: PricedObject | null): Promise<void> {
    return this.write(r.keyId, { kind: "finish", r, s, state: "settled", errorCode: null, produced: produced ?? null, answer }, async (tx, queue) => {
      const spent = await finish(tx, r, s, s.actualMicros, "settled", answer);
      if (this.alerts && s.actualMicros > 0 && (await this.alerts.spent(tx, spent, r.day, Date.now()))) queue();
      if (produced) {
        const o = produced;
        await tx`INSERT INTO priced_objects (key_id, object_id, kind, amount, currency, counted_micros, updated_at)
                 VALUES (${r.keyId}, ${o.objectId}, ${o.kind}, ${o.amount}, ${o.currency}, ${o.countedMicros}, ${Date.now()})
                 ON CONFLICT (key_id, object_id) DO UPDATE SET kind = EXCLUDED.kind, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
                   counted_micros = EXCLUDED.counted_micros, updated_at = EXCLUDED.updated_at`;
      }
    });
  }

  release(r: Reservation, s: Settlement, answer: StoredAnswer | null): Promise<void> {
    return this.write(r.keyId, { kind: "finish", r, s, state: "released", errorCode: null, produced: null, answer }, async (tx) => void (await finish(tx, r, s, 0, "released", answer)));
  }

  keepUnsettled(r: Reservation, s: Settlement, errorCode: string): Promise<void> {
    return this.write(r.keyId, { kind: "finish", r, s, state: "unsettled", errorCode, produced: null, answer: null }, async (tx) => {
      await finishAudit(tx, r.auditId, "upstream_error", "unsettled", null, s, s.vendorObjectId, errorCode);
      if (r.retryAuditId !== null) await finishAudit(tx, r.retryAuditId, "upstream_error", "none", 0, s, null, errorCode);
      if (r.guard) await tx`UPDATE idempotency_records SET state = 'unknown', updated_at = ${Date.now()} WHERE key_id = ${r.keyId} AND idem_key = ${r.guard.idemKey}`;
    });
  }
}

/**
 * The day rows of these (share-locked) budgets, locked in id order. The rows are created first
 * (a no-op once they exist) so that there is a row to lock even on a budget's first call today.
 */
async function lockBudgets(tx: Tx, ids: string[], day: string): Promise<LiveBudget[]> {
  if (ids.length === 0) return [];
  await tx`INSERT INTO budget_spend_days (budget_id, day) SELECT unnest(${ids}::text[]), ${day} ORDER BY 1 ON CONFLICT DO NOTHING`;
  const rows = await tx`
    SELECT b.id, b.name, b.label_prefix, b.daily_cap_micros, d.spent_micros, d.reserved_micros
      FROM budget_spend_days d JOIN budgets b ON b.id = d.budget_id
     WHERE d.day = ${day} AND d.budget_id = ANY(${ids}::text[])
     ORDER BY d.budget_id FOR UPDATE OF d`;
  return rows.map((r: any) => ({ id: r.id, name: r.name, label_prefix: r.label_prefix, daily_cap_micros: n(r.daily_cap_micros), spent_micros: n(r.spent_micros), reserved_micros: n(r.reserved_micros) }));
}

/** Settles or releases; returns how today's settled spend of the key and its budgets moved (for alerts). */
async function finish(tx: Tx, r: Reservation, s: Settlement, actual: number, state: "settled" | "released", answer: StoredAnswer | null): Promise<SpendChange[]> {
  const changes: SpendChange[] = [];
  const money = r.micros > 0 || actual > 0;
  // Pipelined behind the money updates (queued first, below): the audit row and the stored answer.
  const tailWrites = (): Promise<unknown> => {
    const w: Promise<unknown>[] = [finishAudit(tx, r.auditId, "forwarded", state, actual, s, s.vendorObjectId, null)];
    if (r.retryAuditId !== null) w.push(finishAudit(tx, r.retryAuditId, "forwarded", "none", 0, s, s.vendorObjectId, null));
    if (r.guard) {
      w.push(
        answer
          ? tx`UPDATE idempotency_records SET state = 'completed', status = ${answer.status}, headers = ${JSON.stringify(answer.headers)}, body = ${Buffer.from(answer.body)}, updated_at = ${Date.now()}
                WHERE key_id = ${r.keyId} AND idem_key = ${r.guard.idemKey}`
          : tx`DELETE FROM idempotency_records WHERE key_id = ${r.keyId} AND idem_key = ${r.guard.idemKey}`,
      );
    }
    return Promise.all(w);
  };
  let tail: Promise<unknown> = Promise.resolve();
  if (!money) tail = tailWrites();
  if (money) {
    // Pipelined, in this order on the connection: key row, key day row, budget day rows by id —
    // the same lock order as admission.
    const holds = [...r.budgets].sort((a, b) => (a.budgetId < b.budgetId ? -1 : 1));
    const moved = Promise.all([
      tx`UPDATE vault_keys SET reserved_total_micros = reserved_total_micros - ${r.micros}, spent_total_micros = spent_total_micros + ${actual}
          WHERE id = ${r.keyId} RETURNING daily_cap_micros, agent_run_label`,
      tx`UPDATE key_spend_days SET reserved_micros = reserved_micros - ${r.micros}, spent_micros = spent_micros + ${actual}
          WHERE key_id = ${r.keyId} AND day = ${r.day} RETURNING spent_micros`,
      ...holds.map(
        (h) => tx`UPDATE budget_spend_days d SET reserved_micros = d.reserved_micros - ${h.micros}, spent_micros = d.spent_micros + ${actual}
                    FROM budgets b WHERE b.id = d.budget_id AND d.budget_id = ${h.budgetId} AND d.day = ${h.day}
                  RETURNING d.spent_micros, b.name, b.label_prefix, b.daily_cap_micros`,
      ),
    ]);
    tail = tailWrites();
    tail.catch(() => {}); // awaited below; a failure of `moved` first must not leave it unhandled
    const [[k], [d], ...budgetRows] = await moved;
    if (k && d) changes.push({ scope: { kind: "key", id: r.keyId, label: k.agent_run_label }, before: n(d.spent_micros) - actual, after: n(d.spent_micros), capMicros: n(k.daily_cap_micros) });
    budgetRows.forEach(([b], i) => {
      const h = holds[i]!;
      if (b) changes.push({ scope: { kind: "budget", id: h.budgetId, name: b.name, labelPrefix: b.label_prefix }, before: n(b.spent_micros) - actual, after: n(b.spent_micros), capMicros: n(b.daily_cap_micros) });
    });
  }
  await tail;
  return changes;
}

async function insertAudit(
  tx: Tx,
  now: number,
  key: Pick<LiveKey, "id" | "agent_run_label"> | null,
  call: CallFacts,
  outcome: AuditOutcome,
  errorCode: string | null,
  estimateMicros: number,
  ledgerState: string,
  day: string | null,
  vendorStatus: number | null,
  replayOf: number | null,
): Promise<number> {
  const [row] = await tx`
    INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, error_code,
                           estimated_micros, ledger_state, spend_day, idempotency_key, vendor_status, replay_of)
    VALUES (${now}, ${key?.id ?? null}, ${key?.agent_run_label ?? null}, ${call.vendor}, ${call.method}, ${call.path}, ${outcome}, ${errorCode},
            ${estimateMicros}, ${ledgerState}, ${day}, ${call.idempotencyKey}, ${vendorStatus}, ${replayOf})
    RETURNING id`;
  return Number(row.id);
}
