import { expect, test } from "bun:test";
import { readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { HARD_FRAMES } from "../src/db/checkpointer.ts";
import { openDatabase } from "../src/db/connection.ts";
import { tempDir } from "./helpers.ts";

/** Polls `ok` (bounded: 20 s) so the worker thread gets time; never a timing threshold. */
async function eventually(ok: () => boolean): Promise<boolean> {
  for (let i = 0; i < 400; i++) {
    if (ok()) return true;
    await Bun.sleep(50);
  }
  return ok();
}

test("the worker thread copies the WAL into the database and the WAL restarts, with no checkpoint on the main connection", async () => {
  const dir = tempDir();
  const db = openDatabase(dir);
  try {
    const file = join(dir, "keybrake.db");
    db.sqlite.exec("CREATE TABLE filler (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)");
    const insert = db.sqlite.prepare("INSERT INTO filler (blob) VALUES (?)");
    const before = statSync(file).size;
    // ~3 pages per commit, 600 commits: far below the main connection's own autocheckpoint bound.
    for (let i = 0; i < 600; i++) insert.run(new Uint8Array(10_000).fill(i % 251));
    const wal = join(dir, "keybrake.db-wal");
    const salts = () => Buffer.from(readFileSync(wal).subarray(16, 24)).toString("hex"); // WAL header: new salts on each restart
    const firstSalts = salts();
    expect(statSync(wal).size / (4096 + 24)).toBeGreaterThan(1000);
    expect(statSync(wal).size / (4096 + 24)).toBeLessThan(HARD_FRAMES);
    // Copied by the worker: the database file grows to hold the rows although nothing here checkpointed.
    expect(await eventually(() => statSync(file).size >= before + 600 * 10_000)).toBe(true);
    // Everything copied, so the next commit starts the WAL over (new salts) instead of growing it.
    expect(await eventually(() => (insert.run(new Uint8Array(10)), salts() !== firstSalts))).toBe(true);
    expect(db.sqlite.query("SELECT count(*) AS n FROM filler").get()).toEqual({ n: expect.any(Number) });
  } finally {
    db.sqlite.close();
    rmSync(dir, { recursive: true, force: true });
  }
}, 30_000);
