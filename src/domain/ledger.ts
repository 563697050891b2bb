import type { Database, Statement } from "bun:sqlite";
import { WalSync } from "../db/wal-sync.ts";
import type { PricedObject } from "../vendors/types.ts";
import type { CapAlerts } from "./alerts.ts";
import { BudgetLedger, budgetLeft, type BudgetHold } from "./budgets.ts";
import { remainingMicros } from "./keys.ts";
import { utcDay } from "./time.ts";
import type { LedgerStats, SpendLedger } from "../ledger/types.ts";

/**
 * The spend ledger. Every proxied call is admitted by one IMMEDIATE SQLite
 * transaction that re-reads the key, checks the caps, looks up the call's
 * idempotency record and reserves the estimate; SQLite's single writer lock
 * makes that atomic across threads, processes and crashes, so settled +
 * reserved never exceeds a cap and one logical call never reserves twice.
 * After the vendor answers, a second transaction settles, releases or leaves
 * the reservation open, and stores the answer for replays.
 *
 * Group commit: a commit costs more than everything else a call does here (a WAL
 * write, and now and then a checkpoint's fsync), so the ledger writes that
 * arrive in one event-loop turn share one IMMEDIATE transaction, each in its
 * own savepoint. Each still runs in order against the state the ones before it
 * left, under the write lock, so the cap logic is exactly that of one call per
 * transaction; a call's reservation is committed, and on disk, before it is forwarded; its
 * settlement is queued before its answer is returned and commits in the next
 * group commit (Forwarder.afterAnswer in src/proxy/forward.ts says why that is safe).
 *
 * This file uses bun:sqlite prepared statements directly: it is the hot path
 * and every write must be a handful of indexed statements.
 */

export type AuditOutcome =
  | "forwarded"
  | "cap_hit"
  | "endpoint_denied"
  | "revoked"
  | "expired"
  | "invalid_key"
  | "invalid_request"
  | "replayed"
  | "upstream_error";

/** A key as the proxy needs it; read by hash on every call so a revocation is seen at once by every process. */
export interface LiveKey {
  id: string;
  vendor: string;
  daily_cap_micros: number;
  total_cap_micros: number | null;
  allowed_endpoints: string;
  agent_run_label: string;
  dedupe_window_ms: number | null;
  require_idempotency_key: number;
  allow_unpriced: number;
  /** JSON list of connected accounts this key may name in Stripe-Account, or null. */
  stripe_accounts: string | null;
  expires_at: number;
  revoked_at: number | null;
}

export interface CallFacts {
  vendor: string;
  method: string;
  path: string;
  idempotencyKey: string | null;
}

/** How a call is recognised as a repeat: the client's Idempotency-Key, or its own hash inside a dedupe window. */
export interface RepeatGuard {
  idemKey: string;
  requestHash: string;
  ttlMs: number;
  /** The vendor dedupes by this key itself, so a retry after an unknown outcome may be forwarded on the first reservation. */
  vendorDedupes: boolean;
  /** An in-flight record older than this is from a process that died: its outcome is unknown. */
  staleAfterMs: number;
}

export interface Reservation {
  auditId: number;
  keyId: string;
  day: string;
  micros: number;
  /** What may still be spent today after this reservation. */
  remainingMicros: number;
  /** Set when this attempt carries over an earlier attempt's reservation: this attempt's own audit row. */
  retryAuditId: number | null;
  guard: RepeatGuard | null;
  /** The budgets this call holds money on (§7); settlement and release adjust exactly these. */
  budgets: BudgetHold[];
}

/** Which limit refused a call: the key's own caps, or a pooled budget (named). */
export type CapScope = { kind: "key" } | { kind: "budget"; budgetId: string; name: string };

export interface StoredAnswer {
  status: number;
  headers: [string, string][];
  body: Uint8Array;
}

