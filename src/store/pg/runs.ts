import { and, desc, eq, inArray, lt, sql } from "drizzle-orm";
import type { RunFilter, RunGroup, RunStore } from "../../domain/runs.ts";
import type { VendorName } from "../../vendors/types.ts";
import { pgSchema, type PgOrm } from "../backend.ts";
import { callTotals, daySpendTotals, newestKey, runConditions, runTotals } from "../key-queries.ts";

const { auditLog, keySpendDays, vaultKeys } = pgSchema;

/** The Runs view over PostgreSQL: the same queries as on SQLite, but for the vendor list. */
export class PgRunStore implements RunStore {
  constructor(private readonly orm: PgOrm) {}

  async groups(f: RunFilter & { cursor?: string; limit: number }, now: number): Promise<RunGroup[]> {
    const totals = runTotals(vaultKeys, now);
    return this.orm
      .select({ label: vaultKeys.agentRunLabel, ...totals, vendors: sql<string[]>`array_agg(DISTINCT ${vaultKeys.vendor})` })
      .from(vaultKeys)
      .where(and(...runConditions(vaultKeys, f)))
      .groupBy(vaultKeys.agentRunLabel)
      .having(f.cursor ? lt(totals.newest, f.cursor) : undefined)
      .orderBy(desc(totals.newest))
      .limit(f.limit);
  }

  async spendOn(labels: string[], f: RunFilter, day: string) {
    const rows = await this.orm
      .select({ label: vaultKeys.agentRunLabel, ...daySpendTotals(keySpendDays) })
      .from(keySpendDays)
      .innerJoin(vaultKeys, eq(vaultKeys.id, keySpendDays.keyId))
      .where(and(inArray(vaultKeys.agentRunLabel, labels), eq(keySpendDays.day, day), ...runConditions(vaultKeys, f)))
      .groupBy(vaultKeys.agentRunLabel);
    return new Map(rows.map((r) => [r.label, r]));
  }

  async calls(labels: string[], vendor: VendorName | undefined) {
    const rows = await this.orm
      .select({ label: auditLog.agentRunLabel, ...callTotals(auditLog) })
      .from(auditLog)
      .where(and(inArray(auditLog.agentRunLabel, labels), vendor ? eq(auditLog.vendor, vendor) : undefined))
      .groupBy(auditLog.agentRunLabel);
    return new Map(rows.map((r) => [r.label!, r]));
  }

  async labels(label: string | undefined, limit: number): Promise<string[]> {
    const rows = await this.orm
      .select({ label: vaultKeys.agentRunLabel })
      .from(vaultKeys)
      .where(and(...runConditions(vaultKeys, { label })))
      .groupBy(vaultKeys.agentRunLabel)
      .orderBy(desc(newestKey(vaultKeys)))
      .limit(limit);
    return rows.map((r) => r.label);
  }
}
