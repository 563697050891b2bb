/**
 * Upstream deadlines on one shared timer. `AbortSignal.timeout()` per call puts a timer in the
 * runtime's heap that can never be cancelled, so at a few thousand calls a second with a 30 s
 * timeout some 100,000 dead timers sit in it. Here a call's deadline is an entry in a set that
 * one interval sweeps; finishing the call removes it. A deadline fires up to `tickMs` late,
 * which is nothing next to a timeout of seconds.
 */
export interface Deadline {
  signal: AbortSignal;
  /** The call is over (its answer is read): forget the deadline. */
  done(): void;
}

interface Entry {
  at: number;
  controller: AbortController;
}

export class Deadlines {
  private readonly pending = new Set<Entry>();
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly tickMs = 50) {}

  start(ms: number): Deadline {
    const entry: Entry = { at: performance.now() + ms, controller: new AbortController() };
    this.pending.add(entry);
    if (this.timer === null) {
      this.timer = setInterval(() => this.sweep(), this.tickMs);
      this.timer.unref(); // a deadline never keeps the process alive
    }
    return { signal: entry.controller.signal, done: () => this.pending.delete(entry) };
  }

  private sweep(): void {
    const now = performance.now();
    for (const e of this.pending) {
      if (e.at > now) continue;
      this.pending.delete(e);
      // The same error AbortSignal.timeout() gives: callers tell a timeout by its name.
      e.controller.abort(new DOMException("The operation timed out.", "TimeoutError"));
    }
    if (this.pending.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