export type Admission =
  | { kind: "reserved"; reservation: Reservation }
  | { kind: "refused"; outcome: "revoked" | "expired" | "cap_hit"; auditId: number; remainingMicros: number; capScope?: CapScope }
  | { kind: "replay"; answer: StoredAnswer; auditId: number; remainingMicros: number }
  | { kind: "mismatch"; auditId: number }
  /** The first attempt is still in flight: wait and ask again. Nothing was written. */
  | { kind: "in_flight" };

export interface Settlement {
  vendorStatus: number | null;
  actualMicros: number;
  vendorRequestId: string | null;
  vendorObjectId: string | null;
  latencyMs: number;
}

interface CapRow {
  revoked_at: number | null;
  expires_at: number;
  daily_cap_micros: number;
  total_cap_micros: number | null;
  spent_total_micros: number;
  reserved_total_micros: number;
  /** Today's row of the key (0 before its first call of the day). */
  spent_today: number;
  reserved_today: number;
}

interface KeyAfterSettle {
  daily_cap_micros: number;
  agent_run_label: string;
}

interface RepeatRow {
  request_hash: string;
  state: "in_flight" | "completed" | "unknown";
  audit_id: number;
  reserved_micros: number;
  spend_day: string;
  status: number | null;
  headers: string | null;
  body: Uint8Array | null;
  updated_at: number;
  expires_at: number;
}

interface PendingWrite {
  write: () => unknown;
  /**
   * Set on an admission that may reserve money: given what the write returned, says whether it did, so a
   * call is about to be forwarded on it and it must resolve only once its commit would survive power loss.
   */
  durable: ((value: any) => boolean) | null;
  resolve: (value: any) => void;
  reject: (error: unknown) => void;
}

const reservesMoney = (a: Admission) => a.kind === "reserved";

export class Ledger implements SpendLedger {
  private readonly q: Record<string, Statement<any, any[]>>;
  private pending: PendingWrite[] = [];
  private readonly commitBatch: (batch: PendingWrite[], results: { ok: boolean; value: unknown }[]) => void;
  private readonly budgets: BudgetLedger;
  private readonly walSync: WalSync;
  /** Commits and writes so far (fsyncs are WalSync's own count). */
  private readonly counts = { commits: 0, writes: 0 };

