import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir, TEST_BACKEND } from "./helpers.ts";
import { proxied, startProxyStack, vendorEnv } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
const label = "airflow-billing/audit-" + Date.now();
let keyA: any;
let keyB: any;

beforeAll(async () => {
  stack = await startProxyStack();
  const { kb } = stack;
  keyA = await kb.issueKey(seedKeyBody({ agent_run_label: label, daily_usd_cap: 60 }));
  keyB = await kb.issueKey(seedKeyBody({ agent_run_label: label + "-b", daily_usd_cap: 100 }));
  for (let i = 0; i < 3; i++) await proxied(kb.url, keyA.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" }); // 2 ok, 1 cap hit
  await proxied(kb.url, keyA.vault_key, "GET", "/v1/balance"); // endpoint denied
  await proxied(kb.url, keyB.vault_key, "POST", "/v1/payment_intents", { amount: "1000", currency: "usd" });
  await proxied(kb.url, "vk_bogus", "POST", "/v1/payment_intents", { amount: "1", currency: "usd" });
});
afterAll(() => stack.stop());

describe("GET /vault/audit", () => {
  test("filters by label, key, outcome and vendor; one row per request", async () => {
    const { kb } = stack;
    const byLabel = (await kb.api("GET", `/vault/audit?label=${encodeURIComponent(label)}`)).json.data;
    expect(byLabel.map((r: any) => r.outcome)).toEqual(["endpoint_denied", "cap_hit", "forwarded", "forwarded"]);
    expect(byLabel.every((r: any) => r.key_id === keyA.key_id)).toBe(true);
    const capHits = (await kb.api("GET", `/vault/audit?key_id=${keyA.key_id}&outcome=cap_hit`)).json.data;
    expect(capHits).toHaveLength(1);
    expect(capHits[0]).toMatchObject({ error_code: "cap_exceeded", estimated_cost_usd: 29, ledger_state: "none" });
    const invalid = (await kb.api("GET", `/vault/audit?outcome=invalid_key`)).json.data;
    expect(invalid[0]).toMatchObject({ key_id: null, vendor: "stripe", path: "/v1/payment_intents" });
    expect((await kb.api("GET", `/vault/audit?vendor=twilio`)).json.data).toHaveLength(0);
  });

  test("cursor pagination walks every row once; time filters bound it", async () => {
    const { kb } = stack;
    const seen: number[] = [];
    let cursor = "";
    for (let i = 0; i < 10; i++) {
      const page = (await kb.api("GET", `/vault/audit?limit=2${cursor ? `&cursor=${cursor}` : ""}`)).json;
      seen.push(...page.data.map((r: any) => r.id));
      if (!page.next_cursor) break;
      cursor = page.next_cursor;
    }
    expect(seen).toHaveLength(6);
    expect(new Set(seen).size).toBe(6);
    const future = new Date(Date.now() + 60_000).toISOString();
    expect((await kb.api("GET", `/vault/audit?since=${future}`)).json.data).toHaveLength(0);
    expect((await kb.api("GET", `/vault/audit?until=${future}`)).json.data).toHaveLength(6);
  });

  test("bad filters are refused naming the field", async () => {
    const { kb } = stack;
    for (const [q, field] of [
      ["outcome=exploded", "outcome"],
      ["since=yesterday", "since"],
      ["limit=0", "limit"],
      ["format=xml", "format"],
      ["color=red", "(body)"],
    ]) {
      const r = await kb.api("GET", `/vault/audit?${q}`);
      expect(r.status).toBe(400);
      expect(r.json.error.details.map((d: any) => d.field)).toContain(field);
    }
  });

  test("CSV and JSONL export the filtered rows", async () => {
    const { kb } = stack;
    const csv = await fetch(`${kb.url}/vault/audit?format=csv&label=${encodeURIComponent(label)}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(csv.headers.get("content-type")).toContain("text/csv");
    const lines = (await csv.text()).trim().split("\r\n");
    expect(lines[0]).toStartWith("id,time,key_id,agent_run_label,vendor,method,path,outcome");
    expect(lines).toHaveLength(5);
    expect(lines[1]).toContain("endpoint_denied");
    const jsonl = await fetch(`${kb.url}/vault/audit?format=jsonl&key_id=${keyB.key_id}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const rows = (await jsonl.text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ key_id: keyB.key_id, outcome: "forwarded", settled_cost_usd: 10 });
  });
});

describe("GET /vault/spend", () => {
  test("totals per label and per key for today", async () => {
    const { kb } = stack;
    const spend = (await kb.api("GET", "/vault/spend")).json;
    const a = spend.by_label.find((r: any) => r.agent_run_label === label);
    expect(a).toEqual({ agent_run_label: label, spent_usd: 58, reserved_usd: 0, calls: 4, cap_hits: 1 });
    const b = spend.by_key.find((r: any) => r.key_id === keyB.key_id);
    expect(b).toMatchObject({ spent_usd: 10, calls: 1, vendor: "stripe" });
    const only = (await kb.api("GET", `/vault/spend?label=${encodeURIComponent(label + "-b")}`)).json;
    expect(only.by_label).toHaveLength(1);
    const past = (await kb.api("GET", "/vault/spend?since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00Z")).json;
    expect(past.by_label).toHaveLength(0);
    expect((await kb.api("GET", "/vault/spend?since=nope")).status).toBe(400);
  });
});

describe("GET /metrics", () => {
  test("Prometheus text with requests by outcome, cap hits, spend and upstream latency", async () => {
    const { kb } = stack;
    const res = await fetch(`${kb.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    expect(text).toContain('keybrake_proxy_requests_total{vendor="stripe",outcome="forwarded"} 3');
    expect(text).toContain('keybrake_proxy_requests_total{vendor="stripe",outcome="cap_hit"} 1');
    expect(text).toContain("keybrake_cap_hits_total 1");
    expect(text).toContain('keybrake_spend_usd_total{vendor="stripe"} 68');
    expect(text).toMatch(/keybrake_upstream_duration_seconds_count\{vendor="stripe"\} 3/);
    expect(text).toContain("keybrake_vault_keys_active 2");
  });
});

describe("GET /metrics: the ledger's group commit", () => {
  test("40 concurrent calls are 80 ledger writes sharing fewer commits; SQLite fsyncs once per commit that reserves at most; PostgreSQL counts its batched writes", async () => {
    const { kb } = stack;
    const read = async () => {
      const text = await (await fetch(`${kb.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text();
      const counter = (name: string) => {
        expect(text).toContain(`# TYPE ${name} counter`);
        return Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)![1]);
      };
      const pgOnly = (name: string) => {
        if (TEST_BACKEND !== "postgres") return expect(text).not.toContain(name);
        return counter(name);
      };
      return {
        commits: counter("keybrake_ledger_commits_total"),
        writes: counter("keybrake_ledger_writes_total"),
        fsyncs: counter("keybrake_ledger_fsyncs_total"),
        batched: pgOnly("keybrake_ledger_batched_writes_total") ?? 0,
        rollbacks: pgOnly("keybrake_ledger_batch_rollbacks_total") ?? 0,
      };
    };
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: `${label}-metrics`, daily_usd_cap: 10_000 }));
    const before = await read();
    const answers = await Promise.all(Array.from({ length: 40 }, () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" })));
    expect(answers.every((r) => r.status === 200)).toBe(true);
    const after = await read();
    const commits = after.commits - before.commits;
    expect(after.writes - before.writes).toBe(80); // an admission and a settlement per call
    expect(commits).toBeGreaterThan(0);
    expect(commits).toBeLessThan(80);
    const fsyncs = after.fsyncs - before.fsyncs;
    if (TEST_BACKEND === "postgres") {
      expect(fsyncs).toBe(0);
      expect(after.batched - before.batched).toBeGreaterThan(0); // the batched path was taken
      expect(after.batched - before.batched).toBeLessThanOrEqual(80);
      expect(after.rollbacks - before.rollbacks).toBe(0);
    } else {
      expect(fsyncs).toBeGreaterThan(0);
      expect(fsyncs).toBeLessThanOrEqual(commits);
    }
  });
});

