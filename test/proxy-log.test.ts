/**
 * Issue 11's proxy half: with KEYBRAKE_LOG=json every proxied call gives exactly one
 * parseable JSON line with its final facts and nothing secret; an internal failure on
 * the proxy path still answers in the vendor's error shape.
 */
import { afterAll, expect, test } from "bun:test";
import Stripe from "stripe";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir } from "./helpers.ts";
import { proxied, startProxyStack, stripeThrough, vendorEnv } from "./proxy-setup.ts";
import { startFakeVendor } from "./fake-vendor.ts";

const fakeP = startFakeVendor();
afterAll(async () => (await fakeP).stop());

test("KEYBRAKE_LOG=json: one JSON line per proxied call, holding no vault key, secret or body", async () => {
  const fake = await fakeP;
  const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: tempDir(), KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "json", ...vendorEnv(fake) });
  try {
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 30 }))).json;
    const marker = "body-marker-7f3a";
    const calls: [string, () => Promise<unknown>][] = [
      ["forwarded", () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd", description: marker })],
      ["cap_hit", () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd", description: marker })],
      ["invalid_request", () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "1", currency: "usd" }, { "content-type": "text/plain" })],
      ["endpoint_denied", () => proxied(kb.url, key.vault_key, "POST", "/v1/refunds", { charge: "ch_1", description: marker })],
      ["invalid_key", () => proxied(kb.url, "vk_not_a_key", "POST", "/v1/payment_intents", { amount: "1", currency: "usd" })],
    ];
    for (const [, call] of calls) await call();
    const callLines = () => kb.output().split("\n").filter((l) => l.includes('"kind":"call"'));
    // The child's stdout arrives through a pipe: wait for it (bounded), rather than for a fixed time.
    for (let i = 0; i < 200 && callLines().length < calls.length; i++) await Bun.sleep(10);
    const lines = callLines();
    expect(lines).toHaveLength(calls.length);
    const entries = lines.map((l) => JSON.parse(l));
    expect(entries.map((e) => e.outcome)).toEqual(calls.map(([o]) => o));
    expect(entries[0]).toMatchObject({ key_id: key.key_id, vendor: "stripe", method: "POST", path: "/v1/payment_intents", status: 200, cost_usd: "29.000000" });
    expect(entries[1]).toMatchObject({ status: 429, error_code: "cap_exceeded" });
    for (const l of lines) {
      for (const secret of [key.vault_key, fake.credentials.stripe, marker, "amount=2900"]) expect(l).not.toContain(secret);
    }
  } finally {
    await kb.stop();
  }
}, 30_000);

test("an internal failure on the proxy path answers in the vendor's shape, never Elysia's envelope", async () => {
  const s = await startProxyStack();
  try {
    const key = await s.kb.issueKey(seedKeyBody());
    s.kb.services.ledger.findKeyByHash = () => {
      throw new Error("disk on fire");
    };
    const err = await stripeThrough(s.kb.url, key.vault_key, { maxNetworkRetries: 0 })
      .paymentIntents.create({ amount: 100, currency: "usd" })
      .catch((e) => e);
    expect(err).toBeInstanceOf(Stripe.errors.StripeAPIError);
    expect(err.statusCode).toBe(500);
    expect(err.headers["x-keybrake-error"]).toBe("internal_error");
    expect(err.message).not.toContain("disk on fire");
    expect(s.fake.calls).toHaveLength(0);
    // SPEC §5: this request left its row too, with bounded fields (the key was never identified).
    const rows = (await s.kb.api("GET", "/vault/audit?outcome=upstream_error")).json.data;
    expect(rows.map((r: any) => [r.key_id, r.error_code, r.path])).toEqual([[null, "internal_error", "/v1/payment_intents"]]);
  } finally {
    await s.stop();
  }
});
