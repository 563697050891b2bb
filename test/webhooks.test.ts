import type { EventLog } from "../src/domain/events.ts";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Stripe from "stripe";
import { verifyKeybrakeSignature } from "../clients/webhook-signature.ts";
import type { RetryPolicy } from "../src/domain/webhooks.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, startKeybrake, tempDir, sqliteOf, dbRow, TEST_BACKEND } from "./helpers.ts";
import { proxied, startProxyStack, stripeThrough, vendorEnv } from "./proxy-setup.ts";

/** A real HTTP receiver on a loopback port; `answer` decides each response (a Promise that never settles hangs). */
interface Received {
  headers: Headers;
  body: string;
  at: number;
}
function startReceiver() {
  const received: Received[] = [];
  let answer: (r: Received, n: number) => Response | Promise<Response> = () => new Response("ok");
  const hung: (() => void)[] = [];
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    idleTimeout: 0,
    async fetch(req) {
      const r = { headers: req.headers, body: await req.text(), at: Date.now() };
      received.push(r);
      return answer(r, received.length);
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}/hook`,
    received,
    answerWith(f: typeof answer) {
      answer = f;
    },
    /** Every request from now on is left without an answer until release(). */
    hang() {
      answer = () => new Promise<Response>((resolve) => hung.push(() => resolve(new Response("late"))));
    },
    hungCount: () => hung.length,
    release() {
      for (const h of hung.splice(0)) h();
    },
    reset() {
      received.length = 0;
      answer = () => new Response("ok");
    },
    stop: () => server.stop(true),
  };
}

const FAST: RetryPolicy = { delaysMs: [20, 20, 20, 20], thenEveryMs: 20, giveUpAfterMs: 60_000 };

let stack: Awaited<ReturnType<typeof startProxyStack>>;
let rx: ReturnType<typeof startReceiver>;
beforeAll(async () => {
  stack = await startProxyStack({ KEYBRAKE_LOG: "silent" });
  stack.kb.services.webhooks.policy = FAST;
  rx = startReceiver();
});
afterAll(async () => {
  rx.release();
  rx.stop();
  await stack.stop();
});
beforeEach(async () => {
  rx.reset();
  stack.fake.reset();
  // One test's webhooks must not hear the next test's events.
  for (const w of (await stack.kb.api("GET", "/webhooks")).json.data) await stack.kb.api("DELETE", `/webhooks/${w.webhook_id}`);
});

/** Resolves once `cond` holds, polling the receiver's state (no fixed sleeps in assertions). */
async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 15_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

async function createWebhook(body: Record<string, unknown>, base = stack.kb.url) {
  const r = await apiCall(base, "POST", "/webhooks", { url: rx.url, ...body });
  if (r.status !== 201) throw new Error(`webhook: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json as { webhook_id: string; secret: string; [k: string]: any };
}

const PYTHON = "python3";
function pythonVerifies(secret: string, header: string, body: string): boolean {
  const dir = mkdtempSync(join(tmpdir(), "kb-sig-"));
  writeFileSync(join(dir, "body"), body);
  const p = Bun.spawnSync([PYTHON, join(import.meta.dir, "..", "clients", "webhook_signature.py"), secret, header], { stdin: Bun.file(join(dir, "body")) });
  return p.exitCode === 0;
}

