import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import Stripe from "stripe";
import { loadPricing } from "../src/vendors/pricing.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir, sqliteOf, dbRow, dbRows, readSettled } from "./helpers.ts";
import { ledgerOf, proxied, startProxyStack, stripeThrough, vendorEnv } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack();
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

const pi = (stripe: Stripe, i: number) => stripe.paymentIntents.create({ amount: 2900, currency: "usd", customer: `cus_${i}` });

describe("the seeds' fan-out", () => {
  test("$500 cap, 300 concurrent $29 PaymentIntents: exactly 17 reach Stripe, 283 get StripeRateLimitError", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    const stripe = stripeThrough(kb.url, key.vault_key); // default retries: a cap hit must not be retried
    const results = await Promise.allSettled(Array.from({ length: 300 }, (_, i) => pi(stripe, i)));

    const ok = results.filter((r) => r.status === "fulfilled");
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => r.reason);
    expect(ok).toHaveLength(17);
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents")).toHaveLength(17);
    expect(failed).toHaveLength(283);
    for (const err of failed) {
      expect(err).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
      expect(err.statusCode).toBe(429);
      expect(err.headers["x-keybrake-cap-hit"]).toBe("true");
      expect(err.headers["x-keybrake-error"]).toBe("cap_exceeded");
    }
    expect(fake.calls).toHaveLength(17); // no retries reached the vendor either

    const ledger = await ledgerOf(kb, key.key_id);
    expect(ledger.spent).toBe(493_000_000);
    expect(ledger.daySpent).toBe(493_000_000);
    expect(ledger.reserved).toBe(0);
    expect(ledger.dayReserved).toBe(0);
    expect(ledger.outcomes).toEqual({ forwarded: 17, cap_hit: 283 });

    const view = await kb.api("GET", `/vault/keys/${key.key_id}`);
    expect(view.json).toMatchObject({ spent_today_usd: 493, reserved_usd: 0, remaining_today_usd: 7, spent_total_usd: 493 });
  }, 30_000);

  test("two Keybrake processes on one data dir share the cap: still exactly 17", async () => {
    const { fake } = stack;
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
    const a = await spawnKeybrake(env);
    const b = await spawnKeybrake(env);
    try {
      const key = (await apiCall(a.url, "POST", "/vault/keys", seedKeyBody())).json;
      const calls = Array.from({ length: 300 }, (_, i) =>
        proxied(i % 2 ? a.url : b.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" }),
      );
      const statuses = (await Promise.all(calls)).map((r) => r.status);
      expect(statuses.filter((s) => s === 200)).toHaveLength(17);
      expect(statuses.filter((s) => s === 429)).toHaveLength(283);
      expect(fake.executed).toHaveLength(17);
      // b includes what b answered; a's last settlements commit just after a's answers (bounded wait).
      const view = await readSettled(() => apiCall(b.url, "GET", `/vault/keys/${key.key_id}`).then((r) => r.json), (k) => k.reserved_usd === 0);
      expect(view).toMatchObject({ spent_today_usd: 493, reserved_usd: 0 });
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 60_000);
});

describe("revocation", () => {
  test("after DELETE returns, nothing more reaches the vendor", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 100_000 }));
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 0 });
    let stop = false;
    const workers = Array.from({ length: 20 }, async () => {
      let refused = 0;
      while (!stop) {
        try {
          await pi(stripe, 0);
        } catch (e) {
          expect(e).toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
          refused++;
          if (refused > 3) return;
        }
      }
    });
    await Bun.sleep(150);
    const del = await kb.api("DELETE", `/vault/keys/${key.key_id}`);
    expect(del.status).toBe(200);
    // revoked_at is stamped just before the revocation commits; on PostgreSQL an admission may still
    // commit in between (it held the key's row first). Once DELETE has answered, none can.
    const answeredAt = Date.now();
    const executedAtRevoke = fake.executed.length;
    await Promise.all(workers);
    stop = true;
    expect(executedAtRevoke).toBeGreaterThan(0);
    // Every forwarded call was admitted before the revocation committed…
    const late = (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM audit_log WHERE key_id = ? AND outcome = 'forwarded' AND ts > ?", key.key_id, answeredAt))!;
    expect(late.n).toBe(0);
    // …and the vendor saw no call after the calls in flight at that moment.
    const forwarded = (await ledgerOf(kb, key.key_id)).outcomes.forwarded!;
    expect(fake.executed.length).toBe(forwarded);
    expect((await ledgerOf(kb, key.key_id)).outcomes.revoked).toBeGreaterThanOrEqual(20);
  }, 30_000);

  test("a revoked or expired key is refused with 401 in Stripe's shape", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ expires_in: "1s" }));
    await Bun.sleep(1050);
    const expired = await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" });
    expect(expired.status).toBe(401);
    expect(expired.headers.get("x-keybrake-error")).toBe("key_expired");
    expect(expired.headers.get("stripe-should-retry")).toBe("false");
    expect(expired.json.error).toMatchObject({ type: "invalid_request_error", code: "key_expired" });
    const unknown = await proxied(kb.url, "vk_not_a_real_key", "GET", "/v1/customers/cus_1");
    expect(unknown.status).toBe(401);
    expect(unknown.headers.get("x-keybrake-error")).toBe("invalid_key");
    expect(fake.calls).toHaveLength(0);
  });
});