describe("a crash never lets the cap be exceeded", () => {
  test("SIGKILL mid-fan-out: in-flight reservations stay held; after restart settled + reserved ≤ cap", async () => {
    const { fake } = stack;
    fake.reset();
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
    const first = await spawnKeybrake(env);
    const key = (await apiCall(first.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 100 }))).json;
    fake.setDefaultBehavior({ kind: "delay", ms: 2000 });
    const inFlight = Array.from({ length: 10 }, () =>
      proxied(first.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" }).catch(() => null),
    );
    for (let i = 0; i < 100 && fake.calls.length < 3; i++) await Bun.sleep(20);
    first.proc.kill("SIGKILL");
    await first.proc.exited;
    await Promise.all(inFlight);
    fake.setDefaultBehavior({ kind: "normal" });

    const second = await spawnKeybrake(env);
    try {
      const view = (await apiCall(second.url, "GET", `/vault/keys/${key.key_id}`)).json;
      expect(view.reserved_usd).toBe(87); // 3 × $29 whose outcome died with the process
      expect(view.spent_today_usd + view.reserved_usd).toBeLessThanOrEqual(100);
      const more = await Promise.all(
        Array.from({ length: 10 }, () => proxied(second.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "2900", currency: "usd" })),
      );
      expect(more.filter((r) => r.status === 200)).toHaveLength(0); // $13 left: not enough for $29
      expect(more.filter((r) => r.status === 429)).toHaveLength(10);
    } finally {
      await second.stop();
    }
  }, 30_000);
});
