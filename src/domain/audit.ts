import { and, desc, eq, gte, lt, sql, type SQL } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "../db/connection.ts";
import { auditLog, type AuditRow } from "../db/schema.ts";
import { fieldIssues, validationError } from "../errors.ts";
import { microsToUsd } from "../money.ts";
import { VENDORS } from "../vendors/types.ts";
import { labelCondition } from "./label-filter.ts";

export const OUTCOMES = [
  "forwarded",
  "cap_hit",
  "endpoint_denied",
  "revoked",
  "expired",
  "invalid_key",
  "invalid_request",
  "replayed",
  "upstream_error",
] as const;

const isoTime = (field: string) =>
  z.string().transform((v, ctx) => {
    const ms = Date.parse(v);
    if (!/^\d{4}-\d{2}-\d{2}/.test(v) || Number.isNaN(ms)) {
      ctx.addIssue({ code: "custom", message: `${field} must be an ISO 8601 time like 2026-11-22T00:00:00Z` });
      return z.NEVER;
    }
    return ms;
  });

export const AuditQuery = z.strictObject({
  key_id: z.string().max(64).optional(),
  label: z.string().max(256).optional(),
  vendor: z.enum(VENDORS).optional(),
  outcome: z.enum(OUTCOMES).optional(),
  since: isoTime("since").optional(),
  until: isoTime("until").optional(),
  cursor: z.string().regex(/^\d+$/, "cursor must come from next_cursor").optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  format: z.enum(["json", "csv", "jsonl"]).default("json"),
});
export type AuditFilter = z.infer<typeof AuditQuery> & {
  /** Only rows of keys issued by this management token (an issuer reads only its own audit, SPEC §7). */
  issuedBy?: string;
};

/** Rows of keys issued by one token: a subquery on the (issued_by_token_id, id) index. */
export const issuedByCondition = (tokenId: string): SQL => sql`${auditLog.keyId} IN (SELECT id FROM vault_keys WHERE issued_by_token_id = ${tokenId})`;

export function parseAuditQuery(query: Record<string, string | undefined>): AuditFilter {
  const parsed = AuditQuery.safeParse(query);
  if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
  return parsed.data;
}

/**
 * Twilio puts the real Account SID in every path. Show it the way the Vendors
 * page shows secrets, by its last 4 characters, in the API, the CSV and the pages.
 */
export function maskAccountIds(path: string): string {
  return path.replace(/\/Accounts\/AC[0-9a-fA-F]{28}([0-9a-fA-F]{4})(?=\/|$)/g, "/Accounts/••••$1");
}

export function presentAudit(r: AuditRow) {
  return {
    id: r.id,
    time: new Date(r.ts).toISOString(),
    key_id: r.keyId,
    agent_run_label: r.agentRunLabel,
    vendor: r.vendor,
    method: r.method,
    path: r.path && maskAccountIds(r.path),
    outcome: r.outcome,
    error_code: r.errorCode,
    vendor_status: r.vendorStatus,
    estimated_cost_usd: microsToUsd(r.estimatedMicros),
    settled_cost_usd: r.settledMicros === null ? null : microsToUsd(r.settledMicros),
    ledger_state: r.ledgerState,
    vendor_request_id: r.vendorRequestId,
    vendor_object_id: r.vendorObjectId,
    idempotency_key: r.idempotencyKey,
    latency_ms: r.latencyMs === null ? null : Math.round(r.latencyMs * 1000) / 1000,
    replay_of: r.replayOf,
  };
}
export type AuditEntry = ReturnType<typeof presentAudit>;
export const AUDIT_COLUMNS = Object.keys(presentAudit({ ts: 0 } as AuditRow)) as (keyof AuditEntry)[];

export class AuditService {
  constructor(private readonly db: Db) {}

  private where(f: AuditFilter, beforeId?: number): SQL | undefined {
    const w: SQL[] = [];
    if (f.key_id) w.push(eq(auditLog.keyId, f.key_id));
    if (f.issuedBy !== undefined) w.push(issuedByCondition(f.issuedBy));
    if (f.label !== undefined) w.push(labelCondition(auditLog.agentRunLabel, f.label) ?? sql`1`);
    if (f.vendor) w.push(eq(auditLog.vendor, f.vendor));
    if (f.outcome) {
      // With a key or a label to narrow by, SQLite would still pick the outcome index (9 outcomes,
      // ~1M "forwarded" rows) and walk it; the unary + keeps it on the key or label index instead.
      w.push(f.key_id || f.label !== undefined ? sql`+${auditLog.outcome} = ${f.outcome}` : eq(auditLog.outcome, f.outcome));
    }
    if (f.since !== undefined) w.push(gte(auditLog.ts, f.since));
    if (f.until !== undefined) w.push(lt(auditLog.ts, f.until));
    if (beforeId !== undefined) w.push(lt(auditLog.id, beforeId));
    return and(...w);
  }

  /** Newest first; next_cursor continues where this page ended. */
  page(f: AuditFilter): { rows: AuditRow[]; nextCursor: string | null } {
    const rows = this.db.orm
      .select()
      .from(auditLog)
      .where(this.where(f, f.cursor ? Number(f.cursor) : undefined))
      .orderBy(desc(auditLog.id))
      .limit(f.limit + 1)
      .all();
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { rows, nextCursor: more ? String(rows[rows.length - 1]!.id) : null };
  }