describe("the allowlist cannot be bypassed", () => {
  const allowed = ["POST /v1/payment_intents", "GET /v1/customers/*"];
  const attempts: [string, string][] = [
    ["POST", "/v1/payment_intents/../refunds"],
    ["POST", "/v1/payment_intents/%2e%2e/refunds"],
    ["POST", "/v1/payment_intents/%2E%2E/refunds"],
    ["GET", "/v1/customers/cus_1%2F..%2F..%2Fbalance"],
    ["GET", "/v1/customers/cus_1%2fx"],
    ["GET", "/v1/customers//cus_1"],
    ["POST", "/v1/payment_intents/"],
    ["POST", "/V1/PAYMENT_INTENTS"],
    ["GET", "/v1/customers/cus_1;x=y"],
    ["GET", "/v1/customers/cus_1%5C..%5Cbalance"],
    ["GET", "/v1/customers/cus_1/../../balance"],
    ["GET", "/v1/balance"],
    ["POST", "/v1/refunds"],
    ["DELETE", "/v1/customers/cus_1"],
    ["GET", "/v1/customers/%00"],
    ["GET", "/v1/customers/cus_1/sources"],
  ];
  for (const [method, path] of attempts) {
    test(`${method} ${path} → 403, nothing forwarded`, async () => {
      const { kb, fake } = stack;
      const key = await kb.issueKey(seedKeyBody({ allowed_endpoints: allowed }));
      for (const prefix of ["", "/stripe"]) {
        const r = await proxied(kb.url, key.vault_key, method, prefix + path, method === "POST" ? { amount: "100", currency: "usd" } : undefined);
        // Some of these the HTTP layer itself normalises into a different path; that path is then refused too.
        expect([403, 404]).toContain(r.status);
        if (r.status === 403) expect(r.headers.get("x-keybrake-error")).toBe("endpoint_not_allowed");
      }
      expect(fake.calls).toHaveLength(0);
    });
  }
  test("allowed calls do pass, with and without the /stripe prefix, Bearer or Basic", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ allowed_endpoints: allowed }));
    // The fake answers 404 for customers it does not know, as Stripe does: what matters is that the calls got through.
    const a = await proxied(kb.url, key.vault_key, "GET", "/v1/customers/cus_1");
    const b = await proxied(kb.url, key.vault_key, "GET", "/stripe/v1/customers/cus_2");
    const c = await fetch(kb.url + "/v1/customers/cus_3", { headers: { authorization: "Basic " + btoa(key.vault_key + ":") } });
    for (const r of [a, b, c]) expect(r.headers.get("x-keybrake-error")).toBeNull();
    expect(fake.calls.map((x) => x.path)).toEqual(["/v1/customers/cus_1", "/v1/customers/cus_2", "/v1/customers/cus_3"]);
    expect(a.headers.get("x-keybrake-cost-usd")).toBe("0.000000");
  });
});

