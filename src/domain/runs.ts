import { microsToUsd } from "../money.ts";
import type { VendorName } from "../vendors/types.ts";
import { pageOf, type KeyStatus } from "./keys.ts";
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

/** A run as the store groups it: the totals of its keys, money in micro-dollars. */
export interface RunGroup {
  label: string;
  newest: string;
  keys: number;
  active: number;
  revoked: number;
  /** Each vendor once, in any order. */
  vendors: string[];
  dailyCapMicros: number;
  spentTotalMicros: number;
  /** Null unless every key of the run has a lifetime cap. */
  totalCapMicros: number | null;
}

/** Where the runs are read from (src/store/sqlite/runs.ts, src/store/pg/runs.ts): vault_keys grouped by label. */
export interface RunStore {
  /** Runs matching the filter, newest first by their newest key id, older than `cursor`; at most `limit`. */
  groups(f: RunFilter & { cursor?: string; limit: number }, now: number): Promise<RunGroup[]>;
  /** Today's spent and reserved micro-dollars per label, over the keys matching the filter. */
  spendOn(labels: string[], f: RunFilter, day: string): Promise<Map<string, { spent: number; reserved: number }>>;
  /** Proxied calls per label (of `vendor` when given): all, cap hits, refusals, the last one's time. */
  calls(labels: string[], vendor: VendorName | undefined): Promise<Map<string, { calls: number; capHits: number; refused: number; last: number | null }>>;
  /** Labels matching the filter, newest first by their newest key id; at most `limit`. */
  labels(label: string | undefined, limit: number): Promise<string[]>;
}

/** The Runs view of the admin pages. */
export class RunsView {
  constructor(private readonly store: RunStore) {}

  /**
   * Runs matching the filter, newest run first (by its newest key), so the order
   * never changes when a run is revoked or spends. `cursor` is a label's newest key id.
   */
  async listRuns(f: RunFilter & { cursor?: string; limit: number }, now = Date.now()): Promise<{ runs: RunSummary[]; nextCursor: string | null }> {
    const page = pageOf(await this.store.groups({ ...f, limit: f.limit + 1 }, now), f.limit, (g) => g.newest);
    const labels = page.rows.map((g) => g.label);
    if (!labels.length) return { runs: [], nextCursor: null };
    const [today, calls] = await Promise.all([this.store.spendOn(labels, f, utcDay(now)), this.store.calls(labels, f.vendor)]);
    const runs = page.rows.map((g): RunSummary => {
      const t = today.get(g.label);
      const c = calls.get(g.label);
      return {
        agent_run_label: g.label,
        keys: g.keys,
        active_keys: g.active,
        status: g.active > 0 ? "active" : g.revoked > 0 ? "revoked" : "expired",
        newest_key_id: g.newest,
        vendors: [...g.vendors].sort(),
        spent_today_usd: microsToUsd(t?.spent ?? 0),
        reserved_usd: microsToUsd(t?.reserved ?? 0),
        daily_cap_usd: microsToUsd(g.dailyCapMicros),
        spent_total_usd: microsToUsd(g.spentTotalMicros),
        total_cap_usd: g.totalCapMicros === null ? null : microsToUsd(g.totalCapMicros),
        calls: c?.calls ?? 0,
        cap_hits: c?.capHits ?? 0,
        refused: c?.refused ?? 0,
        last_call_at: c?.last ? new Date(c.last).toISOString() : null,
      };
    });
    return { runs, nextCursor: page.nextCursor };
  }

  /** Labels that start with what was typed, newest first: suggestions for the filter box. */
  suggestLabels(typed: string | undefined, limit = 20): Promise<string[]> {
    const prefix = (typed ?? "").replace(/\*$/, "");
    return this.store.labels(prefix ? prefix + "*" : undefined, limit);
  }
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
