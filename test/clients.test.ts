/**
 * clients/keybrake.ts (run here, in Bun) and clients/keybrake.py (run by Debian's
 * /usr/bin/python3 with python3-stripe and python3-httpx) against a real Keybrake and
 * the fake vendor: issue, inspect, revoke, revoke a run, and telling cap hits apart from
 * vendors' own 429s whichever SDK raised them.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Resend } from "resend";
import Stripe from "stripe";
import twilio from "twilio";
import { isCapHit, Keybrake, KeybrakeError } from "../clients/keybrake.ts";
import { ADMIN_TOKEN } from "./helpers.ts";
import { proxied, startProxyStack } from "./proxy-setup.ts";

const ROOT = join(import.meta.dir, "..");
const PYTHON = "/usr/bin/python3"; // Debian's, where apt put stripe and httpx

let stack: Awaited<ReturnType<typeof startProxyStack>>;
let kb: Keybrake;
beforeAll(async () => {
  await requireDebianTools();
  stack = await startProxyStack();
  kb = new Keybrake({ url: stack.kb.url, apiKey: ADMIN_TOKEN });
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

const stripeKey = (label: string, cap = 50) =>
  kb.issueKey({ vendor: "stripe", daily_usd_cap: cap, allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "1h", agent_run_label: label });

describe("clients/keybrake.ts: management calls", () => {
  test("issueKey / getKey / revokeKey, and stripe-node through stripeOptions()", async () => {
    const key = await stripeKey("clients-ts/issue");
    expect(key.vault_key).toBeString();
    expect(key).toMatchObject({ vendor: "stripe", daily_usd_cap: 50, agent_run_label: "clients-ts/issue" });

    const stripe = new Stripe(key.vault_key, { ...kb.stripeOptions(), maxNetworkRetries: 0 });
    const pi = await stripe.paymentIntents.create({ amount: 2900, currency: "usd", customer: "cus_1" });
    expect(pi.id).toStartWith("pi_");
    expect(await kb.getKey(key.key_id)).toMatchObject({ spent_today_usd: 29, remaining_today_usd: 21 });

    const first = await kb.revokeKey(key.key_id);
    const again = await kb.revokeKey(key.key_id); // idempotent
    expect(again.revoked_at).toBe(first.revoked_at as string);
    await expect(stripe.paymentIntents.create({ amount: 100, currency: "usd" })).rejects.toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
    expect(stack.fake.executed).toHaveLength(1);
  });

  test("revokeRun revokes every key of one label and no other", async () => {
    const a = await stripeKey("clients-ts/run-a");
    const b = await stripeKey("clients-ts/run-a");
    const other = await stripeKey("clients-ts/run-b");
    const res = await kb.revokeRun("clients-ts/run-a");
    expect(res.revoked).toBe(2);
    expect(res.data.map((k) => k.key_id).sort()).toEqual([a.key_id, b.key_id].sort());
    expect((await kb.getKey(other.key_id)).revoked_at ?? null).toBeNull();
  });

  test("refusals become KeybrakeError with status, code and the field at fault", async () => {
    const err = await kb.issueKey({ vendor: "stripe", daily_usd_cap: -1, allowed_endpoints: [], expires_in: "1h", agent_run_label: "x" }).catch((e) => e);
    expect(err).toBeInstanceOf(KeybrakeError);
    expect(err.status).toBe(400);
    expect(JSON.stringify(err.details)).toContain("daily_usd_cap");
    const unauthorized = await new Keybrake({ url: stack.kb.url, apiKey: "kbt_wrong" }).revokeRun("x").catch((e) => e);
    expect(unauthorized).toBeInstanceOf(KeybrakeError);
    expect(unauthorized.status).toBe(401);
    const missing = await kb.getKey("key_does_not_exist").catch((e) => e);
    expect(missing.status).toBe(404);
  });

  test("url and token default to KEYBRAKE_URL / KEYBRAKE_API_KEY", async () => {
    const saved = { url: process.env.KEYBRAKE_URL, key: process.env.KEYBRAKE_API_KEY };
    try {
      process.env.KEYBRAKE_URL = stack.kb.url + "/";
      process.env.KEYBRAKE_API_KEY = ADMIN_TOKEN;
      const fromEnv = new Keybrake();
      expect(fromEnv.proxyUrl("resend")).toBe(`${stack.kb.url}/resend`);
      expect((await fromEnv.revokeRun("clients-ts/none")).revoked).toBe(0);
      delete process.env.KEYBRAKE_API_KEY;
      expect(() => new Keybrake()).toThrow(/KEYBRAKE_API_KEY/);
    } finally {
      restoreEnv("KEYBRAKE_URL", saved.url);
      restoreEnv("KEYBRAKE_API_KEY", saved.key);
    }
  });
});

describe("clients/keybrake.ts: isCapHit", () => {
  test("a fetch Response: Keybrake's 429 yes, a vendor's own 429 and a 200 no", async () => {
    const key = await stripeKey("clients-ts/fetch", 1);
    const raw = (amount: string) =>
      fetch(`${stack.kb.url}/stripe/v1/payment_intents`, {
        method: "POST",
        headers: { authorization: `Bearer ${key.vault_key}`, "content-type": "application/x-www-form-urlencoded" },
        body: `amount=${amount}&currency=usd`,
      });
    stack.fake.nextBehaviors.push({ kind: "status", status: 429 }); // Stripe's own rate limit
    const vendor429 = await raw("50");
    expect(vendor429.status).toBe(429);
    expect(isCapHit(vendor429)).toBe(false);
    const ok = await raw("50");
    expect(ok.status).toBe(200);
    expect(isCapHit(ok)).toBe(false);
    const capped = await raw("100");
    expect(capped.status).toBe(429);
    expect(isCapHit(capped)).toBe(true);
    expect(isCapHit(await capped.json())).toBe(true); // the parsed body too (Stripe's error.code)
  });

  test("stripe-node errors, headers as a plain object or a Headers", async () => {
    const key = await stripeKey("clients-ts/stripe", 30);
    const stripe = new Stripe(key.vault_key, { ...kb.stripeOptions(), maxNetworkRetries: 0 });
    stack.fake.nextBehaviors.push({ kind: "status", status: 429 });
    const vendor429 = await stripe.paymentIntents.create({ amount: 2900, currency: "usd" }).catch((e) => e);
    expect(vendor429).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
    expect(isCapHit(vendor429)).toBe(false);
    await stripe.paymentIntents.create({ amount: 2900, currency: "usd" });
    const capped = await stripe.paymentIntents.create({ amount: 2900, currency: "usd" }).catch((e) => e);
    expect(capped).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
    expect(isCapHit(capped)).toBe(true);
    expect(isCapHit({ statusCode: 429, headers: new Headers({ "X-Keybrake-Cap-Hit": "true" }) })).toBe(true);
    expect(isCapHit({ statusCode: 429, headers: new Headers({ "retry-after": "1" }) })).toBe(false);
  });

  test("twilio-node RestException", async () => {
    const key = await kb.issueKey({
      vendor: "twilio",
      daily_usd_cap: 0.01,
      allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"],
      expires_in: "1h",
      agent_run_label: "clients-ts/twilio",
    });
    // twilio-node insists on an AC… user name; Keybrake swaps in the real Account SID.
    const client = twilio("AC00000000000000000000000000000000", key.vault_key);
    (client.api as unknown as { baseUrl: string }).baseUrl = kb.proxyUrl("twilio");
    const send = () => client.messages.create({ to: "+15005550006", from: "+15005550001", body: "Your code is 123456" }).catch((e) => e);
    stack.fake.nextBehaviors.push({ kind: "status", status: 429 }); // Twilio's own 20429
    const vendor429 = await send();
    expect(vendor429.status).toBe(429);
    expect(isCapHit(vendor429)).toBe(false);
    expect((await send()).sid).toStartWith("SM");
    const capped = await send();
    expect(capped.status).toBe(429);
    expect(isCapHit(capped)).toBe(true);
  });

  test("resend-node { data, error, headers } results and their error objects", async () => {
    const key = await kb.issueKey({
      vendor: "resend",
      daily_usd_cap: 0.001,
      allowed_endpoints: ["POST /emails"],
      expires_in: "1h",
      agent_run_label: "clients-ts/resend",
    });
    const resend = new Resend(key.vault_key);
    (resend as unknown as { baseUrl: string }).baseUrl = kb.proxyUrl("resend");
    const send = () => resend.emails.send({ from: "billing@example.com", to: ["a@example.com"], subject: "Receipt", text: "Thanks" });
    stack.fake.nextBehaviors.push({ kind: "status", status: 429 });
    const vendor429 = await send();
    expect(vendor429.error?.statusCode).toBe(429);
    expect(isCapHit(vendor429)).toBe(false);
    expect(isCapHit(vendor429.error)).toBe(false);
    expect((await send()).data?.id).toBeString();
    const capped = await send();
    expect(isCapHit(capped)).toBe(true);
    expect(isCapHit(capped.error)).toBe(true);
  });

  test("anything else is not a cap hit", () => {
    for (const x of [null, undefined, 429, "cap", new Error("Spend cap reached"), { status: 429 }, { headers: null }]) {
      expect(isCapHit(x)).toBe(false);
    }
  });
});

describe("clients/keybrake.py (Debian python3 + python3-stripe + python3-httpx)", () => {
  test("issue / get_key / revoke / revoke_run / is_cap_hit against the same server", async () => {
    const { fake } = stack;
    // Vendor calls in order: 1st charge goes through, 2nd (on a second key) is Stripe's own 429.
    fake.nextBehaviors.push({ kind: "normal" }, { kind: "status", status: 429 });
    const out = await runPython(PY_CLIENT_SCENARIO, { PYTHONPATH: join(ROOT, "clients") });
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout);

    expect(r.issued).toMatchObject({ vendor: "stripe", daily_usd_cap: 50, agent_run_label: "clients-py/run" });
    expect(r.first_charge).toStartWith("pi_");
    // Keybrake's 429 recognised through every client a Python task might use…
    expect(r.cap_hit).toEqual({ stripe: true, httpx_response: true, httpx_status_error: true, urllib_http_error: true });
    // …and Stripe's own rate limit, a success and nothing at all are not cap hits.
    expect(r.not_cap_hit).toEqual({ stripe_vendor_429: false, httpx_ok: false, none: false });
    expect(r.spend).toMatchObject({ spent_today_usd: 29, remaining_today_usd: 21 });
    expect(r.revoked_twice_same).toBe(true);
    expect(r.after_revoke).toBe("AuthenticationError");
    expect(r.revoke_run).toBeGreaterThanOrEqual(1); // the second key (the first one was revoked already)
    expect(r.run_keys_revoked).toEqual([true, true]);
    expect(r.bad_issue).toMatchObject({ status: 400 });
    expect(r.bad_issue.details).toContain("daily_usd_cap");
    expect(r.missing_token).toContain("KEYBRAKE_API_KEY");
    expect(fake.executed).toHaveLength(1);
  });
});

const PY_CLIENT_SCENARIO = String.raw`
import json, os, urllib.request, urllib.error
import httpx, stripe
import keybrake

url = os.environ["KEYBRAKE_URL"]
stripe.api_base = keybrake.proxy_url("stripe")
out = {}

key = keybrake.issue(vendor="stripe", daily_usd_cap=50.0, allowed_endpoints=["POST /v1/payment_intents"],
                     expires_in="1h", agent_run_label="clients-py/run")
out["issued"] = {k: key[k] for k in ("vendor", "daily_usd_cap", "agent_run_label")}
stripe.api_key = key["vault_key"]
out["first_charge"] = stripe.PaymentIntent.create(amount=2900, currency="usd", customer="cus_1")["id"]

hits = {}
try:
    stripe.PaymentIntent.create(amount=2900, currency="usd", customer="cus_2")
except stripe.error.RateLimitError as e:
    hits["stripe"] = keybrake.is_cap_hit(e)
raw = dict(url=f"{url}/stripe/v1/payment_intents", headers={"Authorization": f"Bearer {key['vault_key']}"},
           data={"amount": "2900", "currency": "usd"})
resp = httpx.post(**raw)
hits["httpx_response"] = keybrake.is_cap_hit(resp)
try:
    resp.raise_for_status()
except httpx.HTTPStatusError as e:
    hits["httpx_status_error"] = keybrake.is_cap_hit(e)
req = urllib.request.Request(raw["url"], data=b"amount=2900&currency=usd", headers=raw["headers"], method="POST")
try:
    urllib.request.urlopen(req)
except urllib.error.HTTPError as e:
    hits["urllib_http_error"] = keybrake.is_cap_hit(e)
out["cap_hit"] = hits

other = keybrake.issue(vendor="stripe", daily_usd_cap=50.0, allowed_endpoints=["POST /v1/payment_intents", "GET /v1/balance"],
                       expires_in="1h", agent_run_label="clients-py/run")
not_hits = {}
try:
    stripe.PaymentIntent.create(amount=100, currency="usd", api_key=other["vault_key"])
except stripe.error.RateLimitError as e:  # the fake vendor's scripted 429: Stripe's own rate limit
    not_hits["stripe_vendor_429"] = keybrake.is_cap_hit(e)
not_hits["httpx_ok"] = keybrake.is_cap_hit(httpx.get(f"{url}/stripe/v1/balance", headers={"Authorization": f"Bearer {other['vault_key']}"}))
not_hits["none"] = keybrake.is_cap_hit(None)
out["not_cap_hit"] = not_hits

out["spend"] = keybrake.get_key(key["key_id"])
first, second = keybrake.revoke(key["key_id"]), keybrake.revoke(key["key_id"])
out["revoked_twice_same"] = first["revoked_at"] == second["revoked_at"] is not None
try:
    stripe.PaymentIntent.create(amount=100, currency="usd")
    out["after_revoke"] = "charged"
except stripe.error.StripeError as e:
    out["after_revoke"] = type(e).__name__
out["revoke_run"] = keybrake.revoke_run("clients-py/run")["revoked"]
out["run_keys_revoked"] = [keybrake.get_key(k["key_id"])["revoked_at"] is not None for k in (key, other)]

try:
    keybrake.issue(vendor="stripe", daily_usd_cap=-1, allowed_endpoints=["POST /v1/payment_intents"], expires_in="1h", agent_run_label="x")
except keybrake.KeybrakeError as e:
    out["bad_issue"] = {"status": e.status, "code": e.code, "details": json.dumps(e.details)}
os.environ.pop("KEYBRAKE_API_KEY")
try:
    keybrake.revoke_run("x")
except ValueError as e:
    out["missing_token"] = str(e)
print(json.dumps(out))
`;

async function runPython(script: string, env: Record<string, string> = {}) {
  // Asynchronous on purpose: the Keybrake under test runs in this very process.
  const proc = Bun.spawn([PYTHON, "-c", script], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE: "1", KEYBRAKE_URL: stack.kb.url, KEYBRAKE_API_KEY: ADMIN_TOKEN, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) console.error(stderr);
  return { code, stdout, stderr };
}

function restoreEnv(name: string, value: string | undefined) {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/** These tests run the Python and shell code for real: say what to install when it is missing. */
async function requireDebianTools() {
  const check = Bun.spawn([PYTHON, "-c", "import stripe, httpx"], { stdout: "ignore", stderr: "ignore" });
  const missing = [(await check.exited) === 0 ? null : `${PYTHON} with stripe and httpx`, Bun.which("jq") ? null : "jq", Bun.which("curl") ? null : "curl"];
  if (missing.some(Boolean)) {
    throw new Error(`missing ${missing.filter(Boolean).join(", ")}: apt-get install -y python3-stripe python3-httpx jq curl`);
  }
}
