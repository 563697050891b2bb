import { z } from "zod";
import type { AuditRow } from "../db/schema.ts";
import { fieldIssues, validationError } from "../errors.ts";
import { microsToUsd } from "../money.ts";
import { VENDORS } from "../vendors/types.ts";
import { utcDay } from "./time.ts";

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

/** What a filter matched, for the admin pages' summary line. */
export interface AuditSummary {
  calls: number;
  settledMicros: number;
  reservedMicros: number;
  refused: number;
  capHits: number;
}

/** One group of rows in the spend totals: settled money, money still held (in flight or of unknown outcome), calls, cap hits. */
export interface SpendTotals {
  settled: number;
  reserved: number;
  calls: number;
  capHits: number;
}

/** Which rows the spend totals cover: [since, until), optionally one label filter and one issuer's keys. */
export interface SpendWindow {
  since: number;
  until: number;
  label?: string;
  issuedBy?: string;
}

/**
 * Where the audit log is read and pruned (src/store/sqlite/audit.ts, src/store/pg/audit.ts). The
 * rows are written by the ledgers. Both order by id, newest first, and give the same rows,
 * totals and cursors for the same log.
 */
export interface AuditStore {
  /**
   * Up to `limit` rows matching `f`, newest first, ids below `beforeId`. Without `beforeId`: the
   * newest rows that no transaction still in flight can precede (on PostgreSQL ids are taken before
   * commit; see PgAuditStore), so following the cursors never skips a committed row.
   */
  page(f: AuditFilter, beforeId: number | undefined, limit: number): Promise<AuditRow[]>;
  summary(f: AuditFilter): Promise<AuditSummary>;
  /** Totals per label and per key of rows with a key, most settled first (then by label / key id, in code point order). */
  spend(w: SpendWindow): Promise<{ byLabel: (SpendTotals & { label: string | null })[]; byKey: (SpendTotals & { keyId: string | null; label: string | null; vendor: string })[] }>;
  /** Settled micro-dollars per UTC day number (epoch ms / 86 400 000) and label, since `since`. */
  dailySpend(since: number, label?: string): Promise<{ day: number; label: string; micros: number }[]>;
  /** Deletes up to `limit` of the oldest rows older than `cutoff` (with the stored answers that point at them) in one short transaction; returns how many went. */
  prune(cutoff: number, limit: number): Promise<number>;
}

/** Rows per query when a whole filter is exported. */
const EXPORT_BATCH = 1000;
const DAY_MS = 86_400_000;

export class AuditService {
  constructor(private readonly store: AuditStore) {}

  /** Newest first; next_cursor continues where this page ended. */
  async page(f: AuditFilter): Promise<{ rows: AuditRow[]; nextCursor: string | null }> {
    const rows = await this.store.page(f, f.cursor ? Number(f.cursor) : undefined, f.limit + 1);
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { rows, nextCursor: more ? String(rows[rows.length - 1]!.id) : null };
  }

  /** What a filter matched, for the admin pages' summary line: calls, settled and held money, refusals, cap hits. */
  summary(f: AuditFilter): Promise<AuditSummary> {
    return this.store.summary(f);
  }

  /** Every matching row, in batches, for CSV/JSONL export without holding the log in memory. */
  async *all(f: AuditFilter): AsyncGenerator<AuditRow> {
    let before: number | undefined = f.cursor ? Number(f.cursor) : undefined;
    for (;;) {
      const rows = await this.store.page(f, before, EXPORT_BATCH);
      yield* rows;
      if (rows.length < EXPORT_BATCH) return;
      before = rows[rows.length - 1]!.id;
    }
  }

  /**
   * Spend per label and per key over [since, until): settled money, money
   * still reserved (in flight or of unknown outcome), calls and cap hits.
   */
  async spend(since: number, until: number, label?: string, issuedBy?: string) {
    const { byLabel, byKey } = await this.store.spend({ since, until, label, issuedBy });
    const money = (r: SpendTotals) => ({ spent_usd: microsToUsd(r.settled), reserved_usd: microsToUsd(r.reserved), calls: r.calls, cap_hits: r.capHits });
    return {
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      by_label: byLabel.map((r) => ({ agent_run_label: r.label, ...money(r) })),
      by_key: byKey.map((r) => ({ key_id: r.keyId, agent_run_label: r.label, vendor: r.vendor, ...money(r) })),
    };
  }

  /** Settled spend per UTC day and label, for the admin chart. */
  async dailySpend(since: number, label?: string): Promise<{ day: string; label: string; micros: number }[]> {
    return (await this.store.dailySpend(since, label)).map((r) => ({ ...r, day: utcDay(r.day * DAY_MS) }));
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
