import { and, desc, eq, inArray, lt, sql } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { auditLog, keySpendDays, vaultKeys } from "../../db/schema.ts";
import type { RunFilter, RunGroup, RunStore } from "../../domain/runs.ts";
import type { VendorName } from "../../vendors/types.ts";
import { callTotals, daySpendTotals, newestKey, runConditions, runTotals } from "../key-queries.ts";

/** The Runs view over the SQLite file. */
export class SqliteRunStore implements RunStore {
  constructor(private readonly db: Db) {}

  async groups(f: RunFilter & { cursor?: string; limit: number }, now: number): Promise<RunGroup[]> {
    const totals = runTotals(vaultKeys, now);
    return this.db.orm
      .select({ label: vaultKeys.agentRunLabel, ...totals, vendors: sql<string>`group_concat(DISTINCT ${vaultKeys.vendor})`.mapWith((v: string) => v.split(",")) })
      .from(vaultKeys)
      .where(and(...runConditions(vaultKeys, f)))
      .groupBy(vaultKeys.agentRunLabel)
      .having(f.cursor ? lt(totals.newest, f.cursor) : undefined)
      .orderBy(desc(totals.newest))
      .limit(f.limit)
      .all();
  }

  async spendOn(labels: string[], f: RunFilter, day: string) {
    const rows = this.db.orm
      .select({ label: vaultKeys.agentRunLabel, ...daySpendTotals(keySpendDays) })
      .from(keySpendDays)
      .innerJoin(vaultKeys, eq(vaultKeys.id, keySpendDays.keyId))
      .where(and(inArray(vaultKeys.agentRunLabel, labels), eq(keySpendDays.day, day), ...runConditions(vaultKeys, f)))
      .groupBy(vaultKeys.agentRunLabel)
      .all();
    return new Map(rows.map((r) => [r.label, r]));
  }

  async calls(labels: string[], vendor: VendorName | undefined) {
    const rows = this.db.orm
      .select({ label: auditLog.agentRunLabel, ...callTotals(auditLog) })
      .from(auditLog)
      .where(and(inArray(auditLog.agentRunLabel, labels), vendor ? eq(auditLog.vendor, vendor) : undefined))
      .groupBy(auditLog.agentRunLabel)
      .all();
    return new Map(rows.map((r) => [r.label!, r]));
  }

  async labels(label: string | undefined, limit: number): Promise<string[]> {
    return this.db.orm
      .select({ label: vaultKeys.agentRunLabel })
      .from(vaultKeys)
      .where(and(...runConditions(vaultKeys, { label })))
      .groupBy(vaultKeys.agentRunLabel)
      .orderBy(desc(newestKey(vaultKeys)))
      .limit(limit)
      .all()
      .map((r) => r.label);
  }
}
