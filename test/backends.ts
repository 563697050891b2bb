/**
 * The two backends (SPEC §1, §8) for parameterised suites: every suite that runs over
 * `BACKENDS` runs once on a fresh SQLite data dir and once on a fresh PostgreSQL database of
 * the run's throwaway cluster (test/pg.ts). Where PostgreSQL is not installed, only SQLite runs;
 * in CI (KEYBRAKE_TEST_POSTGRES=required) a missing PostgreSQL fails instead.
 *
 *   describe.each(BACKENDS)("keys on %s", (backend) => { … startKeybrake({}, { backend }) … });
 */
import { rmSync } from "node:fs";
import { closeBackend, openBackend, type Backend } from "../src/store/backend.ts";
import { tempDir } from "./helpers.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";

export type BackendKind = Backend["kind"];

export const BACKENDS: BackendKind[] = postgresAvailable() ? ["sqlite", "postgres"] : ["sqlite"];

/** A fresh, migrated backend for store-level tests; `close()` also removes a SQLite temp dir. */
export async function openTestBackend(kind: BackendKind, name = "store"): Promise<Backend & { close(): Promise<void> }> {
  const dataDir = tempDir(`keybrake-${name}-`);
  const b = await openBackend({ dataDir, databaseUrl: kind === "postgres" ? await freshDatabase(name) : undefined });
  return Object.assign(b, {
    async close() {
      await closeBackend(b);
      rmSync(dataDir, { recursive: true, force: true });
    },
  });
}