  /** `alerts` raises cap.threshold and cap.hit inside the transaction that moved the money. */
  constructor(
    private readonly sqlite: Database,
    private readonly alerts: CapAlerts | null = null,
  ) {
    this.budgets = new BudgetLedger(sqlite);
    this.walSync = new WalSync(sqlite.filename);
    const close = sqlite.close.bind(sqlite);
    sqlite.close = (throwOnError?: boolean) => {
      close(throwOnError);
      this.walSync.close(); // after the database: its last commit may still be syncing
    };
    const p = (s: string) => sqlite.prepare(s);
    this.q = {
      keyByHash: p(
        `SELECT id, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, dedupe_window_ms,
                require_idempotency_key, allow_unpriced, stripe_accounts, expires_at, revoked_at
           FROM vault_keys WHERE key_hash = ?`,
      ),
      // The key's caps and totals with today's row, in one statement. Scalar subqueries, not a LEFT JOIN:
      // the same two primary-key probes, but bun:sqlite ran the join in 7.3 µs and these in 1.1–1.5.
      capRow: p(
        `SELECT k.revoked_at, k.expires_at, k.daily_cap_micros, k.total_cap_micros, k.spent_total_micros, k.reserved_total_micros,
                coalesce((SELECT spent_micros FROM key_spend_days WHERE key_id = k.id AND day = ?1), 0) AS spent_today,
                coalesce((SELECT reserved_micros FROM key_spend_days WHERE key_id = k.id AND day = ?1), 0) AS reserved_today
           FROM vault_keys k WHERE k.id = ?2`,
      ),
      reserveDay: p(
        `INSERT INTO key_spend_days (key_id, day, reserved_micros) VALUES (?, ?, ?)
         ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros`,
      ),
      reserveTotal: p(`UPDATE vault_keys SET reserved_total_micros = reserved_total_micros + ? WHERE id = ?`),
      // RETURNING what the cap alerts need, so a settlement reads nothing back.
      settleDay: p(
        `UPDATE key_spend_days SET reserved_micros = reserved_micros - ?, spent_micros = spent_micros + ?
          WHERE key_id = ? AND day = ? RETURNING spent_micros`,
      ),
      settleTotal: p(
        `UPDATE vault_keys SET reserved_total_micros = reserved_total_micros - ?, spent_total_micros = spent_total_micros + ?
          WHERE id = ? RETURNING daily_cap_micros, agent_run_label`,
      ),
      insertAudit: p(
        `INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, error_code,
                                estimated_micros, ledger_state, spend_day, idempotency_key, vendor_status, replay_of)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      // A first attempt settled or released: its outcome is already "forwarded" and error_code NULL, so
      // neither is in the SET list and the audit_outcome index is not rewritten by the settlement.
      settleAudit: p(
        `UPDATE audit_log SET ledger_state = ?, settled_micros = ?, vendor_status = ?,
                              vendor_request_id = ?, vendor_object_id = ?, latency_ms = ?
          WHERE id = ?`,
      ),
      finishAudit: p(
        `UPDATE audit_log SET outcome = ?, ledger_state = ?, settled_micros = ?, vendor_status = ?,
                              vendor_request_id = ?, vendor_object_id = ?, latency_ms = ?, error_code = ?
          WHERE id = ?`,
      ),
      pricedObject: p(
        `SELECT object_id AS objectId, kind, amount, currency, counted_micros AS countedMicros
           FROM priced_objects WHERE key_id = ? AND object_id = ?`,
      ),
      putPricedObject: p(
        `INSERT OR REPLACE INTO priced_objects (key_id, object_id, kind, amount, currency, counted_micros, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      repeat: p(
        `SELECT request_hash, state, audit_id, reserved_micros, spend_day, status, headers, body, updated_at, expires_at
           FROM idempotency_records WHERE key_id = ? AND idem_key = ?`,
      ),
      putRepeat: p(
        `INSERT OR REPLACE INTO idempotency_records
           (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, updated_at, expires_at)
         VALUES (?, ?, ?, 'in_flight', ?, ?, ?, ?, ?)`,
      ),
      markRepeat: p(`UPDATE idempotency_records SET state = ?, updated_at = ? WHERE key_id = ? AND idem_key = ?`),
      answerRepeat: p(
        `UPDATE idempotency_records SET state = 'completed', status = ?, headers = ?, body = ?, updated_at = ?
          WHERE key_id = ? AND idem_key = ?`,
      ),
      dropRepeat: p(`DELETE FROM idempotency_records WHERE key_id = ? AND idem_key = ?`),
      pruneRepeats: p(`DELETE FROM idempotency_records WHERE expires_at <= ?`),
    };

    // One savepoint per write: a write that throws is undone alone; the rest of the batch commits.
    const savepoint = sqlite.transaction((write: () => unknown) => write());
    const batchTx = sqlite.transaction((batch: PendingWrite[], results: { ok: boolean; value: unknown }[]) => {
      this.alerts?.newTransaction();
      for (const w of batch) {
        try {
          results.push({ ok: true, value: savepoint(w.write) });
        } catch (error) {
          results.push({ ok: false, value: error });
        }
      }
    });
    this.commitBatch = (batch, results) => batchTx.immediate(batch, results);
  }

  /** Admits a call: re-checks the key, recognises repeats, checks the caps and reserves; committed when it resolves. */
  admit(key: LiveKey, call: CallFacts, micros: number, now: number, guard: RepeatGuard | null): Promise<Admission> {
    // A refusal, replay or mismatch forwards nothing, so it waits for no fsync (a lost refusal loses only its audit row).
    return this.write(() => this.admitInTransaction(key, call, micros, now, guard), micros > 0 ? reservesMoney : null);
  }

  /** 2xx: the call cost `actualMicros`; the answer is kept for replays; what a priced call produced is recorded in the same transaction. */
  settle(r: Reservation, s: Settlement, answer: StoredAnswer | null, produced?: PricedObject | null): Promise<void> {
    return this.write(() => {
      this.finish(r, s, s.actualMicros, "settled", answer);
      if (produced) {
        const o = produced;
        this.q.putPricedObject!.run(r.keyId, o.objectId, o.kind, o.amount, o.currency, o.countedMicros, Date.now());
      }
    });
  }

  /** Vendor 4xx: no money moved; the answer is kept for replays (a retry gets the same refusal, like the vendor's own idempotency). */
  release(r: Reservation, s: Settlement, answer: StoredAnswer | null): Promise<void> {
    return this.write(() => this.finish(r, s, 0, "released", answer));
  }

  /** Timeout, lost connection or 5xx: the money may have moved, so the reservation stays and a retry carries it over. */
  keepUnsettled(r: Reservation, s: Settlement, errorCode: string): Promise<void> {
    return this.write(() => {
      this.q.finishAudit!.run("upstream_error", "unsettled", null, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, errorCode, r.auditId);
      if (r.retryAuditId !== null) {
        this.q.finishAudit!.run("upstream_error", "none", 0, s.vendorStatus, s.vendorRequestId, null, s.latencyMs, errorCode, r.retryAuditId);
      }
      if (r.guard) this.q.markRepeat!.run("unknown", Date.now(), r.keyId, r.guard.idemKey);
    });
  }

  /** A refusal made before any money is at stake: one audit row, nothing reserved. */
  recordRefusal(key: Pick<LiveKey, "id" | "agent_run_label"> | null, call: CallFacts, outcome: AuditOutcome, errorCode: string, now: number): Promise<number> {
    return this.write(() => this.insertAudit(now, key, call, outcome, errorCode, 0, "none", null, null, null));
  }

  /** Queues a write for the next group commit, which runs once this event-loop turn is done. */
  private write<T>(write: () => T, durable: ((value: T) => boolean) | null = null): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.pending.push({ write, durable, resolve, reject }) === 1) setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = [];
    const results: { ok: boolean; value: unknown }[] = [];
    try {
      this.commitBatch(batch, results);
    } catch (error) {
      for (const w of batch) w.reject(error); // the commit itself failed: nothing of the batch was written
      return;
    }
    // synchronous=NORMAL survives a crash of the process, not of the machine. A write that holds a
    // reservation about to be forwarded resolves only once its WAL frames are fsynced (WalSync: off the
    // event loop, shared by the commits that land meanwhile), so a power cut can never forget money the
    // vendor may then move. Everything else (settlements, refusals, releases) resolves at once: losing
    // one leaves a reservation held, the safe way.
    const durable: [PendingWrite, unknown][] = [];
    batch.forEach((w, i) => {
      const r = results[i]!;
      if (!r.ok) w.reject(r.value);
      else if (w.durable?.(r.value)) durable.push([w, r.value]);
      else w.resolve(r.value);
    });
    this.counts.commits++;
    this.counts.writes += batch.length;
    if (durable.length === 0) return;
    this.walSync.sync().then(
      () => durable.forEach(([w, value]) => w.resolve(value)),
      // Committed but maybe not durable: refused, so nothing is forwarded on it (its reservation stays held).
      (error) => durable.forEach(([w]) => w.reject(error)),
    );
  }

