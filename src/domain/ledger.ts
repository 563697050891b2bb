import type { Database, Statement } from "bun:sqlite";
import { remainingMicros } from "./keys.ts";
import { utcDay } from "./time.ts";

/**
 * The spend ledger. Every proxied call is admitted by one IMMEDIATE SQLite
 * transaction that re-reads the key, checks the caps and reserves the estimate;
 * SQLite's single writer lock makes that atomic across threads, processes and
 * crashes, so settled + reserved never exceeds a cap. After the vendor answers,
 * a second transaction settles, releases or leaves the reservation open.
 *
 * This file uses bun:sqlite prepared statements directly: it is the hot path
 * and both transactions must be a handful of indexed statements.
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
  expires_at: number;
  revoked_at: number | null;
}

export interface CallFacts {
  vendor: string;
  method: string;
  path: string;
  idempotencyKey: string | null;
}

export interface Reservation {
  auditId: number;
  keyId: string;
  day: string;
  micros: number;
  /** What may still be spent today after this reservation. */
  remainingMicros: number;
}

export type Admission =
  | ({ ok: true } & Reservation)
  | { ok: false; outcome: "revoked" | "expired" | "cap_hit"; auditId: number; remainingMicros: number };

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
}

export class Ledger {
  private readonly q: Record<string, Statement<any, any[]>>;
  readonly admit: (key: LiveKey, call: CallFacts, micros: number, now: number) => Admission;
  readonly settle: (r: Reservation, s: Settlement) => void;
  readonly release: (r: Reservation, s: Settlement) => void;

  constructor(private readonly sqlite: Database) {
    const p = (s: string) => sqlite.prepare(s);
    this.q = {
      keyByHash: p(
        `SELECT id, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, dedupe_window_ms,
                require_idempotency_key, allow_unpriced, expires_at, revoked_at
           FROM vault_keys WHERE key_hash = ?`,
      ),
      capRow: p(
        `SELECT revoked_at, expires_at, daily_cap_micros, total_cap_micros, spent_total_micros, reserved_total_micros
           FROM vault_keys WHERE id = ?`,
      ),
      day: p(`SELECT spent_micros, reserved_micros FROM key_spend_days WHERE key_id = ? AND day = ?`),
      reserveDay: p(
        `INSERT INTO key_spend_days (key_id, day, reserved_micros) VALUES (?, ?, ?)
         ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros`,
      ),
      reserveTotal: p(`UPDATE vault_keys SET reserved_total_micros = reserved_total_micros + ? WHERE id = ?`),
      settleDay: p(
        `UPDATE key_spend_days SET reserved_micros = reserved_micros - ?, spent_micros = spent_micros + ?
          WHERE key_id = ? AND day = ?`,
      ),
      settleTotal: p(
        `UPDATE vault_keys SET reserved_total_micros = reserved_total_micros - ?, spent_total_micros = spent_total_micros + ?
          WHERE id = ?`,
      ),
      insertAudit: p(
        `INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, error_code,
                                estimated_micros, ledger_state, spend_day, idempotency_key, vendor_status, latency_ms, replay_of)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      finishAudit: p(
        `UPDATE audit_log SET outcome = ?, ledger_state = ?, settled_micros = ?, vendor_status = ?,
                              vendor_request_id = ?, vendor_object_id = ?, latency_ms = ?, error_code = ?
          WHERE id = ?`,
      ),
      knownObject: p(`SELECT 1 FROM audit_log WHERE vendor_object_id = ? LIMIT 1`),
    };

    this.admit = (key, call, micros, now) =>
      sqlite.transaction(() => this.admitInTransaction(key, call, micros, now)).immediate() as Admission;
    this.settle = (r, s) => sqlite.transaction(() => this.finish(r, s, s.actualMicros, "forwarded", "settled", null)).immediate();
    this.release = (r, s) => sqlite.transaction(() => this.finish(r, s, 0, "forwarded", "released", null)).immediate();
  }

  findKeyByHash(hash: string): LiveKey | null {
    return this.q.keyByHash!.get(hash) as LiveKey | null;
  }

  createdThroughKeybrake(objectId: string): boolean {
    return this.q.knownObject!.get(objectId) !== null;
  }

  /** A refusal made before any money is at stake: one audit row, nothing reserved. */
  recordRefusal(
    key: Pick<LiveKey, "id" | "agent_run_label"> | null,
    call: CallFacts,
    outcome: AuditOutcome,
    errorCode: string,
    now: number,
    estimateMicros = 0,
  ): number {
    return this.insertAudit(now, key, call, outcome, errorCode, estimateMicros, "none", null, null, null);
  }

  /** Vendor outcome unknown (timeout, 5xx, lost connection): the money may have moved, so the reservation stays. */
  keepUnsettled(r: Reservation, s: Settlement, errorCode: string | null): void {
    this.q.finishAudit!.run("upstream_error", "unsettled", null, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, errorCode, r.auditId);
  }

  private admitInTransaction(key: LiveKey, call: CallFacts, micros: number, now: number): Admission {
    const cap = this.q.capRow!.get(key.id) as CapRow;
    const day = utcDay(now);
    if (cap.revoked_at !== null || cap.expires_at <= now) {
      const outcome = cap.revoked_at !== null ? "revoked" : "expired";
      const auditId = this.insertAudit(now, key, call, outcome, outcome === "revoked" ? "key_revoked" : "key_expired", micros, "none", null, null, null);
      return { ok: false, outcome, auditId, remainingMicros: 0 };
    }
    const today = this.q.day!.get(key.id, day) as { spent_micros: number; reserved_micros: number } | null;
    const left = remainingMicros(
      {
        dailyCapMicros: cap.daily_cap_micros,
        totalCapMicros: cap.total_cap_micros,
        spentTotalMicros: cap.spent_total_micros,
        reservedTotalMicros: cap.reserved_total_micros,
      },
      today?.spent_micros ?? 0,
      today?.reserved_micros ?? 0,
    );
    if (micros > left) {
      const auditId = this.insertAudit(now, key, call, "cap_hit", "cap_exceeded", micros, "none", day, null, null);
      return { ok: false, outcome: "cap_hit", auditId, remainingMicros: left };
    }
    if (micros > 0) {
      this.q.reserveDay!.run(key.id, day, micros);
      this.q.reserveTotal!.run(micros, key.id);
    }
    const auditId = this.insertAudit(now, key, call, "forwarded", null, micros, micros > 0 ? "reserved" : "none", day, null, null);
    return { ok: true, auditId, keyId: key.id, day, micros, remainingMicros: left - micros };
  }

  private finish(r: Reservation, s: Settlement, actual: number, outcome: AuditOutcome, state: string, errorCode: string | null): void {
    if (r.micros > 0 || actual > 0) {
      this.q.settleDay!.run(r.micros, actual, r.keyId, r.day);
      this.q.settleTotal!.run(r.micros, actual, r.keyId);
    }
    this.q.finishAudit!.run(outcome, state, actual, s.vendorStatus, s.vendorRequestId, s.vendorObjectId, s.latencyMs, errorCode, r.auditId);
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
      null,
      replayOf,
    );
    return Number(res.lastInsertRowid);
  }
}