describe("forwarding and settlement", () => {
  test("the vendor sees the real secret, never the vault key; the client never sees the real secret", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ allowed_endpoints: ["POST /v1/payment_intents"], stripe_accounts: ["acct_123"] }));
    // No query string on a write, and Connection may only say close/keep-alive (test/attack-*.test.ts): expand goes in the body.
    const r = await proxied(kb.url, key.vault_key, "POST", "/stripe/v1/payment_intents", { amount: "2900", currency: "usd", "expand[]": "customer" }, {
      "stripe-version": "2024-06-20",
      "stripe-account": "acct_123",
      "idempotency-key": "run-1-cus-1",
      "x-keybrake-cost-usd": "0",
      connection: "keep-alive",
    });
    expect(r.status).toBe(200);
    expect(r.json.id).toMatch(/^pi_/);
    expect(r.headers.get("x-keybrake-cost-usd")).toBe("29.000000");
    expect(r.headers.get("x-keybrake-remaining-usd")).toBe("471.000000");
    expect(r.headers.get("request-id")).toMatch(/^req_/);
    const call = fake.calls[0]!;
    expect(call.path).toBe("/v1/payment_intents");
    expect(call.query).toBe("");
    expect(call.body).toBe("amount=2900&currency=usd&expand[]=customer"); // re-encoded from what was priced
    expect(call.headers.authorization).toBe(`Bearer ${fake.credentials.stripe}`);
    expect(call.headers["stripe-version"]).toBe("2024-06-20");
    expect(call.headers["stripe-account"]).toBe("acct_123");
    expect(call.headers["idempotency-key"]).toBe("run-1-cus-1");
    expect(call.headers["x-keybrake-cost-usd"]).toBeUndefined();
    expect(JSON.stringify(call.headers)).not.toContain(key.vault_key);
    expect(JSON.stringify([...r.headers]) + JSON.stringify(r.json)).not.toContain(fake.credentials.stripe);

    const audit = (await kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data[0];
    expect(audit).toMatchObject({
      outcome: "forwarded",
      vendor: "stripe",
      method: "POST",
      path: "/v1/payment_intents",
      vendor_status: 200,
      estimated_cost_usd: 29,
      settled_cost_usd: 29,
      ledger_state: "settled",
      vendor_object_id: r.json.id,
      vendor_request_id: r.headers.get("request-id"),
      idempotency_key: "run-1-cus-1",
      agent_run_label: key.agent_run_label,
    });
    expect(audit.latency_ms).toBeGreaterThan(0);
  });

  test("a declined charge (402) releases its reservation", async () => {
    const { kb } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 50, allowed_endpoints: ["POST /v1/charges"] }));
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 0 });
    const err = await stripe.charges.create({ amount: 4000, currency: "usd", source: "tok_chargeDeclined" }).catch((e) => e);
    expect(err).toBeInstanceOf(Stripe.errors.StripeCardError);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 0, reserved: 0 });
    const charge = await stripe.charges.create({ amount: 4000, currency: "usd", source: "tok_visa" });
    expect(charge.paid).toBe(true);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 40_000_000, reserved: 0 });
  });

  test("a vendor 500 and a timeout keep the reservation and mark the row unsettled", async () => {
    const { fake } = stack;
    const s = await startProxyStack({ KEYBRAKE_UPSTREAM_TIMEOUT: "300ms" });
    try {
      const key = await s.kb.issueKey(seedKeyBody({ daily_usd_cap: 100 }));
      s.fake.nextBehaviors.push({ kind: "status", status: 500 });
      const five = await proxied(s.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "3000", currency: "usd" });
      expect(five.status).toBe(500);
      expect(five.headers.get("x-keybrake-cost-usd")).toBe("30.000000");
      s.fake.nextBehaviors.push({ kind: "delay", ms: 1000 });
      const slow = await proxied(s.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "4000", currency: "usd" });
      expect(slow.status).toBe(504);
      expect(slow.headers.get("x-keybrake-error")).toBe("upstream_timeout");
      expect(await ledgerOf(s.kb, key.key_id)).toMatchObject({ spent: 0, reserved: 70_000_000, outcomes: { upstream_error: 2 } });
      const rows = (await s.kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
      expect(rows.map((r: any) => r.ledger_state)).toEqual(["unsettled", "unsettled"]);
      // The unknown outcomes still count against the cap: $30 left, a $31 call is refused.
      const over = await proxied(s.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "3100", currency: "usd" });
      expect(over.status).toBe(429);
    } finally {
      await s.stop();
    }
    expect(fake.calls).toHaveLength(0);
  });

  test("an answer cut off mid-body is an unknown outcome: reservation kept, 502, row unsettled", async () => {
    // A vendor that sends its headers and half a JSON body, then drops the connection.
    const cutOff = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch: () =>
        new Response(
          new ReadableStream({
            async pull(c) {
              c.enqueue(new TextEncoder().encode('{"id": "pi_half", "amount": 29'));
              await Bun.sleep(20);
              c.error(new Error("connection lost"));
            },
          }),
          { headers: { "content-type": "application/json" } },
        ),
    });
    const s = await startProxyStack({ KEYBRAKE_STRIPE_BASE_URL: `http://127.0.0.1:${cutOff.port}` });
    try {
      const key = await s.kb.issueKey(seedKeyBody({ daily_usd_cap: 100 }));
      const r = await proxied(s.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
      expect(r.status).toBe(502);
      expect(r.headers.get("x-keybrake-error")).toBe("upstream_unreachable");
      expect(await ledgerOf(s.kb, key.key_id)).toMatchObject({ spent: 0, reserved: 29_000_000, outcomes: { upstream_error: 1 } });
      const [row] = (await s.kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
      expect(row.ledger_state).toBe("unsettled");
    } finally {
      await s.stop();
      cutOff.stop(true);
    }
  });

  test("pricing: zero- and three-decimal currencies, unknown currency refused, free and unpriced writes", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ daily_usd_cap: 1000, allowed_endpoints: ["POST /v1/*", "POST /v1/*/*/*"] }));
    const cost = async (form: Record<string, string>, path = "/v1/payment_intents") =>
      proxied(kb.url, key.vault_key, "POST", path, form);
    const jpy = await cost({ amount: "1000", currency: "jpy" });
    expect(jpy.status).toBe(200);
    expect(jpy.headers.get("x-keybrake-cost-usd")).toBe("6.700000");
    const kwd = await cost({ amount: "1000", currency: "kwd" });
    expect(kwd.headers.get("x-keybrake-cost-usd")).toBe("3.250000");
    const xyz = await cost({ amount: "1000", currency: "xyz" });
    expect(xyz.status).toBe(400);
    expect(xyz.json.error.code).toBe("cannot_price");
    expect(xyz.json.error.message).toContain('"xyz"');
    const noAmount = await cost({ currency: "usd" });
    expect(noAmount.status).toBe(400);
    const customer = await cost({ email: "a@example.com" }, "/v1/customers");
    expect(customer.status).toBe(200);
    expect(customer.headers.get("x-keybrake-cost-usd")).toBe("0.000000");
    const unpriced = await cost({ plan: "x" }, "/v1/subscriptions");
    expect(unpriced.status).toBe(403);
    expect(unpriced.headers.get("x-keybrake-error")).toBe("unpriced_endpoint");
    const confirm = await cost({}, `/v1/payment_intents/${jpy.json.id}/confirm`);
    expect(confirm.status).toBe(200);
    expect(confirm.headers.get("x-keybrake-cost-usd")).toBe("0.000000"); // counted when it was created
    expect(fake.executed.map((c) => c.path)).not.toContain("/v1/subscriptions");
  });
});

