import type { Database } from "bun:sqlite";

/**
 * WAL checkpoints off the event loop. A checkpoint copies WAL frames into the database file
 * and fsyncs it; run inside the commit that crosses wal_autocheckpoint (SQLite's default),
 * that fsync stalls every call queued behind it (100–600 ms on a busy disk: the p99).
 *
 * Here a worker thread with its own connection runs a PASSIVE checkpoint every POLL_MS (a pass
 * with nothing to copy costs nothing): it takes no lock writers wait on, so calls keep committing while
 * the copy and fsync run. Under sustained load a PASSIVE pass never catches up with the frames
 * written during its own fsync, so the WAL would never restart; the main connection keeps an
 * autocheckpoint at HARD_FRAMES as the bound. When it fires it finds almost everything already
 * copied, so its pass is short, and it ends with nothing left to copy, so the next commit
 * restarts the WAL from the beginning. Durability is SQLite's own: every pass syncs the
 * database file before marking frames as copied (synchronous=NORMAL on both connections).
 */
export const HARD_FRAMES = 8000;
const POLL_MS = 100;

const WORKER = `
import { Database } from "bun:sqlite";
let db = null;
let timer = null;
self.onmessage = (e) => {
  if (e.data === "stop") {
    clearInterval(timer);
    db?.close(); // waits for nothing: a pass is synchronous, so none is running now
    self.close();
    return;
  }
  db = new Database(e.data.file);
  db.exec("PRAGMA busy_timeout = 0");
  db.exec("PRAGMA synchronous = NORMAL");
  const pass = db.prepare("PRAGMA wal_checkpoint(PASSIVE)");
  timer = setInterval(() => {
    try {
      pass.get();
    } catch {} // busy (another process's checkpoint): next time
  }, e.data.pollMs);
};
`;

export interface Checkpointer {
  stop(): void;
}

/** Starts the worker for `file` and moves the main connection's own checkpoints up to the hard bound. */
export function startCheckpointer(sqlite: Database, file: string): Checkpointer {
  sqlite.exec(`PRAGMA wal_autocheckpoint = ${HARD_FRAMES}`);
  const url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
  const worker = new Worker(url);
  (worker as unknown as { unref(): void }).unref(); // never what keeps a process alive
  worker.postMessage({ file, pollMs: POLL_MS });
  return {
    stop() {
      worker.postMessage("stop");
      URL.revokeObjectURL(url);
    },
  };
}
