import type { Admission, AuditOutcome, CallFacts, LiveKey, RepeatGuard, Reservation, Settlement, StoredAnswer } from "../domain/ledger.ts";
import type { PricedObject } from "../vendors/types.ts";

/**
 * The spend ledger as the proxy sees it (SPEC §4, §8): one interface, two implementations —
 * `Ledger` in src/domain/ledger.ts on the embedded SQLite file (the default), and `PgLedger`
 * in src/ledger/pg.ts on a PostgreSQL database shared by any number of replicas. The proxy
 * does not know which one runs.
 *
 * Reads answer `T | Promise<T>`: SQLite answers at once (no extra turn on the hot path),
 * PostgreSQL after a round trip; callers `await` either.
 */
export interface SpendLedger {
  /** Re-checks the key on the row it locks, recognises repeats, checks every cap and budget and reserves; committed when it resolves. */
  admit(key: LiveKey, call: CallFacts, micros: number, now: number, guard: RepeatGuard | null): Promise<Admission>;
  /** 2xx: settles at `actualMicros`, keeps the answer for replays and records what a priced call produced, in one transaction. */
  settle(r: Reservation, s: Settlement, answer: StoredAnswer | null, produced?: PricedObject | null): Promise<void>;
  /** Vendor 4xx: no money moved. */
  release(r: Reservation, s: Settlement, answer: StoredAnswer | null): Promise<void>;
  /** Timeout, lost connection or 5xx: the reservation stays held. */
  keepUnsettled(r: Reservation, s: Settlement, errorCode: string): Promise<void>;
  /** A refusal made before any money is at stake: one audit row. */
  recordRefusal(key: Pick<LiveKey, "id" | "agent_run_label"> | null, call: CallFacts, outcome: AuditOutcome, errorCode: string, now: number): Promise<number>;
  findKeyByHash(hash: string): LiveKey | null | Promise<LiveKey | null>;
  pricedObject(keyId: string, objectId: string): PricedObject | null | Promise<PricedObject | null>;
  pruneRepeats(now: number): number | Promise<number>;
  /** Counters since start, for /metrics: how well writes share commits (group commit) and fsyncs. */
  stats(): LedgerStats;
}

export interface LedgerStats {
  /** Ledger transactions committed (each carries one or more writes). */
  commits: number;
  /** Admissions, settlements and refusals written. */
  writes: number;
  /** WAL fsyncs made for reservations (SQLite; 0 on PostgreSQL, whose server syncs its own log). */
  fsyncs: number;
  /** PostgreSQL: writes decided together under the key's lock and written in one round trip (src/ledger/pg-batch.ts); the others take the per-write path. */
  batchedWrites?: number;
  /** PostgreSQL: batches rolled back (a write failed, or a statement touched other rows than decided) and run again one write at a time. */
  batchRollbacks?: number;
}

/**
 * The ledger's database cannot be reached (PostgreSQL down, network cut). The proxy answers
 * 503 `unavailable` in the vendor's shape and forwards nothing: money never moves unchecked.
 */
export class LedgerUnavailable extends Error {
  constructor(cause: unknown) {
    super(`ledger database unreachable: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = "LedgerUnavailable";
  }
}
