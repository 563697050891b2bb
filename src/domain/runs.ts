import { and, desc, eq, gt, inArray, isNotNull, isNull, lt, lte, or, sql, type SQL } from "drizzle-orm";
import type { Db } from "../db/connection.ts";
import { auditLog, keySpendDays, vaultKeys } from "../db/schema.ts";
import { microsToUsd } from "../money.ts";
import type { VendorName } from "../vendors/types.ts";
import type { KeyStatus } from "./keys.ts";
import { labelCondition } from "./label-filter.ts";
import { utcDay } from "./time.ts";

/**
 * Runs: the keys of one `agent_run_label` seen together, which is how an
 * operator thinks about them at 2 a.m. ("what did this run spend, stop it").
 * Read-only queries for the admin pages; revocation stays in KeyService.
 */

export interface RunFilter {
  label?: string;
  vendor?: VendorName;
}

export interface RunSummary {
  agent_run_label: string;
  keys: number;
  active_keys: number;
  status: KeyStatus;
  /** One key of the run (the newest), for links that act on a key. */
  newest_key_id: string;
  vendors: string[];
  spent_today_usd: number;
  reserved_usd: number;
  daily_cap_usd: number;
  spent_total_usd: number;
  /** Set only when every key of the run has a lifetime cap. */
  total_cap_usd: number | null;
  calls: number;
  cap_hits: number;
  refused: number;
  last_call_at: string | null;
}

function keyWhere(f: RunFilter): SQL[] {
  const w: SQL[] = [];
  if (f.label !== undefined) {
    const c = labelCondition(vaultKeys.agentRunLabel, f.label);
    if (c) w.push(c);
  }
  if (f.vendor) w.push(eq(vaultKeys.vendor, f.vendor));
  return w;
}

/** Key counts by status under the same label and vendor filter as the list they sit above. */
export function countKeys(db: Db, f: RunFilter, now = Date.now()): Record<KeyStatus, number> {
  const r = db.orm
    .select({
      revoked: sql<number>`coalesce(sum(${vaultKeys.revokedAt} IS NOT NULL), 0)`,
      expired: sql<number>`coalesce(sum(${vaultKeys.revokedAt} IS NULL AND ${vaultKeys.expiresAt} <= ${now}), 0)`,
      active: sql<number>`coalesce(sum(${vaultKeys.revokedAt} IS NULL AND ${vaultKeys.expiresAt} > ${now}), 0)`,
    })
    .from(vaultKeys)
    .where(and(...keyWhere(f)))
    .get();
  return { active: r?.active ?? 0, revoked: r?.revoked ?? 0, expired: r?.expired ?? 0 };
}

/**
 * The "active" list as the page shows it: live keys plus keys revoked in the
 * last `graceMs`, so a row the operator just revoked stays where it was (marked
 * revoked) instead of vanishing from under the pointer on the next refresh.
 */
export function activeOrRecentlyRevoked(now: number, graceMs: number): SQL {
  return or(and(isNull(vaultKeys.revokedAt), gt(vaultKeys.expiresAt, now)), and(isNotNull(vaultKeys.revokedAt), gt(vaultKeys.revokedAt, now - graceMs)))!;
}

export function listKeyRows(db: Db, f: RunFilter & { status?: KeyStatus; recentGraceMs?: number; cursor?: string; limit: number }, now = Date.now()) {
  const where = keyWhere(f);
  if (f.status === "active") where.push(f.recentGraceMs ? activeOrRecentlyRevoked(now, f.recentGraceMs) : and(isNull(vaultKeys.revokedAt), gt(vaultKeys.expiresAt, now))!);
  if (f.status === "revoked") where.push(isNotNull(vaultKeys.revokedAt));
  if (f.status === "expired") where.push(isNull(vaultKeys.revokedAt), lte(vaultKeys.expiresAt, now));
  if (f.cursor) where.push(lt(vaultKeys.id, f.cursor));
  const rows = db.orm
    .select()
    .from(vaultKeys)
    .where(and(...where))
    .orderBy(desc(vaultKeys.id))
    .limit(f.limit + 1)
    .all();
  const more = rows.length > f.limit;
  if (more) rows.pop();
  return { rows, nextCursor: more ? rows[rows.length - 1]!.id : null };
}

/**
 * Runs matching the filter, newest run first (by its newest key), so the order
 * never changes when a run is revoked or spends. `cursor` is a label's newest key id.
 */
