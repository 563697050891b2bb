/**
 * Issue 10, as an attacker holding an ordinary vault key would try it: one test per
 * family of request shapes that once made the vendor execute more than Keybrake counted.
 * The fake vendor models each vendor's money semantics and reports what it moved; every
 * test ends with `moneyHolds`: money moved ≤ money Keybrake counted (settled + reserved).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { loadPricing } from "../src/vendors/pricing.ts";
import { seedKeyBody, tempDir, sqliteOf, dbRow } from "./helpers.ts";
import { ledgerOf, proxied, startProxyStack } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack();
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

const FORM = "application/x-www-form-urlencoded";

/** A proxied call with a raw body and headers exactly as given. */
async function raw(vaultKey: string, method: string, path: string, body: string | undefined, headers: Record<string, string> = {}) {
  const res = await fetch(stack.kb.url + path, { method, headers: { authorization: `Bearer ${vaultKey}`, ...headers }, body });
  const text = await res.text();
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, json };
}

/** The invariant, over every key issued in a test: what the vendor moved ≤ what Keybrake counted. */
async function moneyHolds(...keyIds: string[]) {
  let counted = 0;
  for (const id of keyIds) {
    const l = await ledgerOf(stack.kb, id);
    counted += l.spent + l.reserved;
  }
  expect(stack.fake.movedUsdMicros()).toBeLessThanOrEqual(counted);
}

function stripeKey(over: Record<string, unknown> = {}) {
  return stack.kb.issueKey(seedKeyBody({ daily_usd_cap: 10_000, ...over }));
}

function expectAmbiguous(r: { status: number; headers: Headers; json: any }, says: string) {
  expect(r.status).toBe(400);
  expect(r.headers.get("x-keybrake-error")).toBe("ambiguous_request");
  expect(r.json.error.type).toBe("invalid_request_error"); // Stripe's shape: stripe-node raises StripeInvalidRequestError
  expect(r.json.error.message).toContain(says);
}

describe("1. two parsers disagree", () => {
  const cases: [string, string, Record<string, string>, string, string][] = [
    ["repeated amount (Rack keeps the last)", "amount=100&amount=100000&currency=usd", {}, "", "given more than once"],
    ["repeated currency", "amount=100&currency=idr&currency=usd", {}, "", "given more than once"],
    ["a ';' separator (Rack 2 splits on it)", "amount=100;amount=100000&currency=usd", {}, "", 'raw ";"'],
    ["a space after '&' (Rack drops it)", "amount=100& amount=100000&currency=usd", {}, "", 'raw " "'],
    ["a bracketed name Rack strips to amount", "amount=100&[amount]=100000&currency=usd", {}, "", "is not of the form"],
    ["a trailing ']' Rack strips", "amount=100&amount]=100000&currency=usd", {}, "", "is not of the form"],
    ["amount as a value and a list", "amount=100&amount[]=100000&currency=usd", {}, "", "both as a value"],
    ["a query string on a write", "amount=100&currency=usd", {}, "?amount=100000", "query string"],
    ["JSON instead of a form", '{"amount":100000,"currency":"usd"}', { "content-type": "application/json" }, "", "Content-Type"],
    ["a form under text/plain", "amount=100&currency=usd", { "content-type": "text/plain" }, "", "Content-Type"],
    ["a gzip Content-Encoding", "amount=100&currency=usd", { "content-encoding": "gzip" }, "", "Content-Encoding"],
    ["a malformed escape", "amount=100&currency=usd%2", {}, "", "percent-escape"],
  ];
  for (const [name, body, headers, query, says] of cases) {
    test(`${name} → 400 ambiguous_request, nothing reaches Stripe`, async () => {
      const key = await stripeKey();
      const r = await raw(key.vault_key, "POST", `/v1/payment_intents${query}`, body, { "content-type": FORM, ...headers });
      expectAmbiguous(r, says);
      expect(stack.fake.calls).toHaveLength(0);
      await moneyHolds(key.key_id);
    });
  }

  test("what is forwarded is re-encoded from exactly what was priced", async () => {
    const key = await stripeKey();
    const r = await raw(key.vault_key, "POST", "/v1/payment_intents", "amount=0100&currency=USD&metadata%5Bnote%5D=a+b%26c", { "content-type": FORM });
    expect(r.status).toBe(200);
    expect(r.headers.get("x-keybrake-cost-usd")).toBe("1.000000");
    expect(stack.fake.calls[0]!.body).toBe("amount=0100&currency=USD&metadata[note]=a%20b%26c");
    await moneyHolds(key.key_id);
  });
});

