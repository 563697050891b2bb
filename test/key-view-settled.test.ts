/**
 * GET /vault/keys/{id} right after answers (SPEC §7): settlements commit just after their answers,
 * so the read waits for this replica's answered settlements — and must read the key row after that
 * wait, or spent_total_usd misses calls that reserved_usd and spent_today_usd already include.
 */
import { describe, expect, test } from "bun:test";
import { BACKENDS } from "./backends.ts";
import { startFakeVendor } from "./fake-vendor.ts";
import { seedKeyBody, startKeybrake } from "./helpers.ts";
import { proxied, vendorEnv } from "./proxy-setup.ts";

describe.each(BACKENDS)("key view after a burst, %s", (backend) => {
  test("spent_total_usd, spent_today_usd and reserved_usd all include every answered call", async () => {
    const fake = await startFakeVendor();
    const kb = await startKeybrake(vendorEnv(fake), { backend });
    try {
      const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 10_000 }));
      for (let round = 0; round < 5; round++) {
        const answers = await Promise.all(Array.from({ length: 40 }, () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" })));
        expect(answers.map((a) => a.status)).toEqual(Array(40).fill(200));
        const view = (await kb.api("GET", `/vault/keys/${key.key_id}`)).json;
        const calls = (round + 1) * 40;
        expect([view.spent_total_usd, view.spent_today_usd, view.reserved_usd]).toEqual([calls * 29, calls * 29, 0]);
      }
    } finally {
      await kb.stop();
      await fake.stop();
    }
  }, 60_000);
});