  /** What a filter matched, for the admin pages' summary line: calls, settled and held money, refusals, cap hits. */
  summary(f: AuditFilter): { calls: number; settledMicros: number; reservedMicros: number; refused: number; capHits: number } {
    const r = this.db.orm
      .select({
        calls: sql<number>`count(*)`,
        settled: sql<number>`coalesce(sum(CASE WHEN ${auditLog.ledgerState} = 'settled' THEN ${auditLog.settledMicros} END), 0)`,
        reserved: sql<number>`coalesce(sum(CASE WHEN ${auditLog.ledgerState} IN ('reserved', 'unsettled') THEN ${auditLog.estimatedMicros} END), 0)`,
        refused: sql<number>`coalesce(sum(${auditLog.outcome} NOT IN ('forwarded', 'replayed', 'upstream_error')), 0)`,
        capHits: sql<number>`coalesce(sum(${auditLog.outcome} = 'cap_hit'), 0)`,
      })
      .from(auditLog)
      .where(this.where(f))
      .get();
    return { calls: r?.calls ?? 0, settledMicros: r?.settled ?? 0, reservedMicros: r?.reserved ?? 0, refused: r?.refused ?? 0, capHits: r?.capHits ?? 0 };
  }

  /** Every matching row, in batches, for CSV/JSONL export without holding the log in memory. */
  *all(f: AuditFilter): Generator<AuditRow> {
    let before: number | undefined = f.cursor ? Number(f.cursor) : undefined;
    for (;;) {
      const rows = this.db.orm.select().from(auditLog).where(this.where(f, before)).orderBy(desc(auditLog.id)).limit(1000).all();
      yield* rows;
      if (rows.length < 1000) return;
      before = rows[rows.length - 1]!.id;
    }
  }

  /**
   * Spend per label and per key over [since, until): settled money, money
   * still reserved (in flight or of unknown outcome), calls and cap hits.
   */
  spend(since: number, until: number, label?: string, issuedBy?: string) {
    const w = and(
      gte(auditLog.ts, since),
      lt(auditLog.ts, until),
      label === undefined ? undefined : labelCondition(auditLog.agentRunLabel, label),
      issuedBy === undefined ? undefined : issuedByCondition(issuedBy),
    );
    const cols = {
      settled: sql<number>`coalesce(sum(CASE WHEN ${auditLog.ledgerState} = 'settled' THEN ${auditLog.settledMicros} END), 0)`,
      reserved: sql<number>`coalesce(sum(CASE WHEN ${auditLog.ledgerState} IN ('reserved', 'unsettled') THEN ${auditLog.estimatedMicros} END), 0)`,
      calls: sql<number>`count(*)`,
      capHits: sql<number>`sum(${auditLog.outcome} = 'cap_hit')`,
    };
    const byLabel = this.db.orm
      .select({ label: auditLog.agentRunLabel, ...cols })
      .from(auditLog)
      .where(and(w, sql`${auditLog.keyId} IS NOT NULL`))
      .groupBy(auditLog.agentRunLabel)
      .orderBy(desc(cols.settled))
      .all();
    const byKey = this.db.orm
      .select({ keyId: auditLog.keyId, label: auditLog.agentRunLabel, vendor: auditLog.vendor, ...cols })
      .from(auditLog)
      .where(and(w, sql`${auditLog.keyId} IS NOT NULL`))
      .groupBy(auditLog.keyId)
      .orderBy(desc(cols.settled))
      .all();
    const money = (r: { settled: number; reserved: number; calls: number; capHits: number }) => ({
      spent_usd: microsToUsd(r.settled),
      reserved_usd: microsToUsd(r.reserved),
      calls: r.calls,
      cap_hits: r.capHits ?? 0,
    });
    return {
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      by_label: byLabel.map((r) => ({ agent_run_label: r.label, ...money(r) })),
      by_key: byKey.map((r) => ({ key_id: r.keyId, agent_run_label: r.label, vendor: r.vendor, ...money(r) })),
    };
  }

  /** Settled spend per UTC day and label, for the admin chart. */
  dailySpend(since: number, label?: string): { day: string; label: string; micros: number }[] {
    return this.db.orm
      .select({
        day: sql<string>`strftime('%Y-%m-%d', ${auditLog.ts} / 1000, 'unixepoch')`,
        label: sql<string>`coalesce(${auditLog.agentRunLabel}, '')`,
        micros: sql<number>`coalesce(sum(${auditLog.settledMicros}), 0)`,
      })
      .from(auditLog)
      .where(and(gte(auditLog.ts, since), eq(auditLog.ledgerState, "settled"), label === undefined ? undefined : labelCondition(auditLog.agentRunLabel, label)))
      .groupBy(sql`1`, sql`2`)
      .orderBy(sql`1`)
      .all();
  }
}

export function toCsvLine(values: unknown[]): string {
  return (
    values
      .map((v) => {
        if (v === null || v === undefined) return "";
        const s = String(v);
        // Quote anything with separators, and neutralise spreadsheet formulas in client-written text.
        const safe = /^[=+\-@\t\r]/.test(s) && typeof v === "string" ? `'${s}` : s;
        return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
      })
      .join(",") + "\r\n"
  );
}