describe("2. money moved later, on an existing object", () => {
  test("a cheap-currency PaymentIntent updated to USD is priced at the difference; the confirm costs nothing more", async () => {
    const key = await stripeKey({ allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/payment_intents/*", "POST /v1/payment_intents/*/confirm"] });
    const pi = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100000", currency: "idr" }); // $0.062
    expect(pi.headers.get("x-keybrake-cost-usd")).toBe("0.062000");
    const update = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${pi.json.id}`, { currency: "usd" });
    expect(update.status).toBe(200);
    expect(update.headers.get("x-keybrake-cost-usd")).toBe("999.938000"); // $1,000 less the $0.062 already counted
    const confirm = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${pi.json.id}/confirm`, {});
    expect(confirm.status).toBe(200);
    expect(confirm.headers.get("x-keybrake-cost-usd")).toBe("0.000000");
    expect(stack.fake.movedUsdMicros()).toBe(1_000_000_000);
    await moneyHolds(key.key_id);
  });

  test("an object id seen in a GET (or made by another key, or outside Keybrake) is priced from Stripe, not free", async () => {
    const { fake } = stack;
    const outside = await fetch(`${fake.url}/v1/payment_intents`, {
      method: "POST",
      headers: { authorization: `Bearer ${fake.credentials.stripe}`, "content-type": FORM },
      body: "amount=50000&currency=usd&capture_method=manual",
    }).then((r) => r.json() as Promise<{ id: string }>);
    fake.moved.length = 0;
    const key = await stripeKey({ allowed_endpoints: ["GET /v1/payment_intents/*", "POST /v1/payment_intents/*/confirm", "POST /v1/payment_intents/*/capture"] });
    const seen = await proxied(stack.kb.url, key.vault_key, "GET", `/v1/payment_intents/${outside.id}`);
    expect(seen.status).toBe(200);
    const confirm = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${outside.id}/confirm`, {});
    expect(confirm.headers.get("x-keybrake-cost-usd")).toBe("500.000000"); // looked up at Stripe with the real secret
    const capture = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${outside.id}/capture`, {});
    expect(capture.headers.get("x-keybrake-cost-usd")).toBe("0.000000"); // this key has now paid for it
    expect(fake.calls.filter((c) => c.method === "GET" && c.path === `/v1/payment_intents/${outside.id}`)).toHaveLength(2);
    await moneyHolds(key.key_id);

    const other = await stripeKey({ allowed_endpoints: ["POST /v1/payment_intents/*/capture"] });
    const again = await proxied(stack.kb.url, other.vault_key, "POST", `/v1/payment_intents/${outside.id}/capture`, {});
    expect(again.headers.get("x-keybrake-cost-usd")).toBe("500.000000"); // another key's record is not this key's
  });

  test("a refund is priced in its charge's currency, not as USD cents", async () => {
    const key = await stripeKey({ allowed_endpoints: ["POST /v1/charges", "POST /v1/refunds"] });
    const charge = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/charges", { amount: "1000", currency: "kwd", source: "tok_visa" });
    expect(charge.headers.get("x-keybrake-cost-usd")).toBe("3.250000");
    const refund = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/refunds", { charge: charge.json.id, amount: "1000" });
    expect(refund.status).toBe(200);
    expect(refund.headers.get("x-keybrake-cost-usd")).toBe("3.250000"); // 1.000 KWD, not $10.00
    const sneaky = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/refunds", { charge: charge.json.id, amount: "1000", currency: "idr" });
    expect(sneaky.status).toBe(400);
    await moneyHolds(key.key_id);
  });
});

