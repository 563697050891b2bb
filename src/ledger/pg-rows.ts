import type { SQL } from "bun";
import type { LiveKey, Settlement } from "../domain/ledger.ts";
import { remainingMicros } from "../domain/keys.ts";

/**
 * What a ledger transaction on PostgreSQL reads under the key's row lock, and what admission
 * decides on it. The one-at-a-time path (admitIn) and the batched path (pg-batch.ts) both call
 * these, so a call is checked the same way whichever path its transaction took.
 */

export const n = (v: unknown): number => (v === null || v === undefined ? 0 : Number(v));
export const nn = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** The key row as admission sees it once locked. */
export interface KeyState {
  revokedAt: number | null;
  expiresAt: number;
  dailyCapMicros: number;
  totalCapMicros: number | null;
  spentTotalMicros: number;
  reservedTotalMicros: number;
  label: string;
}

/** One of the key's day rows (zeros when it does not exist yet). */
export interface DayState {
  spent: number;
  reserved: number;
}

/** The key row, locked: the lock every exact decision rests on (PgLedger's class comment). Undefined if the key is gone. */
export async function lockKey(tx: SQL, keyId: string): Promise<KeyState | undefined> {
  const [r] = await tx`SELECT revoked_at, expires_at, daily_cap_micros, total_cap_micros, spent_total_micros, reserved_total_micros, agent_run_label
                         FROM vault_keys WHERE id = ${keyId} FOR UPDATE`;
  if (!r) return undefined;
  return {
    revokedAt: nn(r.revoked_at),
    expiresAt: n(r.expires_at),
    dailyCapMicros: n(r.daily_cap_micros),
    totalCapMicros: nn(r.total_cap_micros),
    spentTotalMicros: n(r.spent_total_micros),
    reservedTotalMicros: n(r.reserved_total_micros),
    label: r.agent_run_label,
  };
}

export const dayState = (row: { spent_micros?: unknown; reserved_micros?: unknown } | undefined): DayState => ({ spent: n(row?.spent_micros), reserved: n(row?.reserved_micros) });

/**
 * Live budgets over this key's label and vendor, share-locked so a PATCH of one waits for the call.
 * `starts_with` is exactly "starts with": no LIKE wildcards, no case folding (as substr() on SQLite).
 */
export async function budgetIdsOver(tx: SQL, key: Pick<LiveKey, "vendor" | "agent_run_label">): Promise<string[]> {
  const rows = await tx`SELECT id FROM budgets WHERE deleted_at IS NULL AND (vendor IS NULL OR vendor = ${key.vendor})
                          AND starts_with(${key.agent_run_label}, label_prefix) ORDER BY id FOR SHARE`;
  return rows.map((b: { id: string }) => b.id);
}

/** What the key's own row and today's row decide for an admission of `micros`, before repeats and budgets are looked at. */
export type KeyDecision =
  | { kind: "closed"; outcome: "revoked" | "expired"; errorCode: "key_revoked" | "key_expired" }
  | { kind: "cap_hit"; left: number; heldMicros: number }
  | { kind: "fits"; left: number };

export function decideOnKey(k: KeyState, today: DayState, micros: number, now: number): KeyDecision {
  if (k.revokedAt !== null) return { kind: "closed", outcome: "revoked", errorCode: "key_revoked" };
  if (k.expiresAt <= now) return { kind: "closed", outcome: "expired", errorCode: "key_expired" };
  const left = remainingMicros(k, today.spent, today.reserved);
  return micros > left ? { kind: "cap_hit", left, heldMicros: today.spent + today.reserved } : { kind: "fits", left };
}

/** An audit row's outcome once its call is answered (or not), by its primary key: one row, probed whatever the statistics say. */
export async function finishAudit(tx: SQL, id: number, outcome: string, ledgerState: string, settled: number | null, s: Settlement, objectId: string | null, errorCode: string | null): Promise<void> {
  await tx`UPDATE audit_log SET outcome = ${outcome}, ledger_state = ${ledgerState}, settled_micros = ${settled}, vendor_status = ${s.vendorStatus},
                                vendor_request_id = ${s.vendorRequestId}, vendor_object_id = ${objectId}, latency_ms = ${s.latencyMs}, error_code = ${errorCode}
            WHERE id = ${id}`;
}