  stats(): LedgerStats {
    return { ...this.counts, fsyncs: this.walSync.syncs };
  }

  findKeyByHash(hash: string): LiveKey | null {
    return this.q.keyByHash!.get(hash) as LiveKey | null;
  }

  /** What a priced call of this key produced for this object; never another key's, never an id merely seen in a response. */
  pricedObject(keyId: string, objectId: string): PricedObject | null {
    return (this.q.pricedObject!.get(keyId, objectId) as PricedObject | null) ?? null;
  }

  /** Forgets stored answers past their time (24 h for Idempotency-Keys, the window for dedupe). */
  pruneRepeats(now: number): number {
    return this.q.pruneRepeats!.run(now).changes;
  }

  private admitInTransaction(key: LiveKey, call: CallFacts, micros: number, now: number, guard: RepeatGuard | null): Admission {
    const day = utcDay(now);
    const cap = this.q.capRow!.get(day, key.id) as CapRow;
    if (cap.revoked_at !== null || cap.expires_at <= now) {
      const outcome = cap.revoked_at !== null ? "revoked" : "expired";
      const auditId = this.insertAudit(now, key, call, outcome, outcome === "revoked" ? "key_revoked" : "key_expired", micros, "none", null, null, null);
      return { kind: "refused", outcome, auditId, remainingMicros: 0 };
    }
    const left = remainingMicros(
      { dailyCapMicros: cap.daily_cap_micros, totalCapMicros: cap.total_cap_micros, spentTotalMicros: cap.spent_total_micros, reservedTotalMicros: cap.reserved_total_micros },
      cap.spent_today,
      cap.reserved_today,
    );

    let carried: RepeatRow | null = null;
    if (guard) {
      const prior = this.q.repeat!.get(key.id, guard.idemKey) as RepeatRow | null;
      if (prior && prior.expires_at > now) {
        if (prior.request_hash !== guard.requestHash) {
          return { kind: "mismatch", auditId: this.insertAudit(now, key, call, "invalid_request", "idempotency_key_mismatch", 0, "none", null, null, prior.audit_id) };
        }
        if (prior.state === "completed") {
          const answer = { status: prior.status!, headers: JSON.parse(prior.headers ?? "[]"), body: prior.body ?? new Uint8Array() };
          const auditId = this.insertAudit(now, key, call, "replayed", null, 0, "none", null, prior.status, prior.audit_id);
          return { kind: "replay", answer, auditId, remainingMicros: left };
        }
        const stale = prior.state === "in_flight" && now - prior.updated_at > guard.staleAfterMs;
        if (prior.state === "in_flight" && !stale) return { kind: "in_flight" };
        // Unknown outcome (or a dead process's attempt). Where the vendor dedupes by this key, forward the retry
        // on the first attempt's reservation; otherwise it is a new call and reserves anew.
        if (guard.vendorDedupes) carried = prior;
      }
    }

    if (carried) {
      const retryAuditId = this.insertAudit(now, key, call, "forwarded", null, 0, "none", day, null, carried.audit_id);
      this.q.markRepeat!.run("in_flight", now, key.id, guard!.idemKey);
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
          budgets: this.budgets.heldBy(carried.audit_id),
        },
      };
    }
    if (micros > left) {
      const auditId = this.insertAudit(now, key, call, "cap_hit", "cap_exceeded", micros, "none", day, null, null);
      this.keyCapHit(key, cap, micros, day, now);
      return { kind: "refused", outcome: "cap_hit", auditId, remainingMicros: left, capScope: { kind: "key" } };
    }
    // Every live budget over this label, read under the write lock: a budget changed a moment ago applies now.
    const live = this.budgets.matching(key.vendor, key.agent_run_label, day);
    const pooled = Math.min(left, ...live.map(budgetLeft));
    const full = live.find((b) => micros > budgetLeft(b));
    if (full) {
      const auditId = this.insertAudit(now, key, call, "cap_hit", "budget_cap_exceeded", micros, "none", day, null, null);
      this.alerts?.hit({ kind: "budget", id: full.id, name: full.name, labelPrefix: full.label_prefix }, full.spent_micros + full.reserved_micros, micros, full.daily_cap_micros, day, now);
      return { kind: "refused", outcome: "cap_hit", auditId, remainingMicros: pooled, capScope: { kind: "budget", budgetId: full.id, name: full.name } };
    }
    if (micros > 0) {
      this.q.reserveDay!.run(key.id, day, micros);
      this.q.reserveTotal!.run(micros, key.id);
    }
    const auditId = this.insertAudit(now, key, call, "forwarded", null, micros, micros > 0 ? "reserved" : "none", day, null, null);
    const holds = micros > 0 ? this.budgets.reserve(auditId, live, day, micros) : [];
    if (guard) this.q.putRepeat!.run(key.id, guard.idemKey, guard.requestHash, auditId, micros, day, now, now + guard.ttlMs);
    return { kind: "reserved", reservation: { auditId, keyId: key.id, day, micros, remainingMicros: pooled - micros, retryAuditId: null, guard, budgets: holds } };
  }

  /**
   * Settles the call's budget holds, then raises the thresholds this spend reached on its key and
   * budgets. `key` and `today` are what the key's settlement updates returned (null: no money moved).
   */
  private settleBudgetsAndAlert(r: Reservation, actual: number, now: number, key: KeyAfterSettle | null, today: { spent_micros: number } | null): void {
    const settled = this.budgets.settle(r.budgets, actual);
    if (!this.alerts || actual <= 0 || !key) return;
    const after = today?.spent_micros ?? 0;
    this.alerts.spent(
      [
        { scope: { kind: "key", id: r.keyId, label: key.agent_run_label }, before: after - actual, after, capMicros: key.daily_cap_micros },
        ...settled.map((b) => ({ scope: { kind: "budget" as const, id: b.budgetId, name: b.name, labelPrefix: b.labelPrefix }, before: b.spentBefore, after: b.spentAfter, capMicros: b.capMicros })),
      ],
      r.day,
      now,
    );
  }

  private keyCapHit(key: LiveKey, cap: CapRow, micros: number, day: string, now: number): void {
    this.alerts?.hit({ kind: "key", id: key.id, label: key.agent_run_label }, cap.spent_today + cap.reserved_today, micros, cap.daily_cap_micros, day, now);
  }

  private finish(r: Reservation, s: Settlement, actual: number, state: "settled" | "released", answer: StoredAnswer | null): void {
    let key: KeyAfterSettle | null = null;
    let today: { spent_micros: number } | null = null;
    if (r.micros > 0 || actual > 0) {
      today = this.q.settleDay!.get(r.micros, actual, r.keyId, r.day) as { spent_micros: number } | null;
      key = this.q.settleTotal!.get(r.micros, actual, r.keyId) as KeyAfterSettle;
    }
    this.settleBudgetsAndAlert(r, actual, Date.now(), key, today);
    if (r.retryAuditId === null) this.q.settleAudit!.run(state, actual, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, r.auditId);
    // A carried-over reservation's row said upstream_error until now: this retry's answer makes it forwarded.
    else this.q.finishAudit!.run("forwarded", state, actual, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, null, r.auditId);
    if (r.retryAuditId !== null) {
      this.q.finishAudit!.run("forwarded", "none", 0, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, null, r.retryAuditId);
    }
    if (r.guard) {
      const now = Date.now();
      if (answer) this.q.answerRepeat!.run(answer.status, JSON.stringify(answer.headers), answer.body, now, r.keyId, r.guard.idemKey);
      else this.q.dropRepeat!.run(r.keyId, r.guard.idemKey); // not replayable (streamed or a transient refusal): let a retry through
    }
  }

  private insertAudit(
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
  ): number {
    const res = this.q.insertAudit!.run(
      now,
      key?.id ?? null,
      key?.agent_run_label ?? null,
      call.vendor,
      call.method,
      call.path,
      outcome,
      errorCode,
      estimateMicros,
      ledgerState,
      day,
      call.idempotencyKey,
      vendorStatus,
      replayOf,
    );
    return Number(res.lastInsertRowid);
  }
}