describe("3. free writes that turn into money", () => {
  test("an auto-advancing invoice is refused; finalize and pay are priced at amount_due", async () => {
    const key = await stripeKey({ allowed_endpoints: ["POST /v1/customers", "POST /v1/invoiceitems", "POST /v1/invoices", "POST /v1/invoices/*/finalize", "POST /v1/invoices/*/pay"] });
    const cus = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/customers", { email: "a@example.com" });
    const item = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/invoiceitems", { customer: cus.json.id, amount: "70000", currency: "usd" });
    expect(item.headers.get("x-keybrake-cost-usd")).toBe("0.000000");
    const auto = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/invoices", { customer: cus.json.id });
    expect(auto.status).toBe(400);
    expect(auto.json.error.message).toContain("auto_advance=false");
    const inv = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/invoices", { customer: cus.json.id, auto_advance: "false" });
    expect(inv.status).toBe(200);
    const finalize = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/invoices/${inv.json.id}/finalize`, { auto_advance: "true" });
    expect(finalize.headers.get("x-keybrake-cost-usd")).toBe("700.000000"); // Stripe collects it by itself
    await proxied(stack.kb.url, key.vault_key, "POST", "/v1/invoiceitems", { customer: cus.json.id, amount: "5000", currency: "eur" });
    const manual = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/invoices", { customer: cus.json.id, auto_advance: "false" });
    const quiet = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/invoices/${manual.json.id}/finalize`, {});
    expect(quiet.headers.get("x-keybrake-cost-usd")).toBe("0.000000"); // looked up: it does not auto-advance
    const pay = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/invoices/${manual.json.id}/pay`, {});
    expect(pay.headers.get("x-keybrake-cost-usd")).toBe("54.000000"); // EUR 50.00 as Stripe has it now
    await moneyHolds(key.key_id);
  });

  test("legacy /v1/customers/{id}/subscriptions and Resend broadcasts that send are refused, even with allow_unpriced", async () => {
    const key = await stripeKey({ allow_unpriced: true, allowed_endpoints: ["POST /v1/customers", "POST /v1/customers/*/*", "POST /v1/prices", "POST /v1/subscriptions"] });
    const cus = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/customers", {});
    const sub = await proxied(stack.kb.url, key.vault_key, "POST", `/v1/customers/${cus.json.id}/subscriptions`, { plan: "price_x" });
    expect(sub.status).toBe(403);
    expect(sub.headers.get("x-keybrake-error")).toBe("unpriced_endpoint");
    const sub2 = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/subscriptions", { customer: cus.json.id, "items[0][price]": "price_x" });
    expect(sub2.status).toBe(403);

    const mail = await stack.kb.issueKey(seedKeyBody({ vendor: "resend", daily_usd_cap: 100, allow_unpriced: true, allowed_endpoints: ["POST /audiences", "POST /audiences/*/contacts", "POST /broadcasts", "POST /broadcasts/*/send"] }));
    const json = { "content-type": "application/json" };
    const aud = await raw(mail.vault_key, "POST", "/audiences", JSON.stringify({ name: "all" }), json);
    for (let i = 0; i < 5; i++) await raw(mail.vault_key, "POST", `/audiences/${aud.json.id}/contacts`, JSON.stringify({ email: `u${i}@example.com` }), json);
    const now = await raw(mail.vault_key, "POST", "/broadcasts", JSON.stringify({ audience_id: aud.json.id, from: "a@x.test", subject: "s", html: "h", send: true }), json);
    expect(now.status).toBe(400);
    expect(now.json).toMatchObject({ statusCode: 400, name: "validation_error" });
    const draft = await raw(mail.vault_key, "POST", "/broadcasts", JSON.stringify({ audience_id: aud.json.id, from: "a@x.test", subject: "s", html: "h" }), json);
    expect(draft.status).toBe(200);
    const send = await raw(mail.vault_key, "POST", `/broadcasts/${draft.json.id}/send`, undefined);
    expect(send.status).toBe(403);
    expect(stack.fake.moved).toEqual([]);
    await moneyHolds(key.key_id, mail.key_id);
  });
});

describe("4. Twilio priced by destination", () => {
  const SEND = "POST /2010-04-01/Accounts/*/Messages.json";
  const path = "/twilio/2010-04-01/Accounts/AC0/Messages.json";
  const cases: [string, Record<string, string>, number | string][] = [
    ["a US number at $0.0083 a segment", { To: "+15005550006", From: "+15005550001", Body: "hi" }, "0.008300"],
    ["a UK number at the UK rate", { To: "+447700900123", From: "+15005550001", Body: "hi" }, "0.052000"],
    ["Jamaica (+1 876) is not priced as the US", { To: "+18765550123", From: "+15005550001", Body: "hi" }, "0.130000"],
    ["a destination with no rate is refused", { To: "+37120000000", From: "+15005550001", Body: "hi" }, 400],
    ["a premium network is refused", { To: "+882100000000", From: "+15005550001", Body: "hi" }, 400],
    ["a ContentSid is priced at the worst case (49 segments)", { To: "+15005550006", From: "+15005550001", ContentSid: "HX" + "a".repeat(32) }, "0.406700"],
    ["a Body over 1,600 characters is refused before counting", { To: "+15005550006", From: "+15005550001", Body: "x".repeat(1601) }, 400],
    ["To given twice (in two cases) is refused", { To: "+15005550006", to: "+882100000000", From: "+15005550001", Body: "hi" }, 400],
  ];
  for (const [name, form, expected] of cases) {
    test(name, async () => {
      const key = await stack.kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 10, allowed_endpoints: [SEND] }));
      stack.fake.twilioTemplates["HX" + "a".repeat(32)] = "😀".repeat(1600); // the longest template there is: 49 segments
      const auth = { authorization: "Basic " + btoa(`AC${"0".repeat(32)}:${key.vault_key}`), "content-type": FORM };
      const res = await fetch(stack.kb.url + path, { method: "POST", headers: auth, body: new URLSearchParams(form).toString() });
      if (typeof expected === "number") {
        expect(res.status).toBe(expected);
        expect(((await res.json()) as any).details.keybrake_error).toMatch(/cannot_price|ambiguous_request/);
        expect(stack.fake.calls).toHaveLength(0);
      } else {
        expect(res.status).toBe(201);
        expect(res.headers.get("x-keybrake-cost-usd")).toBe(expected);
      }
      await moneyHolds(key.key_id);
    });
  }
});

test("4. the pricing file adds destinations and names a template's segments; a bad entry stops start-up, naming it", async () => {
  const dir = tempDir();
  const sid = "HX" + "b".repeat(32);
  await Bun.write(`${dir}/pricing.json`, JSON.stringify({ twilio: { destination_usd: { "+371": 0.12 }, content_sid_segments: { [sid]: 2 } } }));
  const s = await startProxyStack({ KEYBRAKE_PRICING_FILE: `${dir}/pricing.json` });
  try {
    const key = await s.kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 10, allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] }));
    s.fake.twilioTemplates[sid] = "Your code is 1234";
    const send = (form: Record<string, string>) =>
      fetch(s.kb.url + "/twilio/2010-04-01/Accounts/AC0/Messages.json", {
        method: "POST",
        headers: { authorization: "Basic " + btoa(`AC${"0".repeat(32)}:${key.vault_key}`), "content-type": FORM },
        body: new URLSearchParams(form).toString(),
      });
    expect((await send({ To: "+37120000000", From: "+15005550001", Body: "hi" })).headers.get("x-keybrake-cost-usd")).toBe("0.120000");
    expect((await send({ To: "+15005550006", From: "+15005550001", ContentSid: sid })).headers.get("x-keybrake-cost-usd")).toBe("0.016600");
  } finally {
    await s.stop();
  }
  await Bun.write(`${dir}/bad.json`, JSON.stringify({ twilio: { destination_usd: { "44x": 0.1 } } }));
  expect(() => loadPricing(`${dir}/bad.json`)).toThrow(/twilio\.destination_usd\.44x/);
});

describe("5. headers that remove headers", () => {
  test("Connection naming Idempotency-Key is refused, so a retry can never be forwarded on the first reservation", async () => {
    const key = await stripeKey();
    const r = await raw(key.vault_key, "POST", "/v1/payment_intents", "amount=2900&currency=usd", {
      "content-type": FORM,
      "idempotency-key": "once",
      connection: "close, Idempotency-Key",
    });
    expectAmbiguous(r, "Connection");
    expect(stack.fake.calls).toHaveLength(0);
  });
});

describe("6. cheap denial of service", () => {
  test("bodies are bounded at 1 MiB while they stream in; unknown keys leave bounded audit rows", async () => {
    const key = await stack.kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 0, allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] }));
    const auth = { authorization: "Basic " + btoa(`AC${"0".repeat(32)}:${key.vault_key}`), "content-type": FORM };
    const path = "/twilio/2010-04-01/Accounts/AC0/Messages.json";
    // Declared too large: refused before a byte is read.
    const declared = await fetch(stack.kb.url + path, { method: "POST", headers: auth, body: "Body=" + "x".repeat(1024 * 1024 + 100) });
    expect(declared.status).toBe(413);
    // Streamed without a length, 512 bytes past the bound (inside Bun's own slack): Keybrake's reader cuts it off.
    const chunk = new Uint8Array(64 * 1024).fill(120);
    let sent = 0;
    const stream = new ReadableStream({
      pull(c) {
        if (sent < 16) c.enqueue(chunk);
        else if (sent === 16) c.enqueue(chunk.slice(0, 512));
        else c.close();
        sent++;
      },
    });
    const streamed = await fetch(stack.kb.url + path, { method: "POST", headers: auth, body: stream });
    expect(streamed.status).toBe(413);
    expect(((await streamed.json()) as any).details.keybrake_error).toBe("body_too_large");
    expect(stack.fake.calls).toHaveLength(0);

    const flood = await raw("vk_" + "z".repeat(40), "POST", "/v1/" + "a".repeat(2000), "x", { "idempotency-key": "k".repeat(255) });
    expect(flood.status).toBe(401);
    const row = (await dbRow<{ path: string; idempotency_key: string | null }>(stack.kb.services, "SELECT path, idempotency_key FROM audit_log WHERE key_id IS NULL ORDER BY id DESC LIMIT 1"))!;
    expect(row.path.length).toBeLessThanOrEqual(128);
    expect(row.idempotency_key).toBeNull();

    const login = await fetch(stack.kb.url + "/admin/login", { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "token=" + "x".repeat(2 * 1024 * 1024) }).catch(() => null);
    expect(login?.status ?? 413).toBe(413); // bounded by Bun before the admin form is parsed (a reset also proves it)
  });
});

describe("7. routing never reads the Host header", () => {
  async function rawHttp(request: string): Promise<string> {
    return new Promise((resolve) => {
      let buf = "";
      Bun.connect({
        hostname: "127.0.0.1",
        port: stack.kb.port,
        socket: {
          open: (s) => void s.write(request),
          data: (_, d) => void (buf += d.toString()),
          close: () => resolve(buf),
          error: () => resolve(buf),
        },
      });
    });
  }
  for (const [name, head] of [
    ["Host: kb", "HTTP/1.1\r\nHost: kb\r\nConnection: close"],
    ["HTTP/1.0 without Host", "HTTP/1.0"],
  ] as const) {
    test(`${name}: /v1/payment_intents is forwarded as /v1/payment_intents`, async () => {
      const key = await stripeKey();
      const body = "amount=100&currency=usd";
      const res = await rawHttp(`POST /v1/payment_intents ${head}\r\nAuthorization: Bearer ${key.vault_key}\r\nContent-Type: ${FORM}\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      expect(res).toStartWith("HTTP/1.1 200");
      expect(stack.fake.calls.map((c) => c.path)).toEqual(["/v1/payment_intents"]);
    });
  }
});