describe("KEYBRAKE_PRICING_FILE", () => {
  test("fixed prices and currency rates override the built-in table", async () => {
    const file = `${tempDir()}/pricing.json`;
    await Bun.write(file, JSON.stringify({ currency_rates_usd: { eur: 2 }, fixed_usd: { stripe: { "POST /v1/subscriptions": 49.5, "POST /v1/customers/*/sources": 0 } } }));
    const s = await startProxyStack({ KEYBRAKE_PRICING_FILE: file });
    try {
      const key = await s.kb.issueKey(seedKeyBody({ daily_usd_cap: 1000, allowed_endpoints: ["POST /v1/*", "POST /v1/*/*/*"] }));
      const sub = await proxied(s.kb.url, key.vault_key, "POST", "/v1/subscriptions", { customer: "cus_1" });
      expect(sub.headers.get("x-keybrake-error")).toBeNull(); // priced by the file, not refused as unpriced
      expect((await s.kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data[0].estimated_cost_usd).toBe(49.5);
      const eur = await proxied(s.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "1000", currency: "eur" });
      expect(eur.headers.get("x-keybrake-cost-usd")).toBe("20.000000"); // €10 at 2 USD/EUR
    } finally {
      await s.stop();
    }
  });

  test("a bad pricing file stops start-up, naming what is wrong", () => {
    const file = `${tempDir()}/pricing.json`;
    require("node:fs").writeFileSync(file, JSON.stringify({ fixed_usd: { stripe: { "/v1/subscriptions": 1 } } }));
    expect(() => loadPricing(file)).toThrow(/KEYBRAKE_PRICING_FILE: fixed_usd\.stripe/);
  });
});

describe("secrets stay secret", () => {
  test("the database and the logs hold neither the real secret nor a vault key", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" });
    await kb.services.forwarder.settled();
    if (kb.services.backend.kind === "postgres") {
      // Every row of every table, as text.
      const tables = await dbRows<{ t: string }>(kb.services, "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'public'");
      expect(tables.length).toBeGreaterThan(10);
      for (const { t } of tables) {
        const text = JSON.stringify(await dbRows(kb.services, `SELECT * FROM "${t}"`));
        expect(text).not.toContain(fake.credentials.stripe);
        expect(text).not.toContain(key.vault_key);
      }
      return;
    }
    sqliteOf(kb.services).exec("PRAGMA wal_checkpoint(TRUNCATE)");
    const { readdirSync, readFileSync } = await import("node:fs");
    for (const f of readdirSync(kb.dataDir)) {
      const bytes = readFileSync(`${kb.dataDir}/${f}`).toString("latin1");
      expect(bytes).not.toContain(fake.credentials.stripe);
      expect(bytes).not.toContain(key.vault_key);
    }
  });
});