export function listRuns(db: Db, f: RunFilter & { cursor?: string; limit: number }, now = Date.now()): { runs: RunSummary[]; nextCursor: string | null } {
  const newest = sql<string>`max(${vaultKeys.id})`;
  const groups = db.orm
    .select({
      label: vaultKeys.agentRunLabel,
      newest,
      keys: sql<number>`count(*)`,
      active: sql<number>`sum(${vaultKeys.revokedAt} IS NULL AND ${vaultKeys.expiresAt} > ${now})`,
      revoked: sql<number>`sum(${vaultKeys.revokedAt} IS NOT NULL)`,
      vendors: sql<string>`group_concat(DISTINCT ${vaultKeys.vendor})`,
      dailyCap: sql<number>`sum(${vaultKeys.dailyCapMicros})`,
      spentTotal: sql<number>`sum(${vaultKeys.spentTotalMicros})`,
      totalCap: sql<number | null>`CASE WHEN count(${vaultKeys.totalCapMicros}) = count(*) THEN sum(${vaultKeys.totalCapMicros}) END`,
    })
    .from(vaultKeys)
    .where(and(...keyWhere(f)))
    .groupBy(vaultKeys.agentRunLabel)
    .having(f.cursor ? lt(newest, f.cursor) : undefined)
    .orderBy(desc(newest))
    .limit(f.limit + 1)
    .all();
  const more = groups.length > f.limit;
  if (more) groups.pop();
  const labels = groups.map((g) => g.label);
  if (!labels.length) return { runs: [], nextCursor: null };

  const today = new Map(
    db.orm
      .select({
        label: vaultKeys.agentRunLabel,
        spent: sql<number>`coalesce(sum(${keySpendDays.spentMicros}), 0)`,
        reserved: sql<number>`coalesce(sum(${keySpendDays.reservedMicros}), 0)`,
      })
      .from(keySpendDays)
      .innerJoin(vaultKeys, eq(vaultKeys.id, keySpendDays.keyId))
      .where(and(inArray(vaultKeys.agentRunLabel, labels), eq(keySpendDays.day, utcDay(now)), ...keyWhere(f)))
      .groupBy(vaultKeys.agentRunLabel)
      .all()
      .map((r) => [r.label, r]),
  );
  const calls = new Map(
    db.orm
      .select({
        label: auditLog.agentRunLabel,
        calls: sql<number>`count(*)`,
        capHits: sql<number>`coalesce(sum(${auditLog.outcome} = 'cap_hit'), 0)`,
        refused: sql<number>`coalesce(sum(${auditLog.outcome} NOT IN ('forwarded', 'replayed', 'upstream_error')), 0)`,
        last: sql<number>`max(${auditLog.ts})`,
      })
      .from(auditLog)
      .where(and(inArray(auditLog.agentRunLabel, labels), f.vendor ? eq(auditLog.vendor, f.vendor) : undefined))
      .groupBy(auditLog.agentRunLabel)
      .all()
      .map((r) => [r.label, r]),
  );

  const runs = groups.map((g): RunSummary => {
    const t = today.get(g.label);
    const c = calls.get(g.label);
    return {
      agent_run_label: g.label,
      keys: g.keys,
      active_keys: g.active,
      status: g.active > 0 ? "active" : g.revoked > 0 ? "revoked" : "expired",
      newest_key_id: g.newest,
      vendors: g.vendors.split(","),
      spent_today_usd: microsToUsd(t?.spent ?? 0),
      reserved_usd: microsToUsd(t?.reserved ?? 0),
      daily_cap_usd: microsToUsd(g.dailyCap),
      spent_total_usd: microsToUsd(g.spentTotal),
      total_cap_usd: g.totalCap === null ? null : microsToUsd(g.totalCap),
      calls: c?.calls ?? 0,
      cap_hits: c?.capHits ?? 0,
      refused: c?.refused ?? 0,
      last_call_at: c?.last ? new Date(c.last).toISOString() : null,
    };
  });
  return { runs, nextCursor: more ? groups[groups.length - 1]!.newest : null };
}

/** Labels that start with what was typed, newest first: suggestions for the filter box. */
export function suggestLabels(db: Db, typed: string | undefined, limit = 20): string[] {
  const prefix = (typed ?? "").replace(/\*$/, "");
  return db.orm
    .select({ label: vaultKeys.agentRunLabel, newest: sql<string>`max(${vaultKeys.id})` })
    .from(vaultKeys)
    .where(prefix ? labelCondition(vaultKeys.agentRunLabel, prefix + "*") : undefined)
    .groupBy(vaultKeys.agentRunLabel)
    .orderBy(desc(sql`2`))
    .limit(limit)
    .all()
    .map((r) => r.label);
}

/** The run prefixes worth offering ("airflow-billing/*"): each label's part before its last "/". */
export function labelPrefixes(labels: readonly string[]): string[] {
  const out = new Set<string>();
  for (const l of labels) {
    const i = l.lastIndexOf("/");
    if (i > 0) out.add(l.slice(0, i + 1) + "*");
  }
  return [...out];
}
