/**
 * A reservation is committed before its call is forwarded, so it must survive a power cut, not only a
 * crash of the process: the commit that holds one runs with synchronous=FULL (the WAL is fsynced before
 * it returns); every other commit stays NORMAL. Power loss cannot be staged here, so this checks the
 * durability mode each commit actually ran with, read from inside the commit.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { seedKeyBody } from "./helpers.ts";
import { proxied, startProxyStack } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => (stack = await startProxyStack()));
afterAll(() => stack.stop());

test("a commit that reserves money is synced (FULL); settlements and refusals are not; NORMAL afterwards", async () => {
  const sqlite = stack.kb.services.db.sqlite;
  // The mode in force, read fresh (a cached PRAGMA statement can answer from before the change).
  const mode = () => (sqlite.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous;
  const modes: string[] = [];
  const ledger = stack.kb.services.ledger as unknown as { commitBatch: (b: { durable: boolean }[], r: unknown[]) => void };
  const commit = ledger.commitBatch;
  ledger.commitBatch = (batch, results) => {
    modes.push(`${mode()}:${batch.map((w) => (w.durable ? "reserve" : "other")).join(",")}`);
    return commit(batch, results);
  };
  try {
    const key = await stack.kb.issueKey(seedKeyBody({ daily_usd_cap: 100 }));
    const ok = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(ok.status).toBe(200);
    await stack.kb.services.forwarder.settled(); // its settlement commits after the answer, in a batch of its own here
    const unknown = await proxied(stack.kb.url, "vk_nope", "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(unknown.status).toBe(401);
  } finally {
    ledger.commitBatch = commit;
  }
  // 2 = FULL, 1 = NORMAL: the reservation's commit synced; its settlement and the refusal did not.
  expect(modes).toEqual(["2:reserve", "1:other", "1:other"]);
  expect(mode()).toBe(1);
});
