import { eq, gte, lt, sql, type Column, type SQL } from "drizzle-orm";
import type { AuditFilter } from "../domain/audit.ts";
import { labelCondition } from "../domain/label-filter.ts";

/**
 * The audit queries' SQL that both backends share (src/store/sqlite/audit.ts, src/store/pg/audit.ts):
 * what a filter matches and how money is totalled. Written in SQL both dialects read the same way;
 * each store passes its own drizzle table and says how it narrows by outcome.
 */

/** The audit_log columns these read, from either dialect's drizzle schema. */
export interface AuditColumns {
  id: Column;
  ts: Column;
  keyId: Column;
  /** Compared in code point order on both: SQLite's BINARY, PostgreSQL's COLLATE "C" (migrations/pg/0002). */
  agentRunLabel: Column;
  vendor: Column;
  outcome: Column;
  ledgerState: Column;
  settledMicros: Column;
  estimatedMicros: Column;
}

export interface Dialect {
  /** The outcome condition when a key or label already narrows the rows (a planner hint on SQLite). */
  narrowedOutcome: (outcome: string) => SQL;
}

/** Rows of keys issued by one token: a subquery on the (issued_by_token_id, id) index. */
const issuedByCondition = (t: AuditColumns, tokenId: string): SQL => sql`${t.keyId} IN (SELECT id FROM vault_keys WHERE issued_by_token_id = ${tokenId})`;

/** The parts of an audit filter that select rows. */
export type AuditMatch = Pick<AuditFilter, "key_id" | "issuedBy" | "label" | "vendor" | "outcome" | "since" | "until">;

/** A filter as conditions, ids below `beforeId` when given. */
export function auditConditions(t: AuditColumns, d: Dialect, f: AuditMatch, beforeId?: number): SQL[] {
  const w: SQL[] = [];
  if (f.key_id) w.push(eq(t.keyId, f.key_id));
  if (f.issuedBy !== undefined) w.push(issuedByCondition(t, f.issuedBy));
  const label = f.label === undefined ? undefined : labelCondition(t.agentRunLabel, f.label); // "*" alone: every row
  if (label) w.push(label);
  if (f.vendor) w.push(eq(t.vendor, f.vendor));
  if (f.outcome) w.push(f.key_id || f.label !== undefined ? d.narrowedOutcome(f.outcome) : eq(t.outcome, f.outcome));
  if (f.since !== undefined) w.push(gte(t.ts, f.since));
  if (f.until !== undefined) w.push(lt(t.ts, f.until));
  if (beforeId !== undefined) w.push(lt(t.id, beforeId));
  return w;
}

const total = (e: SQL) => sql<number>`coalesce(sum(${e}), 0)`.mapWith(Number);

/** Settled money, money still held (in flight or of unknown outcome), calls, refusals and cap hits of a group of rows. */
export function moneyColumns(t: AuditColumns) {
  return {
    calls: sql<number>`count(*)`.mapWith(Number),
    settled: total(sql`CASE WHEN ${t.ledgerState} = 'settled' THEN ${t.settledMicros} END`),
    reserved: total(sql`CASE WHEN ${t.ledgerState} IN ('reserved', 'unsettled') THEN ${t.estimatedMicros} END`),
    refused: total(sql`CASE WHEN ${t.outcome} NOT IN ('forwarded', 'replayed', 'upstream_error') THEN 1 ELSE 0 END`),
    capHits: total(sql`CASE WHEN ${t.outcome} = 'cap_hit' THEN 1 ELSE 0 END`),
  };
}

/** The UTC day number of a row (epoch ms / 86 400 000, integer division on both): grouped by the database, named by the domain. */
export const dayNumber = (t: AuditColumns) => sql<number>`${t.ts} / 86400000`.mapWith(Number);
