import type { Database, Statement } from "bun:sqlite";

/** Rows deleted per transaction: small enough that the ledger's group commit never waits long for the write lock. */
export const PRUNE_BATCH_ROWS = 500;
const HOUR_MS = 3_600_000;

/**
 * KEYBRAKE_AUDIT_RETENTION (SPEC §9): audit rows older than the retention are deleted in the
 * background, right after start and then hourly. Each batch is its own short IMMEDIATE
 * transaction on the shared connection, and the loop yields to the event loop between batches,
 * so proxied calls keep committing while a large backlog drains.
 *
 * Idempotency records point at the audit row of the attempt that reserved; a record whose row is
 * pruned goes with it in the same transaction, so no record ever points at a missing row. (They
 * normally expire within 24 h, long before any retention, so this only matters for odd clocks.)
 * Events (the operator trail) are not audit rows and are kept.
 */
export class AuditRetention {
  private readonly oldest: Statement<{ id: number }, [number, number]>;
  private readonly dropRepeats: Statement;
  private readonly dropRows: Statement;
  private timer: ReturnType<typeof setInterval> | null = null;
  private running: Promise<number> | null = null;
  private stopped = false;

  constructor(
    private readonly sqlite: Database,
    /** null: keep forever. */
    private readonly retentionMs: number | null,
    private readonly clock: () => number = Date.now,
    private readonly onError: (message: string) => void = () => {},
  ) {
    // Oldest first through the audit_ts index: a batch reads only the rows it deletes, however large the backlog.
    this.oldest = sqlite.prepare("SELECT id FROM audit_log WHERE ts < ? ORDER BY ts LIMIT ?");
    // Ids travel as one JSON array; idempotency_audit (migration 0006) keeps the first delete to index lookups.
    this.dropRepeats = sqlite.prepare("DELETE FROM idempotency_records WHERE audit_id IN (SELECT value FROM json_each(?))");
    this.dropRows = sqlite.prepare("DELETE FROM audit_log WHERE id IN (SELECT value FROM json_each(?))");
  }

  /** Prunes now and then every hour until stop(). */
  start(): void {
    if (this.retentionMs === null || this.timer) return;
    void this.run();
    this.timer = setInterval(() => void this.run(), HOUR_MS);
    this.timer.unref();
  }

  /** One full pass (batches until nothing is older than the cutoff); concurrent calls share it. Resolves to the rows deleted. */
  run(): Promise<number> {
    if (this.retentionMs === null) return Promise.resolve(0);
    this.running ??= this.pass(this.clock() - this.retentionMs).finally(() => (this.running = null));
    return this.running;
  }

  /** Stops the schedule and waits for a pass under way to end at its next batch boundary. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  /** Deletes one batch older than `cutoff`; returns how many audit rows went. */
  pruneBatch(cutoff: number): number {
    return this.sqlite
      .transaction(() => {
        const ids = this.oldest.all(cutoff, PRUNE_BATCH_ROWS);
        if (ids.length === 0) return 0;
        const list = JSON.stringify(ids.map((r) => r.id));
        this.dropRepeats.run(list);
        return this.dropRows.run(list).changes;
      })
      .immediate();
  }

  private async pass(cutoff: number): Promise<number> {
    let total = 0;
    try {
      while (!this.stopped) {
        const n = this.pruneBatch(cutoff);
        total += n;
        if (n < PRUNE_BATCH_ROWS) break;
        await new Promise((resolve) => setImmediate(resolve)); // let queued proxy commits run
      }
    } catch (e) {
      // The next hourly pass retries; a busy or closing database must not take the process down.
      this.onError(`audit retention: ${(e as Error).message}`);
    }
    return total;
  }
}