describe("8. Connect", () => {
  test("Stripe-Account is forwarded only for accounts in the key's stripe_accounts", async () => {
    const key = await stripeKey({ stripe_accounts: ["acct_1Allowed"] });
    expect(key.stripe_accounts).toEqual(["acct_1Allowed"]);
    const other = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "stripe-account": "acct_1Other" });
    expect(other.status).toBe(403);
    expect(other.headers.get("x-keybrake-error")).toBe("stripe_account_not_allowed");
    const ok = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "stripe-account": "acct_1Allowed" });
    expect(ok.status).toBe(200);
    expect(stack.fake.calls.map((c) => c.headers["stripe-account"])).toEqual(["acct_1Allowed"]);
    const context = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "stripe-context": "acct_1Other" });
    expect(context.status).toBe(403);
    const plain = await stripeKey();
    const none = await proxied(stack.kb.url, plain.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "stripe-account": "acct_1Allowed" });
    expect(none.status).toBe(403);
    const bad = await stack.kb.api("POST", "/vault/keys", seedKeyBody({ stripe_accounts: ["cus_1"] }));
    expect(bad.status).toBe(400);
    expect(JSON.stringify(bad.json.error.details)).toContain("stripe_accounts");
  });
});

describe("9. doors found in review: credentials, other routes to money, spellings", () => {
  const twilioAuth = (vaultKey: string) => ({ authorization: "Basic " + btoa(`AC${"0".repeat(32)}:${vaultKey}`) });
  // [scenario, key overrides, method, path, body, content type, status, X-Keybrake-Error]
  const cases: [string, Record<string, unknown>, string, string, string | undefined, string | undefined, number, string][] = [
    ["Resend: mint a full-access API key", { vendor: "resend", allowed_endpoints: ["POST /*"], allow_unpriced: true }, "POST", "/resend/api-keys", '{"name":"x","permission":"full_access"}', "application/json", 403, "credential_endpoint"],
    ["Resend: list API keys", { vendor: "resend", allowed_endpoints: ["GET /*"] }, "GET", "/resend/api-keys", undefined, undefined, 403, "credential_endpoint"],
    ["Resend: delete Keybrake's own key", { vendor: "resend", allowed_endpoints: ["DELETE /*/*"], allow_unpriced: true }, "DELETE", "/resend/API-Keys/k_1", undefined, undefined, 403, "credential_endpoint"],
    ["Twilio: read the account (it holds auth_token)", { vendor: "twilio", allowed_endpoints: ["GET /2010-04-01/Accounts/*"] }, "GET", "/twilio/2010-04-01/Accounts/AC0.json", undefined, undefined, 403, "credential_endpoint"],
    ["Twilio: create a subaccount", { vendor: "twilio", allowed_endpoints: ["POST /2010-04-01/*"], allow_unpriced: true }, "POST", "/twilio/2010-04-01/Accounts.json", "FriendlyName=x", FORM, 403, "credential_endpoint"],
    ["Twilio: mint an API key", { vendor: "twilio", allowed_endpoints: ["POST /2010-04-01/Accounts/*/*"], allow_unpriced: true }, "POST", "/twilio/2010-04-01/Accounts/AC0/Keys.json", "FriendlyName=x", FORM, 403, "credential_endpoint"],
    ["Stripe: an ephemeral key", { allowed_endpoints: ["POST /v1/ephemeral_keys"], allow_unpriced: true }, "POST", "/v1/ephemeral_keys", "customer=cus_1", FORM, 403, "credential_endpoint"],
    ["Stripe: the older refund route", { allowed_endpoints: ["POST /v1/charges/*/refunds"], allow_unpriced: true }, "POST", "/v1/charges/ch_1/refunds", "amount=100000", FORM, 403, "unpriced_endpoint"],
    ["Stripe: a transfer reversal", { allowed_endpoints: ["POST /v1/transfers/*/reversals"], allow_unpriced: true }, "POST", "/v1/transfers/tr_1/reversals", "amount=100000", FORM, 403, "unpriced_endpoint"],
    ["Stripe: a credit note that refunds", { allowed_endpoints: ["POST /v1/credit_notes"], allow_unpriced: true }, "POST", "/v1/credit_notes", "invoice=in_1&refund_amount=100000", FORM, 403, "unpriced_endpoint"],
    ["Twilio: Messages without .json is priced by destination too", { vendor: "twilio", allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages"], allow_unpriced: true }, "POST", "/twilio/2010-04-01/Accounts/AC0/Messages", "To=%2B882100000000&From=%2B15005550001&Body=hi", FORM, 400, "cannot_price"],
    ["Resend: recipients under another spelling", { vendor: "resend", allowed_endpoints: ["POST /emails"] }, "POST", "/resend/emails", JSON.stringify({ from: "a@b.co", to: [], Bcc: Array.from({ length: 50 }, (_, i) => `u${i}@x.co`), subject: "s", text: "t" }), "application/json", 400, "cannot_price"],
  ];
  for (const [name, over, method, path, body, type, status, code] of cases) {
    test(`${name} → ${status} ${code}, nothing reaches the vendor`, async () => {
      const key = await stripeKey(over);
      const headers: Record<string, string> = over.vendor === "twilio" ? twilioAuth(key.vault_key) : { authorization: `Bearer ${key.vault_key}` };
      if (type) headers["content-type"] = type;
      const res = await fetch(stack.kb.url + path, { method, headers, body });
      expect(res.status).toBe(status);
      expect(res.headers.get("x-keybrake-error")).toBe(code);
      expect(stack.fake.calls).toHaveLength(0);
      await moneyHolds(key.key_id);
    });
  }

  test("a ContentSid named like an Object property is priced at the worst case, not NaN", async () => {
    const key = await stripeKey({ vendor: "twilio", allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] });
    const res = await fetch(stack.kb.url + "/twilio/2010-04-01/Accounts/AC0/Messages.json", {
      method: "POST",
      headers: { ...twilioAuth(key.vault_key), "content-type": FORM },
      body: new URLSearchParams({ To: "+15005550006", From: "+15005550001", ContentSid: "constructor" }).toString(),
    });
    expect(res.status).toBe(400); // Twilio's own answer: no such template (Keybrake forwarded it, priced)
    const rows = (await stack.kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
    expect(rows.map((r: any) => [r.outcome, r.estimated_cost_usd])).toEqual([["forwarded", 0.4067]]); // 49 segments at $0.0083
    await moneyHolds(key.key_id);
  });

  test("an overcapture is priced at what it asks, beyond the PaymentIntent's amount", async () => {
    const key = await stripeKey({ allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/payment_intents/*/capture"] });
    const pi = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "1000", currency: "usd", capture_method: "manual" });
    expect(pi.status).toBe(200);
    await proxied(stack.kb.url, key.vault_key, "POST", `/v1/payment_intents/${pi.json.id}/capture`, { amount_to_capture: "5000" });
    const rows = (await stack.kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
    expect(rows[0].path).toEndWith("/capture");
    expect(rows[0].estimated_cost_usd).toBe(40); // $50 asked − the $10 this key already counted
    await moneyHolds(key.key_id);
  });

  test("an Idempotency-Key sent again to another connected account is never carried over to it", async () => {
    const key = await stripeKey({ daily_usd_cap: 60, stripe_accounts: ["acct_A", "acct_B"] });
    stack.fake.nextBehaviors.push({ kind: "execute-then-drop" });
    const first = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "5000", currency: "usd", confirm: "true" }, { "idempotency-key": "K1", "stripe-account": "acct_A" });
    expect(first.status).toBe(502);
    const second = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "5000", currency: "usd", confirm: "true" }, { "idempotency-key": "K1", "stripe-account": "acct_B" });
    expect(second.status).toBe(400);
    expect(second.headers.get("x-keybrake-error")).toBe("idempotency_key_mismatch");
    expect(stack.fake.calls).toHaveLength(1);
    await moneyHolds(key.key_id);
  });
});
