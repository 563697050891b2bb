import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir } from "./helpers.ts";
import { proxied, vendorEnv } from "./proxy-setup.ts";

/**
 * The invariants any change to when settlement commits must keep (issue 15): a settlement lost
 * to a crash right after answers only ever leaves money held, and a repeat sent the moment the
 * first answer arrives never runs twice or replays something other than that answer — in one
 * process and across two.
 */
const PI = { amount: "2900", currency: "usd" };
const PI_MICROS = 29_000_000;

let fake: FakeVendor;
beforeAll(async () => {
  fake = await startFakeVendor();
});
afterAll(async () => {
  await fake.stop();
});

function ledgerFile(dataDir: string, keyId: string) {
  const db = new Database(join(dataDir, "keybrake.db"), { readonly: true });
  try {
    const key = db.query("SELECT spent_total_micros AS spent, reserved_total_micros AS reserved FROM vault_keys WHERE id = ?").get(keyId) as { spent: number; reserved: number };
    const rows = db.query("SELECT ledger_state AS state, count(*) AS n FROM audit_log WHERE key_id = ? GROUP BY ledger_state").all(keyId) as { state: string; n: number }[];
    return { ...key, rows: Object.fromEntries(rows.map((r) => [r.state, r.n])) as Record<string, number> };
  } finally {
    db.close();
  }
}

describe("settlement after the answer", () => {
  test("SIGKILL the moment answers arrive: every answered call is settled or still reserved, never lost, and the cap holds", async () => {
    fake.reset();
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
    const kb = await spawnKeybrake(env);
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 29 * 40 }))).json;
    // 30 calls at once; the process dies as soon as the 20th answer is in, while settlements are queued.
    let answered = 0;
    const calls = Array.from({ length: 30 }, () =>
      proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI).then(
        (r) => {
          if (r.status === 200 && ++answered === 20) kb.proc.kill("SIGKILL");
          return r.status;
        },
        () => null,
      ),
    );
    const statuses = await Promise.all(calls);
    await kb.proc.exited;
    const ok = statuses.filter((s) => s === 200).length;
    expect(ok).toBeGreaterThanOrEqual(20);

    const after = ledgerFile(dataDir, key.key_id);
    const executed = fake.movedUsdMicros();
    // What the vendor executed is covered: settled or held, never forgotten.
    expect(after.spent + after.reserved).toBeGreaterThanOrEqual(executed);
    expect(after.spent + after.reserved).toBeLessThanOrEqual(29 * 40 * 1e6);
    // Every answered call's money is on the ledger (a lost settlement keeps the estimate, $29 here).
    expect(after.spent + after.reserved).toBeGreaterThanOrEqual(ok * PI_MICROS);
    expect((after.rows.settled ?? 0) * PI_MICROS).toBe(after.spent);
    expect((after.rows.reserved ?? 0) * PI_MICROS).toBe(after.reserved);

    // After a restart the held money still counts against the cap.
    const again = await spawnKeybrake(env);
    try {
      const view = (await apiCall(again.url, "GET", `/vault/keys/${key.key_id}`)).json;
      expect(Math.round(view.spent_total_usd * 1e6) + Math.round(view.reserved_usd * 1e6)).toBe(after.spent + after.reserved);
      const more = await Promise.all(Array.from({ length: 40 }, () => proxied(again.url, key.vault_key, "POST", "/v1/payment_intents", PI)));
      const final = ledgerFile(dataDir, key.key_id);
      expect(final.spent + final.reserved).toBeLessThanOrEqual(29 * 40 * 1e6);
      expect(more.filter((r) => r.status === 200).length).toBe(40 - (after.spent + after.reserved) / PI_MICROS);
    } finally {
      await again.stop();
    }
  }, 60_000);

  const scenarios = [
    { name: "one process: the repeat is sent the moment the first answer arrives", processes: 1 },
    { name: "two processes on one data dir: the repeat goes to the other process", processes: 2 },
  ];
  for (const sc of scenarios) {
    test(`replays racing settlements, ${sc.name}: executed once, charged once, the same answer`, async () => {
      fake.reset();
      const dataDir = tempDir();
      const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
      const a = await spawnKeybrake(env);
      const b = sc.processes === 2 ? await spawnKeybrake(env) : a;
      try {
        const key = (await apiCall(a.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 29 * 100 }))).json;
        // Idempotency-Keys (Stripe dedupes them too) and, with no key, the dedupe window (Keybrake alone).
        const dedupeKey = (await apiCall(a.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 29 * 100, dedupe_window: "1h" }))).json;
        const pairs = await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const withKey = i % 2 === 0;
            const vk = withKey ? key.vault_key : dedupeKey.vault_key;
            const form = { ...PI, description: `race-${i}` };
            const headers: Record<string, string> = withKey ? { "idempotency-key": `race-${i}` } : {};
            const first = await proxied(a.url, vk, "POST", "/v1/payment_intents", form, headers);
            const repeat = await proxied(b.url, vk, "POST", "/v1/payment_intents", form, headers);
            return { first, repeat };
          }),
        );
        for (const { first, repeat } of pairs) {
          expect(first.status).toBe(200);
          expect(repeat.status).toBe(200);
          expect(repeat.headers.get("idempotent-replayed")).toBe("true");
          expect(repeat.json.id).toBe(first.json.id);
        }
        expect(fake.executed.length).toBe(20);
        // Settlements are in by the time a replay could be served; wait (bounded) only for the last ones to commit.
        let l1 = ledgerFile(dataDir, key.key_id);
        let l2 = ledgerFile(dataDir, dedupeKey.key_id);
        for (let i = 0; i < 100 && l1.reserved + l2.reserved > 0; i++) {
          await Bun.sleep(20);
          l1 = ledgerFile(dataDir, key.key_id);
          l2 = ledgerFile(dataDir, dedupeKey.key_id);
        }
        expect([l1.spent, l1.reserved, l2.spent, l2.reserved]).toEqual([10 * PI_MICROS, 0, 10 * PI_MICROS, 0]);
      } finally {
        if (b !== a) await b.stop();
        await a.stop();
      }
    }, 60_000);
  }
});
