import { and, eq, gt, isNotNull, isNull, lt, lte, or, sql, type SQL } from "drizzle-orm";
import type { auditLog as sqliteAuditLog, keySpendDays as sqliteKeySpendDays, vaultKeys as sqliteVaultKeys } from "../db/schema.ts";
import type { KeyListFilter, KeySelector } from "../domain/keys.ts";
import { labelCondition } from "../domain/label-filter.ts";
import type { RunFilter } from "../domain/runs.ts";
import type { pgSchema } from "./backend.ts";

/**
 * The conditions and aggregates of the key and run queries, written once for both backends: the
 * two schemas name vault_keys' columns alike, and everything here is SQL both dialects read the
 * same way (`count(*) FILTER (WHERE …)`, not SQLite's sum of booleans).
 */
type KeyTable = typeof sqliteVaultKeys | typeof pgSchema.vaultKeys;
type AuditTable = typeof sqliteAuditLog | typeof pgSchema.auditLog;
type SpendDaysTable = typeof sqliteKeySpendDays | typeof pgSchema.keySpendDays;

/** A count or sum, read as a number (PostgreSQL returns BIGINT and NUMERIC as strings); NULL stays null. */
const num = (expr: SQL) => expr.mapWith(Number) as SQL<number>;
const numOrNull = (expr: SQL) => expr.mapWith(Number) as SQL<number | null>;

export function liveAt(t: KeyTable, now: number): SQL {
  return and(isNull(t.revokedAt), gt(t.expiresAt, now))!;
}

/** WHERE of the label (exact or prefix) and vendor filter of the key lists, counts and runs. */
export function runConditions(t: KeyTable, f: RunFilter): SQL[] {
  const w: SQL[] = [];
  if (f.label !== undefined) {
    const c = labelCondition(t.agentRunLabel, f.label);
    if (c) w.push(c);
  }
  if (f.vendor) w.push(eq(t.vendor, f.vendor));
  return w;
}

/** WHERE of a key list or count: the run filter, then status, issuer, cursor. */
export function keyConditions(t: KeyTable, f: Partial<KeyListFilter> & { issuedBy?: string }, now: number): SQL[] {
  const w = runConditions(t, f);
  if (f.issuedBy !== undefined) w.push(eq(t.issuedByTokenId, f.issuedBy));
  if (f.status === "active") w.push(f.recentGraceMs ? or(liveAt(t, now), gt(t.revokedAt, now - f.recentGraceMs))! : liveAt(t, now));
  if (f.status === "revoked") w.push(isNotNull(t.revokedAt));
  if (f.status === "expired") w.push(isNull(t.revokedAt), lte(t.expiresAt, now));
  if (f.cursor) w.push(lt(t.id, f.cursor));
  return w;
}

/** WHERE of the keys a change acts on. */
export function selected(t: KeyTable, which: KeySelector): SQL {
  const own = which.issuedBy === undefined ? undefined : eq(t.issuedByTokenId, which.issuedBy);
  return "keyId" in which ? and(eq(t.id, which.keyId), own)! : and(eq(t.agentRunLabel, which.label), liveAt(t, which.liveAt), own)!;
}

/** Keys by status, over the rows of the query. */
export function statusCounts(t: KeyTable, now: number) {
  return {
    active: num(sql`count(*) FILTER (WHERE ${liveAt(t, now)})`),
    revoked: num(sql`count(*) FILTER (WHERE ${t.revokedAt} IS NOT NULL)`),
    expired: num(sql`count(*) FILTER (WHERE ${t.revokedAt} IS NULL AND ${t.expiresAt} <= ${now})`),
  };
}

/** A run's newest key id: its place in the list and its cursor. */
export const newestKey = (t: KeyTable) => sql<string>`max(${t.id})`;

/** The totals of a run's keys (RunGroup), grouped by label. */
export function runTotals(t: KeyTable, now: number) {
  const { active, revoked } = statusCounts(t, now);
  return {
    newest: newestKey(t),
    keys: num(sql`count(*)`),
    active,
    revoked,
    dailyCapMicros: num(sql`sum(${t.dailyCapMicros})`),
    spentTotalMicros: num(sql`sum(${t.spentTotalMicros})`),
    totalCapMicros: numOrNull(sql`CASE WHEN count(${t.totalCapMicros}) = count(*) THEN sum(${t.totalCapMicros}) END`),
  };
}

/** Per label: calls, cap hits, refusals (what Keybrake itself refused) and the last call's time. */
export function callTotals(a: AuditTable) {
  return {
    calls: num(sql`count(*)`),
    capHits: num(sql`count(*) FILTER (WHERE ${a.outcome} = 'cap_hit')`),
    refused: num(sql`count(*) FILTER (WHERE ${a.outcome} NOT IN ('forwarded', 'replayed', 'upstream_error'))`),
    last: numOrNull(sql`max(${a.ts})`),
  };
}

/** Per label: today's spent and reserved micro-dollars over key_spend_days. */
export function daySpendTotals(d: SpendDaysTable) {
  return {
    spent: num(sql`coalesce(sum(${d.spentMicros}), 0)`),
    reserved: num(sql`coalesce(sum(${d.reservedMicros}), 0)`),
  };
}

/** A key's spend on one day with its lifetime totals (KeyStore.spendOn: one statement, one moment). */
export function keySpendWithTotals(k: KeyTable, d: SpendDaysTable) {
  return {
    spentMicros: num(sql`coalesce(${d.spentMicros}, 0)`),
    reservedMicros: num(sql`coalesce(${d.reservedMicros}, 0)`),
    spentTotalMicros: num(sql`${k.spentTotalMicros}`),
    reservedTotalMicros: num(sql`${k.reservedTotalMicros}`),
  };
}

/** The join of a key to its day row for `day` (absent before its first call of the day). */
export const keyDayRow = (k: KeyTable, d: SpendDaysTable, day: string) => and(eq(d.keyId, k.id), eq(d.day, day))!;
