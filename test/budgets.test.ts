import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import Stripe from "stripe";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir, sqliteOf, dbRow, readSettled } from "./helpers.ts";
import { proxied, startProxyStack, stripeThrough, vendorEnv } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack({ KEYBRAKE_LOG: "silent" });
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

let runNo = 0;
/** A fresh label prefix per test, so budgets of one test never apply to another's keys. */
const freshPrefix = () => `kestra-${++runNo}-${Date.now()}/`;

const pi = (stripe: Stripe, cents = 2900) => stripe.paymentIntents.create({ amount: cents, currency: "usd" });

/** Settled and reserved micros of a budget today, straight from the ledger, once the calls answered so far have settled. */
async function budgetLedger(budgetId: string) {
  await stack.kb.services.forwarder.settled();
  const row = (await dbRow<{ spent: number; reserved: number }>(stack.kb.services, "SELECT COALESCE(sum(spent_micros), 0) AS spent, COALESCE(sum(reserved_micros), 0) AS reserved FROM budget_spend_days WHERE budget_id = ?", budgetId))!;
  return row;
}

async function createBudget(body: Record<string, unknown>) {
  const r = await stack.kb.api("POST", "/budgets", body);
  if (r.status !== 201) throw new Error(`budget: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json as { budget_id: string; [k: string]: any };
}

describe("the budgets API", () => {
  test("create, read with spend, change, delete (a time is set), each one budget.updated event", async () => {
    const { kb } = stack;
    const prefix = freshPrefix();
    const created = await kb.api("POST", "/budgets", { name: "kestra daily", label_prefix: prefix, daily_usd_cap: 2000 });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ name: "kestra daily", label_prefix: prefix, vendor: null, daily_usd_cap: 2000, status: "active", spent_today_usd: 0, reserved_usd: 0, remaining_today_usd: 2000 });
    const id = created.json.budget_id;
    expect(id).toMatch(/^bud_/);

    const patched = await kb.api("PATCH", `/budgets/${id}`, { daily_usd_cap: 1500.25, vendor: "stripe" });
    expect(patched.status).toBe(200);
    expect(patched.json).toMatchObject({ daily_usd_cap: 1500.25, vendor: "stripe", remaining_today_usd: 1500.25 });

    expect((await kb.api("GET", "/budgets")).json.data.map((b: any) => b.budget_id)).toContain(id);
    const deleted = await kb.api("DELETE", `/budgets/${id}`);
    expect(deleted.status).toBe(200);
    expect(deleted.json.status).toBe("deleted");
    expect(deleted.json.deleted_at).not.toBeNull();
    expect((await kb.api("DELETE", `/budgets/${id}`)).json.deleted_at).toBe(deleted.json.deleted_at); // idempotent
    expect((await kb.api("GET", "/budgets")).json.data.map((b: any) => b.budget_id)).not.toContain(id);
    expect((await kb.api("GET", "/budgets?include_deleted=true")).json.data.map((b: any) => b.budget_id)).toContain(id);
    expect((await kb.api("PATCH", `/budgets/${id}`, { daily_usd_cap: 1 })).status).toBe(409);

    const events = (await kb.services.events.list({ type: "budget.updated", limit: 50 })).rows.filter((e) => e.target === id).reverse();
    expect(events.map((e) => e.data.action)).toEqual(["created", "changed", "deleted"]);
    expect(events[1]!.data.changes).toEqual({ daily_usd_cap: { from: 2000, to: 1500.25 }, vendor: { from: null, to: "stripe" } });
    for (const e of events) expect(e.actor).not.toBeNull();
  });

  const bad: [string, unknown, string[]][] = [
    ["everything missing", {}, ["name", "label_prefix", "daily_usd_cap"]],
    ["wrong types", { name: 5, label_prefix: ["x"], daily_usd_cap: "10" }, ["name", "label_prefix", "daily_usd_cap"]],
    ["negative cap, 7 decimals, unknown vendor", { name: "n", label_prefix: "p/", daily_usd_cap: 0.0000001, vendor: "paypal" }, ["daily_usd_cap", "vendor"]],
    ["empty prefix and an unknown field", { name: "n", label_prefix: "", daily_usd_cap: 1, colour: "red" }, ["label_prefix", "(body)"]],
  ];
  test.each(bad)("POST /budgets refuses %s naming each field, and creates nothing", async (_name, body, fields) => {
    const before = (await stack.kb.api("GET", "/budgets?include_deleted=true")).json.data.length;
    const r = await stack.kb.api("POST", "/budgets", body);
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe("invalid_request");
    expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual([...fields].sort());
    expect((await stack.kb.api("GET", "/budgets?include_deleted=true")).json.data.length).toBe(before);
  });

  test("PATCH with nothing or a bad field changes nothing; unknown ids are 404; no token is 401", async () => {
    const b = await createBudget({ name: "x", label_prefix: freshPrefix(), daily_usd_cap: 5 });
    expect((await stack.kb.api("PATCH", `/budgets/${b.budget_id}`, {})).status).toBe(400);
    const r = await stack.kb.api("PATCH", `/budgets/${b.budget_id}`, { daily_usd_cap: -1, name: "" });
    expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual(["daily_usd_cap", "name"]);
    expect((await stack.kb.api("GET", `/budgets/${b.budget_id}`)).json).toMatchObject({ name: "x", daily_usd_cap: 5 });
    expect((await stack.kb.api("GET", "/budgets/bud_nope")).status).toBe(404);
    expect((await stack.kb.api("PATCH", "/budgets/bud_nope", { name: "y" })).status).toBe(404);
    for (const [m, p] of [["GET", "/budgets"], ["POST", "/budgets"], ["PATCH", `/budgets/${b.budget_id}`], ["DELETE", `/budgets/${b.budget_id}`]] as const) {
      expect((await stack.kb.api(m, p, m === "GET" || m === "DELETE" ? undefined : { name: "z" }, null)).status).toBe(401);
    }
  });
});

test("the OpenAPI document lists the budget and webhook routes", async () => {
  const doc = (await stack.kb.api("GET", "/openapi.json", undefined, null)).json;
  for (const p of ["/budgets", "/budgets/{budget_id}", "/webhooks", "/webhooks/{webhook_id}", "/webhooks/{webhook_id}/deliveries"]) expect(Object.keys(doc.paths)).toContain(p);
  expect(Object.keys(doc.paths["/budgets/{budget_id}"]).sort()).toEqual(["delete", "get", "patch"]);
});

describe("admission: a call must fit its key and every budget over its label", () => {
  // Each scenario: the budgets there are, the key, and what a $29 PaymentIntent after `before` of them gets.
  type Scenario = {
    name: string;
    budgets: (prefix: string) => Record<string, unknown>[];
    key: (prefix: string) => Record<string, unknown>;
    calls: number;
    ok: number;
    scope: "key" | "budget" | null;
    budgetNamed?: string;
  };
  const scenarios: Scenario[] = [
    { name: "the key's cap is lower: scope key", budgets: (p) => [{ name: "wide", label_prefix: p, daily_usd_cap: 1000 }], key: (p) => ({ agent_run_label: p + "run", daily_usd_cap: 60 }), calls: 4, ok: 2, scope: "key" },
    { name: "the budget's cap is lower: scope budget, named", budgets: (p) => [{ name: "tight pool", label_prefix: p, daily_usd_cap: 60 }], key: (p) => ({ agent_run_label: p + "run", daily_usd_cap: 1000 }), calls: 4, ok: 2, scope: "budget", budgetNamed: "tight pool" },
    { name: "of two matching budgets the tighter one binds", budgets: (p) => [{ name: "outer", label_prefix: p, daily_usd_cap: 1000 }, { name: "inner", label_prefix: p + "run", daily_usd_cap: 90 }], key: (p) => ({ agent_run_label: p + "run-7", daily_usd_cap: 1000 }), calls: 5, ok: 3, scope: "budget", budgetNamed: "inner" },
    { name: "a budget for another vendor does not apply", budgets: (p) => [{ name: "twilio only", label_prefix: p, daily_usd_cap: 1, vendor: "twilio" }], key: (p) => ({ agent_run_label: p + "run", daily_usd_cap: 100 }), calls: 3, ok: 3, scope: null },
    { name: "a prefix that does not match does not apply (no LIKE wildcards either)", budgets: (p) => [{ name: "other", label_prefix: p + "x", daily_usd_cap: 1 }, { name: "pct", label_prefix: p.slice(0, -1) + "%", daily_usd_cap: 1 }], key: (p) => ({ agent_run_label: p + "run", daily_usd_cap: 100 }), calls: 3, ok: 3, scope: null },
  ];
  test.each(scenarios.map((s) => [s.name, s] as const))("%s", async (_n, sc) => {
    const prefix = freshPrefix();
    for (const b of sc.budgets(prefix)) await createBudget(b);
    const key = await stack.kb.issueKey(seedKeyBody(sc.key(prefix)));
    const stripe = stripeThrough(stack.kb.url, key.vault_key, { maxNetworkRetries: 0 });
    const results: (Stripe.PaymentIntent | Stripe.errors.StripeError)[] = [];
    for (let i = 0; i < sc.calls; i++) results.push(await pi(stripe).catch((e) => e));
    const refused = results.filter((r): r is Stripe.errors.StripeError => r instanceof Stripe.errors.StripeError);
    expect(results.length - refused.length).toBe(sc.ok);
    expect(stack.fake.executed).toHaveLength(sc.ok);
    for (const e of refused) {
      expect(e).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
      expect(e.headers!["x-keybrake-cap-hit"]).toBe("true");
      expect(e.headers!["x-keybrake-cap-scope"]).toBe(sc.scope!);
      if (sc.budgetNamed) expect(e.message).toContain(`"${sc.budgetNamed}"`);
    }
    if (sc.scope === null) expect(refused).toHaveLength(0);
  });

  test("a deleted budget stops applying to the very next call; a new one applies at once", async () => {
    const prefix = freshPrefix();
    const key = await stack.kb.issueKey(seedKeyBody({ agent_run_label: prefix + "run", daily_usd_cap: 1000 }));
    const call = () => proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect((await call()).status).toBe(200);
    const b = await createBudget({ name: "zero", label_prefix: prefix, daily_usd_cap: 0 });
    const refused = await call();
    expect(refused.status).toBe(429);
    expect(refused.headers.get("x-keybrake-cap-scope")).toBe("budget");
    await stack.kb.api("DELETE", `/budgets/${b.budget_id}`);
    expect((await call()).status).toBe(200);
  });

  test("a vendor 4xx gives the budget reservation back, a 5xx keeps it; the remaining header is the tightest", async () => {
    const prefix = freshPrefix();
    const b = await createBudget({ name: "pool", label_prefix: prefix, daily_usd_cap: 100 });
    const key = await stack.kb.issueKey(seedKeyBody({ agent_run_label: prefix + "run", daily_usd_cap: 1000 }));
    const ok = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(ok.headers.get("x-keybrake-remaining-usd")).toBe("71.000000");
    stack.fake.nextBehaviors.push({ kind: "status", status: 402 });
    const declined = await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(declined.status).toBe(402);
    expect(await budgetLedger(b.budget_id)).toEqual({ spent: 29_000_000, reserved: 0 });
    stack.fake.nextBehaviors.push({ kind: "status", status: 500 });
    await proxied(stack.kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" });
    expect(await budgetLedger(b.budget_id)).toEqual({ spent: 29_000_000, reserved: 29_000_000 }); // outcome unknown: kept
  });
});

describe("zero overshoot for budgets", () => {
  test("300 concurrent $29 PaymentIntents over 4 keys of one $500 budget (stripe-node): exactly 17 reach Stripe", async () => {
    const { kb, fake } = stack;
    const prefix = freshPrefix();
    const budget = await createBudget({ name: "fan-out", label_prefix: prefix, daily_usd_cap: 500 });
    // Each key alone could do 34 ($1,000): only the pooled budget stops four of them together at 17,
    // even when one key's calls happen to take all 17 (on PostgreSQL a key's calls commit in batches).
    const keys = await Promise.all([0, 1, 2, 3].map((i) => kb.issueKey(seedKeyBody({ agent_run_label: `${prefix}run-${i}`, daily_usd_cap: 1000 }))));
    const clients = keys.map((k) => stripeThrough(kb.url, k.vault_key));
    const results = await Promise.allSettled(Array.from({ length: 300 }, (_, i) => pi(clients[i % 4]!)));
    const ok = results.filter((r) => r.status === "fulfilled");
    expect(ok).toHaveLength(17);
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents")).toHaveLength(17);
    for (const r of results) {
      if (r.status === "rejected") {
        expect(r.reason).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
        expect(r.reason.headers["x-keybrake-cap-scope"]).toBe("budget");
      }
    }
    expect(await budgetLedger(budget.budget_id)).toEqual({ spent: 493_000_000, reserved: 0 });
    await kb.services.forwarder.settled();
    const keySpent = (await dbRow<{ s: number; r: number }>(kb.services, `SELECT sum(spent_micros) AS s, sum(reserved_micros) AS r FROM key_spend_days WHERE key_id IN (${keys.map(() => "?").join(",")})`, ...keys.map((k) => k.key_id)))!;
    expect(keySpent).toEqual({ s: 493_000_000, r: 0 });
    expect((await kb.api("GET", `/budgets/${budget.budget_id}`)).json).toMatchObject({ spent_today_usd: 493, reserved_usd: 0, remaining_today_usd: 7 });
  }, 60_000);

  test("two Keybrake processes on one data dir share the budget: still exactly 17", async () => {
    const { fake } = stack;
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
    const a = await spawnKeybrake(env);
    const b = await spawnKeybrake(env);
    try {
      const budget = (await apiCall(a.url, "POST", "/budgets", { name: "shared", label_prefix: "argo/", daily_usd_cap: 500 })).json;
      const keys = await Promise.all([0, 1, 2, 3].map(async (i) => (await apiCall(b.url, "POST", "/vault/keys", seedKeyBody({ agent_run_label: `argo/wf-${i}`, daily_usd_cap: 1000 }))).json));
      const calls = Array.from({ length: 300 }, (_, i) => proxied(i % 2 ? a.url : b.url, keys[i % 4].vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" }));
      const responses = await Promise.all(calls);
      expect(responses.filter((r) => r.status === 200)).toHaveLength(17);
      const refused = responses.filter((r) => r.status === 429);
      expect(refused).toHaveLength(283);
      for (const r of refused) expect(r.headers.get("x-keybrake-cap-scope")).toBe("budget");
      expect(fake.executed).toHaveLength(17);
      // b includes what b answered; a's last settlements commit just after a's answers (bounded wait).
      const view = await readSettled(() => apiCall(b.url, "GET", `/budgets/${budget.budget_id}`).then((r) => r.json), (v) => v.reserved_usd === 0);
      expect(view).toMatchObject({ spent_today_usd: 493, reserved_usd: 0, remaining_today_usd: 7 });
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 60_000);

  test("a budget lowered during a fan-out binds every call admitted after the change", async () => {
    const { kb, fake } = stack;
    const prefix = freshPrefix();
    const budget = await createBudget({ name: "moving", label_prefix: prefix, daily_usd_cap: 2000 });
    const keys = await Promise.all([0, 1, 2].map((i) => kb.issueKey(seedKeyBody({ agent_run_label: `${prefix}r${i}`, daily_usd_cap: 2000 }))));
    const clients = keys.map((k) => stripeThrough(kb.url, k.vault_key, { maxNetworkRetries: 0 }));
    // A first wave in flight while the cap is lowered to $300: some of it lands before the change, some after.
    const first = Array.from({ length: 60 }, (_, i) => pi(clients[i % 3]!));
    const patched = await kb.api("PATCH", `/budgets/${budget.budget_id}`, { daily_usd_cap: 300 });
    expect(patched.status).toBe(200);
    await Promise.allSettled(first);
    const afterFirst = await budgetLedger(budget.budget_id);
    // Whatever the first wave got, a wave sent after the change adds nothing beyond the new cap.
    const second = await Promise.allSettled(Array.from({ length: 100 }, (_, i) => pi(clients[i % 3]!)));
    const end = await budgetLedger(budget.budget_id);
    const secondOk = second.filter((r) => r.status === "fulfilled").length;
    expect(end.reserved).toBe(0);
    expect(end.spent).toBe(afterFirst.spent + secondOk * 29_000_000);
    expect(secondOk).toBe(Math.max(0, Math.floor((300_000_000 - afterFirst.spent) / 29_000_000)));
    expect(fake.executed.length * 29_000_000).toBe(end.spent);
    // Raised again: the next call goes through.
    await kb.api("PATCH", `/budgets/${budget.budget_id}`, { daily_usd_cap: 2000 });
    await expect(pi(clients[0]!)).resolves.toMatchObject({ amount: 2900 });
  }, 60_000);
});

describe("cap alerts", () => {
  test("thresholds of a key and of its budget are each raised exactly once (reaching one exactly counts); cap.hit once a day", async () => {
    const { kb } = stack;
    const prefix = freshPrefix();
    const budget = await createBudget({ name: "alerts", label_prefix: prefix, daily_usd_cap: 20 });
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "run", daily_usd_cap: 10 }));
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 0 });
    // $1 each: the key reaches exactly $5 (50 %), $8 (80 %) and $10 (100 %); then two refusals.
    for (let i = 0; i < 12; i++) await pi(stripe, 100).catch(() => null);
    await kb.services.forwarder.settled();
    const mine = async (type: "cap.threshold" | "cap.hit") => (await kb.services.events.list({ type, limit: 100 })).rows.filter((e) => e.target === key.key_id || e.target === budget.budget_id).reverse();
    const thresholds = (await mine("cap.threshold")).map((e) => `${e.data.scope}:${e.data.threshold}:${e.data.spent_usd}`);
    expect(thresholds).toEqual(["key:0.5:5", "key:0.8:8", "key:1:10", "budget:0.5:10"]);
    const hits = await mine("cap.hit");
    expect(hits).toHaveLength(1);
    expect(hits[0]!.data).toMatchObject({ scope: "key", key_id: key.key_id, agent_run_label: prefix + "run", cap_usd: 10, spent_usd: 10 });
  });

  test("a budget's cap.hit names the budget", async () => {
    const { kb } = stack;
    const prefix = freshPrefix();
    const budget = await createBudget({ name: "tiny", label_prefix: prefix, daily_usd_cap: 1 });
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "run", daily_usd_cap: 10 }));
    for (let i = 0; i < 3; i++) await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" });
    const hits = (await kb.services.events.list({ type: "cap.hit", limit: 100 })).rows.filter((e) => e.target === budget.budget_id);
    expect(hits).toHaveLength(1);
    expect(hits[0]!.data).toMatchObject({ scope: "budget", budget_id: budget.budget_id, name: "tiny", cap_usd: 1, spent_usd: 1 });
  });
});
