import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { Resend } from "resend";
import Stripe from "stripe";
import twilio from "twilio";
import { seedKeyBody, sqliteOf, dbRow } from "./helpers.ts";
import { ledgerOf, proxied, startProxyStack, stripeThrough } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack({ KEYBRAKE_UPSTREAM_TIMEOUT: "2s" });
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

const PI = { amount: "2900", currency: "usd" };
const auditRows = async (keyId: string) => (await stack.kb.api("GET", `/vault/audit?key_id=${keyId}`)).json.data.reverse();

describe("Idempotency-Key", () => {
  test("a repeat with the same body is replayed without calling the vendor or charging again", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    const first = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "run-7-cus-1" });
    const again = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "run-7-cus-1" });
    expect(first.status).toBe(200);
    expect(again.status).toBe(200);
    expect(again.json).toEqual(first.json);
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    expect(again.headers.get("request-id")).toBe(first.headers.get("request-id"));
    expect(again.headers.get("x-keybrake-cost-usd")).toBe("0.000000");
    expect(fake.calls).toHaveLength(1);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 29_000_000, reserved: 0 });
    const [orig, replay] = await auditRows(key.key_id);
    expect(replay).toMatchObject({ outcome: "replayed", settled_cost_usd: null, estimated_cost_usd: 0, replay_of: orig.id, vendor_status: 200 });
  });

  test("stripe-node: the same key with another body raises StripeIdempotencyError; nothing reaches Stripe", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 0 });
    await stripe.paymentIntents.create({ amount: 2900, currency: "usd" }, { idempotencyKey: "k-1" });
    const err = await stripe.paymentIntents.create({ amount: 9900, currency: "usd" }, { idempotencyKey: "k-1" }).catch((e) => e);
    expect(err).toBeInstanceOf(Stripe.errors.StripeIdempotencyError);
    expect(err.statusCode).toBe(400);
    expect(fake.calls).toHaveLength(1);
    expect((await ledgerOf(kb, key.key_id)).spent).toBe(29_000_000);
  });

  test("resend-node: idempotencyKey replays; another body is 409 invalid_idempotent_request", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"] }));
    const resend = new Resend(key.vault_key, { baseUrl: `${kb.url}/resend` });
    const email = { from: "x@example.com", to: ["a@example.com", "b@example.com"], subject: "Invoice", text: "hi" };
    const a = await resend.emails.send(email, { idempotencyKey: "welcome/user-1" });
    const b = await resend.emails.send(email, { idempotencyKey: "welcome/user-1" });
    expect(b.data!.id).toBe(a.data!.id);
    const c = await resend.emails.send({ ...email, subject: "Other" }, { idempotencyKey: "welcome/user-1" });
    expect(c.error).toMatchObject({ statusCode: 409, name: "invalid_idempotent_request" });
    expect(fake.calls).toHaveLength(1);
    expect((await ledgerOf(kb, key.key_id)).spent).toBe(1_800);
  });

  test("20 identical requests at once reach the vendor once, and all get its answer", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    fake.nextBehaviors.push({ kind: "delay", ms: 300 });
    const all = await Promise.all(
      Array.from({ length: 20 }, () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "fanout-dup" })),
    );
    expect(all.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(new Set(all.map((r) => r.json.id)).size).toBe(1);
    expect(all.filter((r) => r.headers.get("idempotent-replayed") === "true")).toHaveLength(19);
    expect(fake.calls).toHaveLength(1);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 29_000_000, reserved: 0, outcomes: { forwarded: 1, replayed: 19 } });
  });

  test("the response is lost after Stripe executed it: stripe-node's own retry succeeds, charged once ($30 cap, $29 charge)", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 30 }));
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 2 }); // stripe-node's default
    fake.nextBehaviors.push({ kind: "execute-then-drop" });
    const intent = await stripe.paymentIntents.create({ amount: 2900, currency: "usd", customer: "cus_9" });
    expect(intent.id).toMatch(/^pi_/);
    expect(fake.executed).toHaveLength(1); // executed once
    expect(fake.calls.length).toBe(2); // the retry reached Stripe (which deduped it by the key)
    expect(fake.calls[0]!.headers["idempotency-key"]).toMatch(/^stripe-node-retry-/);
    expect(fake.calls[1]!.headers["idempotency-key"]).toBe(fake.calls[0]!.headers["idempotency-key"]);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 29_000_000, reserved: 0 });
    const [first, retry] = await auditRows(key.key_id);
    expect(first).toMatchObject({ ledger_state: "settled", settled_cost_usd: 29, vendor_object_id: intent.id });
    expect(retry).toMatchObject({ outcome: "forwarded", ledger_state: "none", replay_of: first.id });
  });

  test("a vendor 500 keeps the reservation; the retry with the same key carries it over and settles once", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 30 }));
    fake.nextBehaviors.push({ kind: "status", status: 500 });
    const first = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-500" });
    expect(first.status).toBe(500);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 0, reserved: 29_000_000 });
    // Another call cannot use the money held for the unknown outcome…
    const other = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-other" });
    expect(other.status).toBe(429);
    // …but the retry of the same call goes through on it.
    const retry = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-500" });
    expect(retry.status).toBe(200);
    expect(fake.executed).toHaveLength(1);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 29_000_000, reserved: 0 });
  });

  test("a timeout, then a retry while nothing is known: still one charge", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 30 }));
    fake.nextBehaviors.push({ kind: "delay", ms: 2500 }); // longer than KEYBRAKE_UPSTREAM_TIMEOUT=2s
    const first = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-slow" });
    expect(first.status).toBe(504);
    await Bun.sleep(600); // the vendor finishes executing the first attempt
    const retry = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-slow" });
    expect(retry.status).toBe(200);
    expect(fake.executed).toHaveLength(1);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 29_000_000, reserved: 0 });
  }, 15_000);

  test("an Idempotency-Key over 255 characters is refused, not truncated into another key", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    const long = "k".repeat(300);
    const r = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": long });
    expect(r.status).toBe(400);
    expect(r.headers.get("x-keybrake-error")).toBe("invalid_idempotency_key");
    expect(fake.calls).toHaveLength(0);
  });

  test("a revoked key gets no replay", async () => {
    const { kb } = stack;
    const key = await kb.issueKey(seedKeyBody());
    await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-r" });
    await kb.api("DELETE", `/vault/keys/${key.key_id}`);
    const r = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-r" });
    expect(r.status).toBe(401);
  });

  test("stored answers are pruned after 24 h", async () => {
    const { kb } = stack;
    const key = await kb.issueKey(seedKeyBody());
    await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k-old" });
    const count = async () => (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM idempotency_records WHERE key_id = ?", key.key_id))!.n;
    expect(await count()).toBe(1);
    await kb.services.ledger.pruneRepeats(Date.now() + 23 * 3600_000);
    expect(await count()).toBe(1);
    await kb.services.ledger.pruneRepeats(Date.now() + 24 * 3600_000 + 1000);
    expect(await count()).toBe(0);
  });
});

