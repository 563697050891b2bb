/**
 * The fake vendor must fool the official SDKs, or proxy tests built on it prove nothing.
 * Here each SDK talks to the fake directly (no proxy in between).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { Resend } from "resend";
import Stripe from "stripe";
import twilio from "twilio";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";

let fake: FakeVendor;

beforeAll(async () => {
  fake = await startFakeVendor();
});
afterAll(() => fake.stop());
beforeEach(() => fake.reset());

// maxNetworkRetries 0 keeps failures fast; stripe-node still retries a reset connection once.
function stripeClient(key = fake.credentials.stripe): Stripe {
  return new Stripe(key, { host: "127.0.0.1", port: fake.port, protocol: "http", maxNetworkRetries: 0 });
}

// twilio-node has no base-URL option: each domain (here `api`) carries its own baseUrl.
function twilioClient(token = fake.credentials.twilioToken) {
  const client = twilio(fake.credentials.twilioSid, token);
  client.api.baseUrl = fake.url;
  return client;
}

function resendClient(key = fake.credentials.resend): Resend {
  return new Resend(key, { baseUrl: fake.url });
}

/** Under Bun, stripe-node uses fetch, so lastResponse.headers is really a Headers object (typed as a record). */
function stripeHeader(res: Stripe.Response<object>, name: string): string | null {
  const headers: unknown = res.lastResponse.headers;
  return headers instanceof Headers ? headers.get(name) : (res.lastResponse.headers[name] ?? null);
}

const SMS = { to: "+15558675310", from: "+15017122661", body: "Your code is 123456" };
const EMAIL = { from: "Acme <hi@acme.test>", to: "user@example.com", subject: "Hello", html: "<p>Hi</p>" };

