/**
 * A reservation is committed before its call is forwarded, so it must survive a power cut, not only a
 * crash of the process: the call is forwarded only once the WAL holding that commit is fsynced — by
 * WalSync (src/db/wal-sync.ts), off the event loop, never inside a commit. Settlements and refusals wait
 * for no fsync. Power loss cannot be staged here, so this records, in order, each commit (with the
 * durability mode it ran with, read from inside it), each fsync of the WAL file and the moment the
 * call is sent to the vendor, and checks that the vendor only ever sees a call after an fsync that began after its
 * reservation's commit.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WalSync } from "../src/db/wal-sync.ts";
import { seedKeyBody, sqliteOf } from "./helpers.ts";
import { proxied, startProxyStack } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => (stack = await startProxyStack()));
afterAll(() => stack.stop());

test("a reserving commit is on disk before the vendor sees its call; no commit fsyncs on the event loop; settlements, cap hits and refusals wait for none", async () => {
  const sqlite = sqliteOf(stack.kb.services);
  // The mode in force, read fresh (a cached PRAGMA statement can answer from before the change).
  const mode = () => (sqlite.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous;
  const trail: string[] = [];
  const ledger = stack.kb.services.ledger as unknown as { commitBatch: (b: { durable: boolean }[], r: unknown[]) => void; walSync: WalSync };
  const commit = ledger.commitBatch;
  const fsync = (WalSync.prototype as unknown as { fsync: () => Promise<void> }).fsync;
  ledger.commitBatch = (batch, results) => {
    trail.push(`commit ${mode()}:${batch.map((w) => (w.durable ? "admit" : "other")).join(",")}`);
    return commit(batch, results);
  };
  (ledger.walSync as unknown as { fsync: () => Promise<void> }).fsync = async function (this: WalSync) {
    trail.push("fsync begins");
    await fsync.call(this);
    trail.push("fsync done");
  };
  const forwarder = stack.kb.services.forwarder as unknown as { fetchUpstream: typeof fetch };
  const upstream = forwarder.fetchUpstream;
  forwarder.fetchUpstream = ((...args: Parameters<typeof fetch>) => (trail.push("vendor"), upstream(...args))) as typeof fetch;
  try {
    const key = await stack.kb.issueKey(seedKeyBody({ daily_usd_cap: 50 }));
    trail.length = 0;
    const ok = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(ok.status).toBe(200);
    await stack.kb.services.forwarder.settled(); // its settlement commits after the answer, in a batch of its own here
    const capHit = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(capHit.status).toBe(429); // $29 spent, $29 more does not fit under $50: nothing is forwarded
    const unknown = await proxied(stack.kb.url, "vk_nope", "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(unknown.status).toBe(401);
  } finally {
    forwarder.fetchUpstream = upstream;
    ledger.commitBatch = commit;
    delete (ledger.walSync as unknown as { fsync?: unknown }).fsync;
  }
  // 1 = NORMAL: no commit syncs inside itself; the reservation's fsync runs after its commit and before the vendor.
  // The cap hit's admission commits and is answered with no fsync: it forwarded nothing.
  expect(trail).toEqual(["commit 1:admit", "fsync begins", "fsync done", "vendor", "commit 1:other", "commit 1:admit", "commit 1:other"]);
  expect(mode()).toBe(1);
});

test("WalSync: a sync asked for while one runs waits for the next, which begins after it was asked; callers meanwhile share it", async () => {
  const begun: number[] = [];
  const release: (() => void)[] = [];
  const w = new WalSync("/nonexistent/keybrake.db");
  (w as unknown as { fsync: () => Promise<void> }).fsync = () => {
    begun.push(performance.now());
    return new Promise<void>((resolve) => release.push(resolve));
  };
  const first = w.sync();
  await Promise.resolve();
  await Promise.resolve();
  expect(begun).toHaveLength(1);
  const askedAt = performance.now();
  const second = w.sync();
  const third = w.sync();
  expect(third).toBe(second); // one fsync serves every commit that landed while the first ran
  await Bun.sleep(1);
  expect(begun).toHaveLength(1); // not while the first runs: it may have begun before their commits
  release.shift()!();
  await first;
  while (begun.length < 2) await Promise.resolve();
  expect(begun[1]!).toBeGreaterThanOrEqual(askedAt);
  release.shift()!();
  await second;
});

test("WalSync: the WAL stays open once across syncs (a worker thread holds it), a failure rejects its sync, and the next sync starts afresh", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kb-walsync-"));
  const db = join(dir, "keybrake.db");
  const missing = new WalSync(join(dir, "absent", "keybrake.db"));
  await expect(missing.sync()).rejects.toThrow(/WAL fsync failed: .*ENOENT/);
  await expect(missing.sync()).rejects.toThrow(/WAL fsync failed/); // not stuck behind the failed one
  missing.close();

  writeFileSync(`${db}-wal`, "frames");
  const openWal = () => readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === `${db}-wal`;
    } catch {
      return false; // closed meanwhile
    }
  }).length;
  const w = new WalSync(db);
  for (let i = 0; i < 3; i++) await w.sync();
  expect(openWal()).toBe(1);
  w.close();
  for (let i = 0; i < 100 && openWal() > 0; i++) await Bun.sleep(10);
  expect(openWal()).toBe(0);
  rmSync(dir, { recursive: true, force: true });
});