describe("keys without idempotency", () => {
  test("dedupe_window replays an identical request inside the window, and only an identical one", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ dedupe_window: "1s" }));
    const a = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI);
    const b = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI);
    expect(b.json.id).toBe(a.json.id);
    expect(b.headers.get("idempotent-replayed")).toBe("true");
    const c = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2901", currency: "usd" });
    expect(c.json.id).not.toBe(a.json.id);
    expect(fake.executed).toHaveLength(2);
    await Bun.sleep(1100);
    const d = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI);
    expect(d.json.id).not.toBe(a.json.id);
    expect(fake.executed).toHaveLength(3);
    expect((await ledgerOf(kb, key.key_id)).spent).toBe(29_000_000 * 2 + 29_010_000);
  });

  test("dedupe_window protects Twilio, which has no idempotency of its own", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 1, dedupe_window: "10m", allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] }));
    const client = twilio("AC" + "0".repeat(32), key.vault_key);
    client.api.baseUrl = `${kb.url}/twilio`;
    const msg = { to: "+15005550006", from: "+15005550001", body: "Your code is 1234" };
    const [m1, m2] = await Promise.all([client.messages.create(msg), client.messages.create(msg)]);
    expect(m2.sid).toBe(m1.sid);
    expect(fake.executed).toHaveLength(1);
    expect((await ledgerOf(kb, key.key_id)).spent).toBe(8_300);
  });

  test("require_idempotency_key refuses money-moving calls without one, and only those", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ require_idempotency_key: true, allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/customers"] }));
    const bare = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI);
    expect(bare.status).toBe(400);
    expect(bare.headers.get("x-keybrake-error")).toBe("idempotency_key_required");
    expect(bare.json.error.message).toContain("Idempotency-Key");
    expect(fake.calls).toHaveLength(0);
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/customers", { email: "a@example.com" })).status).toBe(200);
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", PI, { "idempotency-key": "k" })).status).toBe(200);
  });
});