describe("Stripe through stripe-node", () => {
  test("creates a PaymentIntent and records it with the real key", async () => {
    const pi = await stripeClient().paymentIntents.create({ amount: 1999, currency: "usd", metadata: { order: "42" } });

    expect(pi).toMatchObject({ object: "payment_intent", amount: 1999, currency: "usd", status: "requires_payment_method" });
    expect(pi.id).toMatch(/^pi_/);
    expect(pi.metadata).toEqual({ order: "42" });
    expect(pi.lastResponse.requestId).toMatch(/^req_/);
    expect(fake.executed).toHaveLength(1);
    const call = fake.executed[0]!;
    expect(call).toMatchObject({ vendor: "stripe", method: "POST", path: "/v1/payment_intents" });
    expect(call.headers.authorization).toBe(`Bearer ${fake.credentials.stripe}`);
    expect(new URLSearchParams(call.body).get("amount")).toBe("1999");
  });

  test("confirms a stored PaymentIntent", async () => {
    const stripe = stripeClient();
    const pi = await stripe.paymentIntents.create({ amount: 500, currency: "eur" });
    const confirmed = await stripe.paymentIntents.confirm(pi.id);
    expect(confirmed).toMatchObject({ id: pi.id, status: "succeeded", amount: 500 });
    expect(fake.executed.map((c) => c.path)).toEqual(["/v1/payment_intents", `/v1/payment_intents/${pi.id}/confirm`]);
  });

  test("a wrong key is a StripeAuthenticationError and executes nothing", async () => {
    const attempt = stripeClient("sk_test_wrong_0000000000000000").charges.create({ amount: 100, currency: "usd", source: "tok_visa" });
    await expect(attempt).rejects.toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
    expect(fake.calls).toHaveLength(1);
    expect(fake.executed).toHaveLength(0);
  });

  test("a declining test token is a StripeCardError and not an execution", async () => {
    const attempt = stripeClient().charges.create({ amount: 100, currency: "usd", source: "tok_chargeDeclined" });
    await expect(attempt).rejects.toMatchObject({ type: "StripeCardError", code: "card_declined", decline_code: "generic_decline" });
    expect(fake.executed).toHaveLength(0);
  });

  test("replays a repeated idempotency key and refuses it with other params", async () => {
    const stripe = stripeClient();
    const params = { amount: 700, currency: "usd", source: "tok_visa" };
    const first = await stripe.charges.create(params, { idempotencyKey: "order-7" });
    const again = await stripe.charges.create(params, { idempotencyKey: "order-7" });

    expect(again.id).toBe(first.id);
    expect(stripeHeader(again, "idempotent-replayed")).toBe("true");
    expect(stripeHeader(first, "idempotent-replayed")).toBeNull();
    expect(fake.calls).toHaveLength(2);
    expect(fake.executed).toHaveLength(1);

    const changed = stripe.charges.create({ ...params, amount: 701 }, { idempotencyKey: "order-7" });
    await expect(changed).rejects.toBeInstanceOf(Stripe.errors.StripeIdempotencyError);
    expect(fake.executed).toHaveLength(1);
  });

  test("after a lost response, stripe-node's own retry gets the replay, not a second charge", async () => {
    fake.nextBehaviors.push({ kind: "execute-then-drop" });
    const charge = await stripeClient().charges.create({ amount: 300, currency: "usd", source: "tok_visa" });

    expect(stripeHeader(charge, "idempotent-replayed")).toBe("true");
    expect(fake.calls).toHaveLength(2);
    expect(fake.calls[1]!.headers["idempotency-key"]).toBe(fake.calls[0]!.headers["idempotency-key"]!);
    expect(fake.executed).toHaveLength(1);
  });

  test("when the retry is lost too, the client sees a StripeConnectionError after one execution", async () => {
    fake.nextBehaviors.push({ kind: "execute-then-drop" }, { kind: "execute-then-drop" });
    const attempt = stripeClient().charges.create({ amount: 300, currency: "usd", source: "tok_visa" });
    await expect(attempt).rejects.toBeInstanceOf(Stripe.errors.StripeConnectionError);
    expect(fake.calls).toHaveLength(2);
    expect(fake.executed).toHaveLength(1);
  });

  test("a scripted status is answered instead of executing", async () => {
    fake.nextBehaviors.push({ kind: "status", status: 503 });
    const attempt = stripeClient().charges.create({ amount: 100, currency: "usd", source: "tok_visa" });
    await expect(attempt).rejects.toMatchObject({ type: "StripeAPIError", statusCode: 503 });
    expect(fake.calls).toHaveLength(1);
    expect(fake.executed).toHaveLength(0);
  });

  test("customers, balance and unknown ids read like Stripe", async () => {
    const stripe = stripeClient();
    const created = await stripe.customers.create({ email: "ada@example.com" });
    expect(await stripe.customers.retrieve(created.id)).toMatchObject({ id: created.id, email: "ada@example.com" });
    expect((await stripe.customers.list()).data.map((c) => c.id)).toEqual([created.id]);
    expect((await stripe.balance.retrieve()).available).toEqual([{ amount: 0, currency: "usd" }]);
    await expect(stripe.customers.retrieve("cus_missing")).rejects.toMatchObject({ type: "StripeInvalidRequestError", code: "resource_missing" });
    expect(fake.executed).toHaveLength(1);
  });
});

describe("Twilio through twilio-node", () => {
  test("sends a message and records it with the real credentials", async () => {
    const client = twilioClient();
    const message = await client.messages.create(SMS);

    expect(message.sid).toMatch(/^SM[0-9a-f]{32}$/);
    expect(message).toMatchObject({ status: "queued", price: null, priceUnit: "USD", numSegments: "1", numMedia: "0", to: SMS.to });
    expect(client.httpClient.lastResponse?.statusCode).toBe(201);
    expect(client.httpClient.lastResponse?.headers["twilio-request-id"]).toMatch(/^RQ[0-9a-f]{32}$/);
    const call = fake.executed[0]!;
    expect(call.path).toBe(`/2010-04-01/Accounts/${fake.credentials.twilioSid}/Messages.json`);
    expect(call.headers.authorization).toBe(`Basic ${btoa(`${fake.credentials.twilioSid}:${fake.credentials.twilioToken}`)}`);
    expect(new URLSearchParams(call.body).get("Body")).toBe(SMS.body);
  });

  test("reports the configured price, also when fetched later", async () => {
    const client = twilioClient();
    const sent = await client.messages.create(SMS);
    fake.twilioPrice = "-0.01660";
    const fetched = await client.messages(sent.sid).fetch();
    expect(sent.price).toBeNull();
    expect(fetched).toMatchObject({ sid: sent.sid, price: "-0.01660", body: SMS.body });
    expect(fake.executed).toHaveLength(1);
  });

  test("a wrong token is a RestException 401 / 20003", async () => {
    const attempt = twilioClient("0".repeat(32)).messages.create(SMS);
    await expect(attempt).rejects.toBeInstanceOf(twilio.RestException);
    await expect(attempt).rejects.toMatchObject({ status: 401, code: 20003 });
    expect(fake.executed).toHaveLength(0);
  });

  test("a lost response executes once and the client sees a connection error", async () => {
    fake.nextBehaviors.push({ kind: "execute-then-drop" });
    await expect(twilioClient().messages.create(SMS)).rejects.toMatchObject({ code: "ECONNRESET" });
    expect(fake.calls).toHaveLength(1);
    expect(fake.executed).toHaveLength(1);
  });

  test("a scripted status is answered instead of executing", async () => {
    fake.nextBehaviors.push({ kind: "status", status: 429 });
    await expect(twilioClient().messages.create(SMS)).rejects.toMatchObject({ status: 429, code: 20429 });
    expect(fake.executed).toHaveLength(0);
  });
});

