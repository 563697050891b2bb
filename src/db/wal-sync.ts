import { open } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * Makes committed WAL frames durable without blocking the event loop. With synchronous=FULL
 * SQLite fsyncs the WAL inside COMMIT, on the thread that commits: here, the event loop, which
 * then serves nothing for the fsync's 0.5 ms to hundreds of ms (a fifth of the loop's time at
 * 32 connections, profiled). Instead the commit runs NORMAL (frames written, not synced) and this
 * fsyncs the WAL file on the runtime's I/O thread pool; the caller acts on the commit (forwards the
 * call) only once `sync()` resolves. fsync flushes the file whichever descriptor names it, so the
 * frames are on disk exactly as FULL would have left them; a power cut before that loses a commit
 * that nothing has acted on yet.
 *
 * A sync covers every commit that finished before it started, so commits that land while one runs
 * share the next one (group fsync). The first also syncs the directory, so the WAL file's own entry
 * survives (SQLite does the same on a WAL's first sync).
 */
export class WalSync {
  private running: Promise<void> = Promise.resolve();
  private next: Promise<void> | null = null;
  private dirSynced = false;

  constructor(private readonly databaseFile: string) {}

  /** Resolves once every frame committed before this call is on disk. */
  sync(): Promise<void> {
    // One that has not started yet starts after this commit, so it covers it; one running may not.
    this.next ??= this.running
      .catch(() => {})
      .then(() => {
        this.next = null;
        return (this.running = this.fsync());
      });
    return this.next;
  }

  private async fsync(): Promise<void> {
    await fsyncPath(`${this.databaseFile}-wal`);
    if (!this.dirSynced) {
      await fsyncPath(dirname(this.databaseFile));
      this.dirSynced = true;
    }
  }
}

async function fsyncPath(path: string): Promise<void> {
  const file = await open(path, "r");
  try {
    await file.sync();
  } finally {
    await file.close();
  }
}