describe("the webhooks API", () => {
  test("create shows the secret once; it is stored encrypted and never listed", async () => {
    const { kb } = stack;
    const r = await kb.api("POST", "/webhooks", { url: rx.url, events: ["cap.hit", "key.revoked"] });
    expect(r.status).toBe(201);
    expect(r.json).toMatchObject({ url: rx.url, events: ["cap.hit", "key.revoked"], thresholds: [0.5, 0.8, 1], format: "json", status: "active" });
    expect(r.json.secret).toMatch(/^whsec_/);
    const listed = JSON.stringify((await kb.api("GET", "/webhooks")).json);
    expect(listed).toContain(r.json.webhook_id);
    expect(listed).not.toContain(r.json.secret);
    expect(JSON.stringify((await kb.api("GET", `/webhooks/${r.json.webhook_id}`)).json)).not.toContain(r.json.secret);
    const stored = JSON.stringify(await dbRow(kb.services, "SELECT * FROM webhooks WHERE id = ?", r.json.webhook_id));
    expect(stored).not.toContain(r.json.secret);
    expect(stored).not.toContain(r.json.secret.slice(6, 20));
    const del = await kb.api("DELETE", `/webhooks/${r.json.webhook_id}`);
    expect(del.json.status).toBe("deleted");
    expect((await kb.api("GET", "/webhooks/whk_nope")).status).toBe(404);
    expect((await kb.api("GET", "/webhooks", undefined, null)).status).toBe(401);
  }, 20_000);

  test("a receiver URL is a credential: shown whole only when created, masked in every list and page", async () => {
    const { kb } = stack;
    const url = "https://hooks.slack.com/services/T0001/B0002/s3cr3tt0k3nXYZW?x=1";
    const r = await kb.api("POST", "/webhooks", { url, events: ["cap.hit"], format: "slack" });
    expect(r.json.url).toBe(url);
    const shown = (await kb.api("GET", `/webhooks/${r.json.webhook_id}`)).json.url;
    expect(shown).toBe("https://hooks.slack.com/…?x=1"); // the origin and the last 4 characters
    const listed = JSON.stringify((await kb.api("GET", "/webhooks")).json);
    expect(listed).not.toContain("s3cr3tt0k3n");
    await kb.api("DELETE", `/webhooks/${r.json.webhook_id}`);
  });

  const bad: [string, unknown, string[]][] = [
    ["nothing", {}, ["url", "events"]],
    ["a non-http scheme and an unknown event", { url: "ftp://example.com/x", events: ["cap.hit", "key.exploded"] }, ["url", "events.1"]],
    ["a relative url, empty events", { url: "/hook", events: [] }, ["url", "events"]],
    ["thresholds out of range and a bad format", { url: "https://example.com/x", events: ["cap.threshold"], thresholds: [0, 1.5], format: "xml" }, ["thresholds.0", "thresholds.1", "format"]],
  ];
  test.each(bad)("POST /webhooks refuses %s naming each field, and creates nothing", async (_n, body, fields) => {
    const before = (await stack.kb.api("GET", "/webhooks")).json.data.length;
    const r = await stack.kb.api("POST", "/webhooks", body);
    expect(r.status).toBe(400);
    expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual([...fields].sort());
    expect((await stack.kb.api("GET", "/webhooks")).json.data.length).toBe(before);
  });
});