describe("Resend through resend-node", () => {
  test("sends an email and records it with the real key", async () => {
    const resend = resendClient();
    const { data, error } = await resend.emails.send(EMAIL);

    expect(error).toBeNull();
    expect(data?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(fake.executed[0]!.headers.authorization).toBe(`Bearer ${fake.credentials.resend}`);
    const stored = await resend.emails.get(data!.id);
    expect(stored.data).toMatchObject({ object: "email", id: data!.id, to: [EMAIL.to], subject: EMAIL.subject });
  });

  test("a wrong key is invalid_api_key (403), a missing one missing_api_key (401)", async () => {
    const wrong = await resendClient("re_wrong").emails.send(EMAIL);
    expect(wrong.error).toMatchObject({ statusCode: 403, name: "invalid_api_key" });

    const missing = await fetch(`${fake.url}/emails`, { method: "POST", body: JSON.stringify(EMAIL) });
    expect(missing.status).toBe(401);
    expect(await missing.json()).toMatchObject({ name: "missing_api_key" });
    expect(fake.executed).toHaveLength(0);
  });

  test("replays a repeated idempotency key and refuses it with another payload", async () => {
    const resend = resendClient();
    const first = await resend.emails.send(EMAIL, { idempotencyKey: "welcome/1" });
    const again = await resend.emails.send(EMAIL, { idempotencyKey: "welcome/1" });
    const changed = await resend.emails.send({ ...EMAIL, subject: "Other" }, { idempotencyKey: "welcome/1" });

    expect(again.data?.id).toBe(first.data!.id);
    expect(changed.error).toMatchObject({ statusCode: 409, name: "invalid_idempotent_request" });
    expect(fake.calls[0]!.headers["idempotency-key"]).toBe("welcome/1");
    expect(fake.executed).toHaveLength(1);
  });

  test("sends a batch", async () => {
    const { data, error } = await resendClient().batch.send([EMAIL, { ...EMAIL, to: ["a@example.com", "b@example.com"] }]);
    expect(error).toBeNull();
    expect(data?.data).toHaveLength(2);
    expect(fake.executed).toHaveLength(1);
  });

  test("a lost response executes once and the client gets a fetch error", async () => {
    fake.nextBehaviors.push({ kind: "execute-then-drop" });
    const { data, error } = await resendClient().emails.send(EMAIL);
    expect(data).toBeNull();
    expect(error).toMatchObject({ name: "application_error", statusCode: null });
    expect(fake.executed).toHaveLength(1);
  });

  test("a scripted status is answered instead of executing", async () => {
    fake.nextBehaviors.push({ kind: "status", status: 500 });
    const { error } = await resendClient().emails.send(EMAIL);
    expect(error).toMatchObject({ statusCode: 500, name: "internal_server_error" });
    expect(fake.executed).toHaveLength(0);
  });
});

describe("behaviors", () => {
  const balance = () => fetch(`${fake.url}/v1/balance`, { headers: { authorization: `Bearer ${fake.credentials.stripe}` } });

  test("each request takes one queued behavior, then the default applies", async () => {
    fake.setDefaultBehavior({ kind: "status", status: 502, body: "<html>Bad gateway</html>", headers: { "Content-Type": "text/html" } });
    fake.nextBehaviors.push({ kind: "normal" });

    expect((await balance()).status).toBe(200);
    const gateway = await balance();
    expect(gateway.status).toBe(502);
    expect(gateway.headers.get("content-type")).toBe("text/html");
    expect(await gateway.text()).toBe("<html>Bad gateway</html>");
  });

  test("delay holds the answer back", async () => {
    fake.nextBehaviors.push({ kind: "delay", ms: 150 });
    const started = performance.now();
    expect((await balance()).status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });

  test("reset forgets calls, behaviors and idempotency keys", async () => {
    const stripe = stripeClient();
    const first = await stripe.customers.create({}, { idempotencyKey: "k" });
    fake.setDefaultBehavior({ kind: "status", status: 500 });
    fake.reset();

    const second = await stripe.customers.create({}, { idempotencyKey: "k" });
    expect(second.id).not.toBe(first.id);
    expect(fake.calls).toHaveLength(1);
    expect(fake.executed).toHaveLength(1);
  });
});

describe("money the fake moves (what the attack and fuzz tests compare against)", () => {
  const post = (path: string, body: string, auth = `Bearer ${fake.credentials.stripe}`, type = "application/x-www-form-urlencoded") =>
    fetch(fake.url + path, { method: "POST", headers: { authorization: auth, "content-type": type }, body }).then(async (r) => ({ status: r.status, json: (await r.json()) as any }));

  test("Stripe: a PaymentIntent moves at confirmation, in its currency as last updated; Rack's last value wins", async () => {
    const pi = await post("/v1/payment_intents", "amount=100&amount=5000&currency=idr");
    expect(pi.json.amount).toBe(5000);
    expect(fake.moved).toEqual([]);
    await post(`/v1/payment_intents/${pi.json.id}`, "currency=usd");
    await post(`/v1/payment_intents/${pi.json.id}/confirm`, "");
    await post(`/v1/payment_intents/${pi.json.id}/confirm`, "");
    expect(fake.moved).toEqual([{ vendor: "stripe", what: "payment_intent", currency: "usd", amount: 5000 }]);
    expect(fake.movedUsdMicros()).toBe(50_000_000);
  });

  test("Stripe: a refund moves in the charge's currency; an auto-advancing invoice collects itself at finalize", async () => {
    const charge = await post("/v1/charges", "amount=1000&currency=kwd&source=tok_visa");
    await post("/v1/refunds", `charge=${charge.json.id}&currency=usd`);
    const cus = await post("/v1/customers", "");
    await post("/v1/invoiceitems", `customer=${cus.json.id}&amount=700&currency=eur`);
    const inv = await post("/v1/invoices", `customer=${cus.json.id}`);
    expect(inv.json.auto_advance).toBe(true);
    await post(`/v1/invoices/${inv.json.id}/finalize`, "");
    expect(fake.moved.map((m) => [m.what, m.currency, m.amount])).toEqual([
      ["charge", "kwd", 1000],
      ["refund", "kwd", 1000],
      ["invoice", "eur", 700],
    ]);
  });

  test("Twilio bills by destination and template; Resend bills broadcasts per contact", async () => {
    const auth = "Basic " + btoa(`${fake.credentials.twilioSid}:${fake.credentials.twilioToken}`);
    const path = `/2010-04-01/Accounts/${fake.credentials.twilioSid}/Messages.json`;
    fake.twilioTemplates["HX1"] = "x".repeat(200); // two GSM-7 segments
    await post(path, new URLSearchParams({ To: "+447700900123", From: "+1500", Body: "hi" }).toString(), auth);
    await post(path, new URLSearchParams({ To: "+15005550006", From: "+1500", ContentSid: "HX1" }).toString(), auth);
    const refused = await post(path, new URLSearchParams({ To: "+999", From: "+1500", Body: "hi" }).toString(), auth);
    expect(refused.status).toBe(400);
    const r = `Bearer ${fake.credentials.resend}`;
    const aud = await post("/audiences", JSON.stringify({ name: "a" }), r, "application/json");
    for (const email of ["a@x.test", "b@x.test", "c@x.test"]) await post(`/audiences/${aud.json.id}/contacts`, JSON.stringify({ email }), r, "application/json");
    await post("/broadcasts", JSON.stringify({ audience_id: aud.json.id, send: true }), r, "application/json");
    expect(fake.moved.map((m) => [m.vendor, m.amount])).toEqual([
      ["twilio", 52_000],
      ["twilio", 16_600],
      ["resend", 2_700],
    ]);
  });
});
