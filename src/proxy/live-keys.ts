import type { LiveKey } from "../domain/ledger.ts";
import type { SpendLedger } from "../ledger/types.ts";

/**
 * Key rows by hash, kept between calls so a call does not read its key twice (a SELECT per call on
 * SQLite, a round trip on PostgreSQL). Safe because nothing this cache answers decides money or
 * access on its own:
 * - Revocation, expiry and the caps — the only columns that change after issue (PATCH changes caps
 *   and expiry; the allowlist, vendor, label and flags never change) — are re-read by the ledger
 *   on the row it locks inside the admission transaction (`capRow` in src/domain/ledger.ts,
 *   `… FOR UPDATE` in src/ledger/pg.ts). A key revoked in another process is refused there, 401
 *   key_revoked as before; then `forget` drops it here.
 * - Only live keys are kept, and a kept key that has expired by the clock is read again (a PATCH may
 *   have given it a new expiry): a refusal is never made on a stale row.
 * - Where a call would reach the vendor before admission (a pricing lookup), the caller reads the
 *   row afresh (`fresh`), so a revoked key never makes the vendor do anything.
 */
export class LiveKeys {
  private readonly rows = new Map<string, LiveKey>();

  constructor(
    private readonly ledger: SpendLedger,
    private readonly max = 10_000,
  ) {}

  async find(hash: string, now: number): Promise<LiveKey | null> {
    const kept = this.rows.get(hash);
    if (kept && kept.expires_at > now) return kept;
    return this.fresh(hash, now);
  }

  /** The row as the database has it now (and kept if it is live). */
  async fresh(hash: string, now: number): Promise<LiveKey | null> {
    const key = await this.ledger.findKeyByHash(hash);
    if (key && key.revoked_at === null && key.expires_at > now) {
      if (this.rows.size >= this.max) this.rows.clear(); // keys are short-lived: a bound, not an LRU
      this.rows.set(hash, key);
    } else {
      this.rows.delete(hash);
    }
    return key;
  }

  forget(hash: string): void {
    this.rows.delete(hash);
  }
}