describe("deliveries", () => {
  test("a signed JSON delivery per event, verified by the TypeScript and Python clients", async () => {
    const { kb } = stack;
    const hook = await createWebhook({ events: ["budget.updated"] });
    const budget = (await kb.api("POST", "/budgets", { name: "ops <b>", label_prefix: "sig/", daily_usd_cap: 5 })).json;
    await until(() => rx.received.length === 1, "the delivery");
    const got = rx.received[0]!;
    const header = got.headers.get("keybrake-signature")!;
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(verifyKeybrakeSignature(hook.secret, got.body, header)).toBe(true);
    expect(pythonVerifies(hook.secret, header, got.body)).toBe(true);
    // Tampered body, wrong secret, stale timestamp: all refused by both.
    expect(verifyKeybrakeSignature(hook.secret, got.body + " ", header)).toBe(false);
    expect(verifyKeybrakeSignature("whsec_wrong", got.body, header)).toBe(false);
    expect(verifyKeybrakeSignature(hook.secret, got.body, header, { now: Date.now() + 3_600_000 })).toBe(false);
    expect(pythonVerifies(hook.secret, header, got.body.replace("ops", "opz"))).toBe(false);
    expect(pythonVerifies("whsec_wrong", header, got.body)).toBe(false);

    const event = JSON.parse(got.body);
    expect(Object.keys(event).sort()).toEqual(["created_at", "data", "id", "type"]);
    const stored = (await kb.services.events.list({ type: "budget.updated", limit: 5 })).rows.find((e) => e.target === budget.budget_id)!;
    expect(event).toMatchObject({ id: stored.id, type: "budget.updated", data: { action: "created", budget_id: budget.budget_id, actor: { name: expect.any(String) } } });
    expect(got.headers.get("keybrake-event-id")).toBe(stored.id);

    const deliveries = (await kb.api("GET", `/webhooks/${hook.webhook_id}/deliveries`)).json.data;
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]).toMatchObject({ event_id: stored.id, state: "delivered", attempt_count: 1, attempts: [{ attempt: 1, status: 200, error: null }] });
  }, 20_000);

  test("500s are retried with the same event id and the same signed body; each attempt is listed", async () => {
    const { kb } = stack;
    const hook = await createWebhook({ events: ["budget.updated"] });
    rx.answerWith((_r, n) => new Response("nope", { status: n <= 2 ? 500 : 200 }));
    await kb.api("POST", "/budgets", { name: "retry", label_prefix: "retry/", daily_usd_cap: 5 });
    await until(() => rx.received.length === 3, "three attempts");
    const ids = rx.received.map((r) => JSON.parse(r.body).id);
    expect(new Set(ids).size).toBe(1);
    expect(new Set(rx.received.map((r) => r.body)).size).toBe(1);
    for (const r of rx.received) expect(verifyKeybrakeSignature(hook.secret, r.body, r.headers.get("keybrake-signature"))).toBe(true);
    await until(async () => (await dbRow<{ state: string }>(kb.services, "SELECT state FROM webhook_deliveries WHERE webhook_id = ?", hook.webhook_id))?.state === "delivered", "delivered");
    const [d] = (await kb.api("GET", `/webhooks/${hook.webhook_id}/deliveries`)).json.data;
    expect(d.attempts.map((a: any) => a.status)).toEqual([500, 500, 200]);
    expect(d.attempts[0].error).toBe("HTTP 500");
    expect(rx.received.length).toBe(3); // nothing after the success
  }, 20_000);

  test("a receiver that never succeeds is given up on when the schedule ends, the attempts kept", async () => {
    const { kb } = stack;
    kb.services.webhooks.policy = { delaysMs: [10, 10], thenEveryMs: 10, giveUpAfterMs: 25 };
    try {
      const hook = await createWebhook({ events: ["budget.updated"] });
      rx.answerWith(() => new Response("down", { status: 503 }));
      await kb.api("POST", "/budgets", { name: "give up", label_prefix: "gu/", daily_usd_cap: 5 });
      await until(async () => (await dbRow<{ state: string }>(kb.services, "SELECT state FROM webhook_deliveries WHERE webhook_id = ?", hook.webhook_id))?.state === "failed", "failed");
      const [d] = (await kb.api("GET", `/webhooks/${hook.webhook_id}/deliveries`)).json.data;
      expect(d.state).toBe("failed");
      expect(d.attempts.length).toBe(rx.received.length);
      expect(d.attempts.every((a: any) => a.status === 503)).toBe(true);
    } finally {
      kb.services.webhooks.policy = FAST;
    }
  }, 20_000);

  // The same on PostgreSQL: test/store-webhooks.test.ts ("outbox rows only if the transaction commits").
  test.skipIf(TEST_BACKEND === "postgres")("a delivery exists iff its change committed", async () => {
    const { kb } = stack;
    const s = kb.services;
    const hook = await s.webhooks.create({ url: rx.url, events: ["key.revoked"] });
    expect(() =>
      sqliteOf(s).transaction(() => {
        (s.events as EventLog).record({ type: "key.revoked", actor: null, target: "key_x", data: { key_id: "key_x" } });
        throw new Error("the revocation failed");
      })(),
    ).toThrow("the revocation failed");
    expect(sqliteOf(s).query("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = ?").get(hook.row.id)).toEqual({ n: 0 });
    sqliteOf(s).transaction(() => (s.events as EventLog).record({ type: "key.revoked", actor: null, target: "key_y", data: { key_id: "key_y" } }))();
    expect(sqliteOf(s).query("SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = ?").get(hook.row.id)).toEqual({ n: 1 });
    await until(() => rx.received.length === 1, "the committed one's delivery");
    expect(JSON.parse(rx.received[0]!.body).data.key_id).toBe("key_y");
  }, 20_000);

  test("cap alerts: each webhook hears its own thresholds once; Slack format is signed the same and escapes client text", async () => {
    const { kb } = stack;
    const json80 = await createWebhook({ events: ["cap.threshold"], thresholds: [0.8] });
    const slack = await createWebhook({ events: ["cap.threshold", "cap.hit"], format: "slack" });
    const label = `alerts/<b>run</b>-${Date.now()}`;
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: label, daily_usd_cap: 10 }));
    const stripe = stripeThrough(kb.url, key.vault_key, { maxNetworkRetries: 0 });
    for (let i = 0; i < 12; i++) await stripe.paymentIntents.create({ amount: 100, currency: "usd" }).catch(() => null);
    await until(() => rx.received.length >= 5, "1 + 4 deliveries");
    await Bun.sleep(50); // let anything extra (which would be a bug) arrive before counting
    const byHook = (secret: string) => rx.received.filter((r) => verifyKeybrakeSignature(secret, r.body, r.headers.get("keybrake-signature")));
    const jsonBodies = byHook(json80.secret).map((r) => JSON.parse(r.body));
    expect(jsonBodies.map((b) => [b.type, b.data.threshold, b.data.spent_usd, b.data.cap_usd, b.data.key_id])).toEqual([["cap.threshold", 0.8, 8, 10, key.key_id]]);
    const texts = byHook(slack.secret).map((r) => JSON.parse(r.body));
    expect(texts.every((t) => Object.keys(t).join() === "text")).toBe(true);
    // Sent concurrently, so in any order: each expected message exactly once.
    expect(texts).toHaveLength(4);
    for (const want of ["reached 50% of its $10 daily cap ($5 spent)", "reached 80%", "reached 100%", "hit its $10 daily cap"]) {
      expect(texts.filter((t) => t.text.includes(want))).toHaveLength(1);
    }
    for (const r of byHook(slack.secret)) expect(r.headers.get("keybrake-event-id")).toMatch(/^evt_/); // the body has no id: the header does
    for (const t of texts) {
      expect(t.text).toContain("&lt;b&gt;run&lt;/b&gt;");
      expect(t.text).not.toContain("<b>");
    }
  }, 20_000);
});

