/**
 * The proxy keeps key rows between calls (src/proxy/live-keys.ts). Every row below changes a key
 * behind the kept copy — from another connection, as another process or replica would — and checks
 * that the next call sees the change exactly as if nothing were kept.
 */
import { Database } from "bun:sqlite";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { seedKeyBody } from "./helpers.ts";
import { proxied, startProxyStack } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
let other: Database;
beforeAll(async () => {
  stack = await startProxyStack();
  other = new Database(join(stack.kb.dataDir, "keybrake.db")); // another process's connection
});
afterAll(async () => {
  other.close();
  await stack.stop();
});
beforeEach(() => stack.fake.reset());

const PI = { amount: "2900", currency: "usd" };
const ENDPOINTS = ["POST /v1/payment_intents", "POST /v1/payment_intents/*/confirm"];
const errorOf = (r: { status: number; headers: Headers }) => `${r.status} ${r.headers.get("x-keybrake-error") ?? ""}`.trim();

describe("kept key rows", () => {
  test("revoked by another process: the next call is 401 key_revoked and nothing reaches the vendor", async () => {
    const key = await stack.kb.issueKey(seedKeyBody());
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("200");
    other.run("UPDATE vault_keys SET revoked_at = ? WHERE id = ?", [Date.now(), key.key_id]);
    const after = [];
    for (let i = 0; i < 2; i++) after.push(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI)));
    expect(after).toEqual(["401 key_revoked", "401 key_revoked"]);
    expect(stack.fake.calls).toHaveLength(1);
  });

  test("revoked by another process before a call priced from the vendor's object: refused before the vendor is asked", async () => {
    const owner = await stack.kb.issueKey(seedKeyBody({ agent_run_label: "owner" }));
    const pi = await proxied(stack.kb.url, owner.vault_key, "POST", "/v1/payment_intents", PI);
    const key = await stack.kb.issueKey(seedKeyBody({ allowed_endpoints: ENDPOINTS }));
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("200");
    other.run("UPDATE vault_keys SET revoked_at = ? WHERE id = ?", [Date.now(), key.key_id]);
    stack.fake.reset();
    // Not this key's object: it would be priced by a GET at the vendor with the real secret.
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${pi.json.id}/confirm`, {}))).toBe("401 key_revoked");
    expect(stack.fake.calls).toHaveLength(0);
  });

  test("expired, then given a new expiry: the next call goes through", async () => {
    const key = await stack.kb.issueKey(seedKeyBody({ expires_in: "1s" }));
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("200");
    const expiresAt = Date.parse(key.expires_at);
    while (Date.now() <= expiresAt) await Bun.sleep(expiresAt - Date.now() + 5); // the clock, not a settlement
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("401 key_expired");
    expect((await stack.kb.api("PATCH", `/vault/keys/${key.key_id}`, { expires_in: "1h" })).status).toBe(200);
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("200");
  });

  test("a cap lowered by another process binds the next call", async () => {
    const key = await stack.kb.issueKey(seedKeyBody({ daily_usd_cap: 100 }));
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("200");
    other.run("UPDATE vault_keys SET daily_cap_micros = ? WHERE id = ?", [40_000_000, key.key_id]);
    expect(errorOf(await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", PI))).toBe("429 cap_exceeded");
  });
});
