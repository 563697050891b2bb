import { dirname } from "node:path";

/**
 * Makes committed WAL frames durable without blocking the event loop. With synchronous=FULL
 * SQLite fsyncs the WAL inside COMMIT, on the thread that commits: here, the event loop, which
 * then serves nothing for the fsync's 0.2 ms to hundreds of ms. Instead the commit runs NORMAL
 * (frames written, not synced) and a worker thread of its own fsyncs the WAL file; the caller acts
 * on the commit (forwards the call) only once `sync()` resolves. fsync flushes the file whichever
 * descriptor names it, so the frames are on disk exactly as FULL would have left them; a power cut
 * before that loses a commit that nothing has acted on yet.
 *
 * A worker, not node:fs's asynchronous fsync: Bun runs `fs.fsync(fd, cb)` and `FileHandle.sync()`
 * on the calling thread (profiled: 15% of the event loop's time at 32 connections). A worker of its
 * own, not the checkpointer's, so a sync never waits behind a checkpoint pass.
 *
 * A sync covers every commit that finished before it started, so commits that land while one runs
 * share the next one (group fsync). The first also syncs the directory, so the WAL file's own entry
 * survives (SQLite does the same on a WAL's first sync).
 *
 * The worker opens the WAL once and keeps it: the descriptor keeps naming the live WAL because SQLite
 * never replaces that file while a connection is open — it rewrites it from the start, truncates it,
 * and deletes it only when the last connection closes, which cannot happen before this process's own
 * closes (`close`).
 */
const WORKER = `
import { closeSync, fsyncSync, openSync } from "node:fs";
let fd = null;
self.onmessage = (e) => {
  const m = e.data;
  if (m === "stop") {
    if (fd !== null) closeSync(fd);
    self.close();
    return;
  }
  try {
    fd ??= openSync(m.wal, "r");
    fsyncSync(fd);
    if (m.dir) {
      const dir = openSync(m.dir, "r");
      try { fsyncSync(dir); } finally { closeSync(dir); }
    }
    postMessage(null);
  } catch (err) {
    postMessage(String(err && err.message || err));
  }
};
`;

export class WalSync {
  private running: Promise<void> = Promise.resolve();
  private next: Promise<void> | null = null;
  private dirSynced = false;
  private worker: Worker | null = null;
  private url: string | null = null;
  /** The one fsync in flight (they run one after another). */
  private waiting: { resolve: () => void; reject: (e: Error) => void } | null = null;
  /** fsyncs begun so far (for /metrics). */
  syncs = 0;

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

  /** Stops the worker (with the database: after its last commit). */
  close(): void {
    this.worker?.postMessage("stop");
    if (this.url) URL.revokeObjectURL(this.url);
    this.worker = null;
    this.url = null;
  }

  private fsync(): Promise<void> {
    const worker = this.worker ?? this.start();
    const dir = this.dirSynced ? null : dirname(this.databaseFile);
    this.syncs++;
    return new Promise<void>((resolve, reject) => {
      this.waiting = { resolve, reject };
      worker.postMessage({ wal: `${this.databaseFile}-wal`, dir });
    }).then(() => void (this.dirSynced = true));
  }

  private start(): Worker {
    this.url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
    const worker = new Worker(this.url);
    (worker as unknown as { unref(): void }).unref(); // never what keeps a process alive
    worker.onmessage = (e: MessageEvent<string | null>) => {
      const w = this.waiting;
      this.waiting = null;
      if (e.data === null) w?.resolve();
      else w?.reject(new Error(`WAL fsync failed: ${e.data}`));
    };
    // A worker that dies fails its sync (the call is refused, its reservation held); the next sync starts a new one.
    worker.onerror = (e) => {
      const w = this.waiting;
      this.waiting = null;
      this.worker = null;
      w?.reject(new Error(`WAL fsync worker failed: ${e.message}`));
    };
    this.worker = worker;
    return worker;
  }
}
