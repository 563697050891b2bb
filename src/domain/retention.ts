import type { AuditStore } from "./audit.ts";

/** Rows deleted per transaction: small enough that the ledger's group commit never waits long for the write lock. */
export const PRUNE_BATCH_ROWS = 500;
const HOUR_MS = 3_600_000;

/**
 * KEYBRAKE_AUDIT_RETENTION (SPEC §9): audit rows older than the retention are deleted in the
 * background, right after start and then hourly. Each batch is its own short transaction (on
 * SQLite an IMMEDIATE one on the shared connection), and the loop yields to the event loop between
 * batches, so proxied calls keep committing while a large backlog drains. Replicas sharing one
 * PostgreSQL database each run this; their batches never take the same rows (src/store/pg/audit.ts).
 *
 * Idempotency records point at the audit row of the attempt that reserved; a record whose row is
 * pruned goes with it in the same transaction, so no record ever points at a missing row. (They
 * normally expire within 24 h, long before any retention, so this only matters for odd clocks.)
 * Events (the operator trail) are not audit rows and are kept.
 */
export class AuditRetention {
  private timer: ReturnType<typeof setInterval> | null = null;
  private running: Promise<number> | null = null;
  private stopped = false;

  constructor(
    private readonly store: Pick<AuditStore, "prune">,
    /** null: keep forever. */
    private readonly retentionMs: number | null,
    private readonly clock: () => number = Date.now,
    private readonly onError: (message: string) => void = () => {},
  ) {}

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
  pruneBatch(cutoff: number): Promise<number> {
    return this.store.prune(cutoff, PRUNE_BATCH_ROWS);
  }

  private async pass(cutoff: number): Promise<number> {
    let total = 0;
    try {
      while (!this.stopped) {
        const n = await this.pruneBatch(cutoff);
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