describe("a slow or dead receiver never slows the proxy", () => {
  // Structural, not a timing threshold: every proxied call is answered while every send slot
  // stays stuck on a receiver that never answers. A proxy that waited on a send (or on a lock
  // held while sending) could answer none of them until a send ended, and none ends here.
  test("every proxied call is answered while every send slot hangs and a backlog waits", async () => {
    const { kb } = stack;
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: "latency/run", daily_usd_cap: 100_000 }));
    const hook = await createWebhook({ events: ["budget.updated"] });
    rx.hang();
    for (let i = 0; i < 20; i++) await kb.api("POST", "/budgets", { name: `hang ${i}`, label_prefix: `hang-${i}/`, daily_usd_cap: 1 });
    await until(() => rx.hungCount() >= 4, "the send slots to fill");
    const stuck = rx.hungCount();

    const calls = 80;
    const answers = await Promise.all(
      Array.from({ length: calls }, (_, i) =>
        proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: String(100 + i), currency: "usd" }),
      ),
    );
    expect(answers.map((r) => r.status)).toEqual(Array(calls).fill(200));
    // No send ended (none answered, none timed out and freed a slot) while the calls ran.
    expect(rx.hungCount()).toBe(stuck);
    const pending = (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = ? AND state = 'pending'", hook.webhook_id))!;
    expect(pending.n).toBe(20);
    rx.release();
    await kb.api("DELETE", `/webhooks/${hook.webhook_id}`);
  }, 60_000);
});

describe("several processes on one data dir", () => {
  test("two processes drain one outbox without sending any attempt twice", async () => {
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(stack.fake) };
    const a = await spawnKeybrake(env);
    const b = await spawnKeybrake(env);
    try {
      await createWebhook({ events: ["budget.updated"] }, a.url);
      // Every first attempt fails, so every delivery goes back to the outbox, where both processes poll for it.
      const seen = new Map<string, number>();
      rx.answerWith((r) => {
        const id = JSON.parse(r.body).id as string;
        const n = (seen.get(id) ?? 0) + 1;
        seen.set(id, n);
        return new Response("", { status: n === 1 ? 503 : 200 });
      });
      const N = 30;
      for (let i = 0; i < N; i++) await apiCall(i % 2 ? a.url : b.url, "POST", "/budgets", { name: `mp ${i}`, label_prefix: `mp-${i}/`, daily_usd_cap: 1 });
      await until(() => seen.size === N && [...seen.values()].every((n) => n >= 2), "every event delivered", 30_000);
      await Bun.sleep(1_500); // one more retry interval: a double claim would show up as a third attempt
      expect([...seen.values()].every((n) => n === 2)).toBe(true);
      expect(rx.received.length).toBe(2 * N);
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 60_000);
});
