import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { openDatabase } from "../src/db/connection.ts";
import { MIGRATIONS } from "../src/db/migrations.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, startKeybrake, tempDir, sqliteOf, dbRow, dbRows, testBackendEnv, readSettled } from "./helpers.ts";
import { ledgerOf, proxied, startProxyStack, vendorEnv } from "./proxy-setup.ts";

/**
 * SPEC §7 governance, first half: roles, issuer policies, key ownership, live cap changes,
 * token revocation and the event trail — against the real server and the fake vendor.
 */

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack({ KEYBRAKE_LOG: "silent" });
});
afterAll(() => stack.stop());
const kb = () => stack.kb;

const countKeys = async () => (await dbRow<{ n: number }>(kb().services, "SELECT count(*) AS n FROM vault_keys"))!.n;
const countTokens = async () => (await dbRow<{ n: number }>(kb().services, "SELECT count(*) AS n FROM management_tokens"))!.n;

async function mintToken(body: Record<string, unknown>, via = ADMIN_TOKEN): Promise<{ token_id: string; token: string }> {
  const r = await kb().api("POST", "/tokens", body, via);
  if (r.status !== 201) throw new Error(`token create failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

/** A $10 PaymentIntent through the proxy. */
const pay = (url: string, vaultKey: string) => proxied(url, vaultKey, "POST", "/v1/payment_intents", { amount: "1000", currency: "usd" });

const POLICY = {
  vendors: ["stripe"],
  label_prefix: "kestra/",
  max_daily_usd_cap: 100,
  max_total_usd_cap: 500,
  max_expires_in: "1d",
  allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/customers/*", "* /v1/refunds"],
  stripe_accounts: ["acct_kestra1"],
};
const INSIDE = {
  vendor: "stripe",
  agent_run_label: "kestra/run-1",
  daily_usd_cap: 100,
  total_usd_cap: 500,
  expires_in: "1d",
  allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/customers/*"],
};

describe("an issuer's policy bounds every key it issues", () => {
  let issuer = "";
  beforeAll(async () => {
    issuer = (await mintToken({ name: "kestra-issuer", role: "issuer", policy: POLICY })).token;
  });

  // [scenario, overrides of INSIDE, fields expected to be named (empty: inside the policy)]
  const cases: [string, Record<string, unknown>, string[]][] = [
    ["exactly at every bound", {}, []],
    ["vendor outside the list", { vendor: "resend" }, ["vendor"]],
    ["label outside the prefix", { agent_run_label: "airflow/run-1" }, ["agent_run_label"]],
    ["label equal to the prefix without its slash", { agent_run_label: "kestra" }, ["agent_run_label"]],
    ["label with another case", { agent_run_label: "Kestra/run-1" }, ["agent_run_label"]],
    ["label with leading spaces (trimmed, so inside)", { agent_run_label: "  kestra/run-2" }, []],
    ["daily cap a micro-dollar over", { daily_usd_cap: 100.000001 }, ["daily_usd_cap"]],
    ["daily cap below", { daily_usd_cap: 5 }, []],
    ["no total cap where the policy has one", { total_usd_cap: undefined }, ["total_usd_cap"]],
    ["total cap null", { total_usd_cap: null }, ["total_usd_cap"]],
    ["total cap over", { total_usd_cap: 500.01 }, ["total_usd_cap"]],
    ["expiry over", { expires_in: "25h" }, ["expires_in"]],
    ["expiry under", { expires_in: "30m" }, []],
    ["method * where the policy names one", { allowed_endpoints: ["* /v1/payment_intents"] }, ["allowed_endpoints.0"]],
    ["another method", { allowed_endpoints: ["POST /v1/customers/*"] }, ["allowed_endpoints.0"]],
    ["a longer path", { allowed_endpoints: ["GET /v1/customers/*/sources"] }, ["allowed_endpoints.0"]],
    ["a shorter path", { allowed_endpoints: ["GET /v1/customers"] }, ["allowed_endpoints.0"]],
    ["* segment where the policy names one", { allowed_endpoints: ["GET /v1/*/cus_1"] }, ["allowed_endpoints.0"]],
    ["a literal under a policy *", { allowed_endpoints: ["GET /v1/customers/cus_123"] }, []],
    ["any method under a policy * method", { allowed_endpoints: ["DELETE /v1/refunds", "* /v1/refunds"] }, []],
    ["the second rule outside", { allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/charges"] }, ["allowed_endpoints.1"]],
    ["unpriced writes let through ($0 against every cap)", { allow_unpriced: true }, ["allow_unpriced"]],
    ["allow_unpriced false", { allow_unpriced: false }, []],
    ["a connected account the policy lists", { stripe_accounts: ["acct_kestra1"] }, []],
    ["a connected account it does not list", { stripe_accounts: ["acct_kestra1", "acct_other"] }, ["stripe_accounts.1"]],
    [
      "everything outside at once",
      { vendor: "twilio", agent_run_label: "x", daily_usd_cap: 1e6, total_usd_cap: undefined, expires_in: "7d", allowed_endpoints: ["* /*"] },
      ["vendor", "agent_run_label", "daily_usd_cap", "total_usd_cap", "expires_in", "allowed_endpoints.0"],
    ],
  ];
  for (const [name, over, fields] of cases) {
    test(name, async () => {
      const before = await countKeys();
      const r = await kb().api("POST", "/vault/keys", { ...INSIDE, ...over }, issuer);
      if (fields.length === 0) {
        expect(r.status).toBe(201);
        expect(await countKeys()).toBe(before + 1);
        return;
      }
      expect(r.status).toBe(403);
      expect(r.json.error.code).toBe("policy_violation");
      expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual([...fields].sort());
      for (const f of fields) expect(r.json.error.message).toContain(f);
      expect(await countKeys()).toBe(before);
    });
  }

  test("a policy that lists no stripe_accounts lets its keys act on no connected account", async () => {
    const { stripe_accounts: _, ...withoutAccounts } = POLICY;
    const other = (await mintToken({ name: "kestra-no-connect", role: "issuer", policy: withoutAccounts })).token;
    const before = await countKeys();
    const r = await kb().api("POST", "/vault/keys", { ...INSIDE, stripe_accounts: ["acct_kestra1"] }, other);
    expect(r.status).toBe(403);
    expect(r.json.error.details).toEqual([{ field: "stripe_accounts.0", message: expect.stringContaining("lists no stripe_accounts") }]);
    expect(await countKeys()).toBe(before);
    expect((await kb().api("POST", "/vault/keys", INSIDE, other)).status).toBe(201);
  });

  test("bad input is still a 400 before any policy check", async () => {
    const r = await kb().api("POST", "/vault/keys", { ...INSIDE, daily_usd_cap: -1 }, issuer);
    expect(r.status).toBe(400);
    expect(r.json.error.details.map((d: any) => d.field)).toEqual(["daily_usd_cap"]);
  });

  // PATCH is bounded by the same policy: [change, fields named]
  const patches: [Record<string, unknown>, string[]][] = [
    [{ daily_usd_cap: 100 }, []],
    [{ daily_usd_cap: 101 }, ["daily_usd_cap"]],
    [{ total_usd_cap: 500 }, []],
    [{ total_usd_cap: 600 }, ["total_usd_cap"]],
    [{ total_usd_cap: null }, ["total_usd_cap"]],
    [{ expires_in: "1d" }, []],
    [{ expires_in: "2d" }, ["expires_in"]],
    [{ daily_usd_cap: 1000, expires_in: "7d" }, ["daily_usd_cap", "expires_in"]],
  ];
  for (const [change, fields] of patches) {
    test(`PATCH ${JSON.stringify(change)}`, async () => {
      const key = (await kb().api("POST", "/vault/keys", { ...INSIDE, daily_usd_cap: 10, total_usd_cap: 20, expires_in: "1h" }, issuer)).json;
      const r = await kb().api("PATCH", `/vault/keys/${key.key_id}`, change, issuer);
      const after = (await kb().api("GET", `/vault/keys/${key.key_id}`)).json;
      if (fields.length === 0) {
        expect(r.status).toBe(200);
        for (const [k, v] of Object.entries(change)) if (k !== "expires_in") expect(after[k]).toBe(v);
        return;
      }
      expect(r.status).toBe(403);
      expect(r.json.error.code).toBe("policy_violation");
      expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual([...fields].sort());
      expect(after).toMatchObject({ daily_usd_cap: 10, total_usd_cap: 20, expires_at: key.expires_at }); // nothing changed
    });
  }
});

describe("policies and token bodies are validated (400 naming each field, nothing created)", () => {
  const cases: [string, Record<string, unknown>, string[]][] = [
    ["issuer without a policy", { name: "x", role: "issuer" }, ["policy"]],
    ["policy not an object", { name: "x", role: "issuer", policy: "all" }, ["policy"]],
    ["empty vendors", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, vendors: [] } }, ["policy.vendors"]],
    ["unknown vendor", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, vendors: ["paypal"] } }, ["policy.vendors.0"]],
    ["no max_daily_usd_cap", { name: "x", role: "issuer", policy: { vendors: ["stripe"] } }, ["policy.max_daily_usd_cap"]],
    ["negative max_daily_usd_cap", { name: "x", role: "issuer", policy: { max_daily_usd_cap: -5 } }, ["policy.max_daily_usd_cap"]],
    ["bad max_expires_in", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, max_expires_in: "forever" } }, ["policy.max_expires_in"]],
    ["bad policy endpoint", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, allowed_endpoints: ["GET /v1/cus*"] } }, ["policy.allowed_endpoints.0"]],
    ["bad policy stripe account", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, stripe_accounts: ["cus_1"] } }, ["policy.stripe_accounts.0"]],
    ["empty label_prefix", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, label_prefix: "" } }, ["policy.label_prefix"]],
    ["unknown policy field", { name: "x", role: "issuer", policy: { max_daily_usd_cap: 1, max_calls: 3 } }, ["policy"]],
    [
      "several bad policy fields",
      { name: "x", role: "issuer", policy: { max_daily_usd_cap: "lots", vendors: "stripe", max_total_usd_cap: -1 } },
      ["policy.max_daily_usd_cap", "policy.vendors", "policy.max_total_usd_cap"],
    ],
    ["a policy on a viewer", { name: "x", role: "viewer", policy: { max_daily_usd_cap: 1 } }, ["policy"]],
    ["unknown role", { name: "x", role: "root" }, ["role"]],
    ["no name", { role: "viewer" }, ["name"]],
    ["a name with a newline (CLI list lines)", { name: "a\nb", role: "viewer" }, ["name"]],
  ];
  for (const [name, body, fields] of cases) {
    test(name, async () => {
      const before = await countTokens();
      const r = await kb().api("POST", "/tokens", body);
      expect(r.status).toBe(400);
      expect(r.json.error.code).toBe("invalid_request");
      expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual([...fields].sort());
      expect(await countTokens()).toBe(before);
    });
  }

  test("POST /tokens shows the token once; GET /tokens never shows it or its hash", async () => {
    const created = await kb().api("POST", "/tokens", { name: "ro", role: "viewer" });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ name: "ro", role: "viewer", policy: null, status: "active", revoked_at: null });
    expect(created.json.token_id).toMatch(/^tok_/);
    expect(created.json.token).toMatch(/^kbt_/);
    const list = await kb().api("GET", "/tokens");
    const listed = list.json.data.find((t: any) => t.token_id === created.json.token_id);
    expect(listed).toMatchObject({ name: "ro", role: "viewer", status: "active" });
    const text = JSON.stringify(list.json);
    expect(text).not.toContain(created.json.token);
    expect(text).not.toContain(new Bun.CryptoHasher("sha256").update(created.json.token).digest("hex"));
    expect(list.json.data.every((t: any) => t.token === undefined)).toBe(true);
  });
});

describe("issuers see and change only the keys they issued", () => {
  let a = "";
  let b = "";
  let viewer = "";
  const label = "kestra/shared-run";
  const keys: Record<string, { key_id: string; vault_key: string }> = {};
  beforeAll(async () => {
    a = (await mintToken({ name: "issuer-a", role: "issuer", policy: { max_daily_usd_cap: 100 } })).token;
    b = (await mintToken({ name: "issuer-b", role: "issuer", policy: { max_daily_usd_cap: 100 } })).token;
    viewer = (await mintToken({ name: "viewer", role: "viewer" })).token;
    for (const [who, token] of [["a", a], ["b", b], ["admin", ADMIN_TOKEN]] as const) {
      keys[who] = (await kb().api("POST", "/vault/keys", seedKeyBody({ agent_run_label: label, daily_usd_cap: 50 }), token)).json;
      expect((await pay(kb().url, keys[who]!.vault_key)).status).toBe(200);
    }
  });

  test("list, read, audit and spend: only its own keys; another's key is 404 (existence not leaked)", async () => {
    const list = await kb().api("GET", `/vault/keys?label=${encodeURIComponent(label)}`, undefined, a);
    expect(list.json.data.map((k: any) => k.key_id)).toEqual([keys.a!.key_id]);
    expect((await kb().api("GET", `/vault/keys?label=kestra/*`, undefined, a)).json.data.map((k: any) => k.key_id)).toEqual([keys.a!.key_id]);
    for (const other of [keys.b!, keys.admin!]) {
      const r = await kb().api("GET", `/vault/keys/${other.key_id}`, undefined, a);
      expect(r.status).toBe(404);
      expect(r.json.error.message).toBe((await kb().api("GET", "/vault/keys/key_does_not_exist", undefined, a)).json.error.message.replace("key_does_not_exist", other.key_id));
    }
    const audit = await kb().api("GET", `/vault/audit?label=${encodeURIComponent(label)}`, undefined, a);
    expect(new Set(audit.json.data.map((r: any) => r.key_id))).toEqual(new Set([keys.a!.key_id]));
    const csv = await fetch(kb().url + `/vault/audit?format=csv&label=${encodeURIComponent(label)}`, { headers: { authorization: `Bearer ${a}` } });
    const text = await csv.text();
    expect(text).toContain(keys.a!.key_id);
    expect(text).not.toContain(keys.b!.key_id);
    const spend = await kb().api("GET", `/vault/spend?label=${encodeURIComponent(label)}`, undefined, a);
    expect(spend.json.by_key.map((k: any) => k.key_id)).toEqual([keys.a!.key_id]);
    expect(spend.json.by_label).toEqual([expect.objectContaining({ agent_run_label: label, spent_usd: 10 })]);
    // A viewer and an admin read all three.
    for (const t of [viewer, ADMIN_TOKEN]) {
      expect((await kb().api("GET", `/vault/keys?label=${encodeURIComponent(label)}`, undefined, t)).json.data).toHaveLength(3);
      expect((await kb().api("GET", `/vault/spend?label=${encodeURIComponent(label)}`, undefined, t)).json.by_label[0].spent_usd).toBe(30);
    }
  });

  test("PATCH and DELETE of another's key are 404 and change nothing", async () => {
    expect((await kb().api("PATCH", `/vault/keys/${keys.b!.key_id}`, { daily_usd_cap: 1 }, a)).status).toBe(404);
    expect((await kb().api("DELETE", `/vault/keys/${keys.b!.key_id}`, undefined, a)).status).toBe(404);
    expect((await kb().api("GET", `/vault/keys/${keys.b!.key_id}`)).json).toMatchObject({ status: "active", daily_usd_cap: 50 });
  });

  test("revoking a run label revokes only the issuer's own keys of that run", async () => {
    const r = await kb().api("POST", "/vault/keys/revoke", { agent_run_label: label }, a);
    expect(r.status).toBe(200);
    expect(r.json.revoked).toBe(1);
    expect(r.json.data.map((k: any) => k.key_id)).toEqual([keys.a!.key_id]);
    expect((await pay(kb().url, keys.a!.vault_key)).status).toBe(401);
    for (const k of [keys.b!, keys.admin!]) {
      expect((await kb().api("GET", `/vault/keys/${k.key_id}`)).json.status).toBe("active");
      expect((await pay(kb().url, k.vault_key)).status).toBe(200);
    }
  });

  test("a viewer can read but never change", async () => {
    for (const [method, path, body] of [
      ["POST", "/vault/keys", seedKeyBody()],
      ["PATCH", `/vault/keys/${keys.b!.key_id}`, { daily_usd_cap: 1 }],
      ["DELETE", `/vault/keys/${keys.b!.key_id}`],
      ["POST", "/vault/keys/revoke", { agent_run_label: label }],
    ] as const) {
      const r = await kb().api(method, path, body, viewer);
      expect(r.status).toBe(403);
      expect(r.json.error.code).toBe("forbidden");
    }
    expect((await kb().api("GET", `/vault/keys/${keys.b!.key_id}`)).json.status).toBe("active");
  });
});

describe("PATCH /vault/keys/{id}", () => {
  test("bad bodies are 400 naming the field; a revoked key is 409; unknown is 404", async () => {
    const key = await kb().issueKey(seedKeyBody());
    for (const [body, field] of [
      [{}, "(body)"],
      [{ daily_usd_cap: -1 }, "daily_usd_cap"],
      [{ expires_in: "forever" }, "expires_in"],
      [{ allowed_endpoints: ["* /*"] }, "(body)"],
      [{ vendor: "twilio" }, "(body)"],
    ] as const) {
      const r = await kb().api("PATCH", `/vault/keys/${key.key_id}`, body);
      expect(r.status).toBe(400);
      expect(r.json.error.details.map((d: any) => d.field)).toContain(field);
    }
    await kb().api("DELETE", `/vault/keys/${key.key_id}`);
    const r = await kb().api("PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: 1000 });
    expect(r.status).toBe(409);
    expect(r.json.error.code).toBe("conflict");
    expect((await kb().api("GET", `/vault/keys/${key.key_id}`)).json.daily_usd_cap).toBe(500);
    expect((await kb().api("PATCH", "/vault/keys/key_nope", { daily_usd_cap: 1 })).status).toBe(404);
  });

  test("raising, lowering below what is spent, removing the lifetime cap, extending expiry", async () => {
    const key = await kb().issueKey(seedKeyBody({ daily_usd_cap: 20, total_usd_cap: 30, expires_in: "1h" }));
    expect((await pay(kb().url, key.vault_key)).status).toBe(200);
    expect((await pay(kb().url, key.vault_key)).status).toBe(200);
    expect((await pay(kb().url, key.vault_key)).status).toBe(429); // $20 daily cap
    const raised = await kb().api("PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: 100 });
    expect(raised.json).toMatchObject({ daily_usd_cap: 100, total_usd_cap: 30, spent_today_usd: 20, remaining_today_usd: 10 });
    expect((await pay(kb().url, key.vault_key)).status).toBe(200);
    expect((await pay(kb().url, key.vault_key)).status).toBe(429); // now the $30 lifetime cap
    const lowered = await kb().api("PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: 5, total_usd_cap: null });
    expect(lowered.status).toBe(200); // below the $30 already spent: allowed, and nothing more gets through
    expect(lowered.json).toMatchObject({ daily_usd_cap: 5, total_usd_cap: null, spent_today_usd: 30, remaining_today_usd: 0 });
    expect((await pay(kb().url, key.vault_key)).status).toBe(429);
    const before = Date.now();
    const extended = await kb().api("PATCH", `/vault/keys/${key.key_id}`, { expires_in: "2d" });
    expect(Date.parse(extended.json.expires_at)).toBeGreaterThanOrEqual(before + 2 * 86_400_000 - 1000);
    expect(await ledgerOf(kb(), key.key_id)).toMatchObject({ spent: 30_000_000, reserved: 0 });
  });

  // A fan-out of $10 calls with a PATCH in the middle of it: whatever the interleaving, once the
  // PATCH has committed every admission checks the new cap, and settled + reserved never passes it.
  const fanOuts: [string, number, number, number][] = [
    // [name, daily cap at issue, cap set by the PATCH, exact number of $10 calls that get through in all]
    ["raised during the fan-out", 100, 200, 20],
    ["lowered during the fan-out", 200, 50, -1],
  ];
  for (const [name, from, to, total] of fanOuts) {
    test(`cap ${name}`, async () => {
      const key = await kb().issueKey(seedKeyBody({ daily_usd_cap: from }));
      const wave = () => Array.from({ length: 30 }, () => pay(kb().url, key.vault_key));
      const first = wave();
      const patch = kb().api("PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: to });
      const firstWave = [...first, ...wave()];
      const [patched, ...results] = await Promise.all([patch, ...firstWave]);
      expect(patched.status).toBe(200);
      const okFirst = results.filter((r) => r.status === 200).length;
      const mid = await ledgerOf(kb(), key.key_id);
      expect(mid.reserved).toBe(0);
      expect(mid.spent).toBe(okFirst * 10_000_000);
      // Every call after the PATCH committed: exactly what the new cap leaves.
      const second = await Promise.all(wave());
      const okSecond = second.filter((r) => r.status === 200).length;
      expect(okSecond).toBe(Math.max(0, to / 10 - okFirst));
      const end = await ledgerOf(kb(), key.key_id);
      expect(end.spent).toBe((okFirst + okSecond) * 10_000_000);
      expect(end.spent).toBeLessThanOrEqual(Math.max(from, to) * 1_000_000);
      if (total > 0) expect(okFirst + okSecond).toBe(total);
      else expect(okFirst).toBeLessThanOrEqual(from / 10); // lowered: never more than the old cap, then nothing once the new one is below spend
      for (const r of second.filter((r) => r.status !== 200)) {
        expect(r.status).toBe(429);
        expect(r.headers.get("x-keybrake-cap-hit")).toBe("true");
      }
    }, 30_000);
  }
});

describe("across processes on one data dir", () => {
  test("a PATCH and a token revoke made on one process are seen by the next request on another", async () => {
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(stack.fake) };
    const a = await spawnKeybrake(env);
    const b = await spawnKeybrake(env);
    try {
      const key = (await apiCall(a.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 5 }))).json;
      expect((await pay(b.url, key.vault_key)).status).toBe(429);
      expect((await apiCall(a.url, "PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: 10 })).status).toBe(200);
      expect((await pay(b.url, key.vault_key)).status).toBe(200);
      expect((await apiCall(b.url, "GET", `/vault/keys/${key.key_id}`)).json.spent_today_usd).toBe(10);

      // A fan-out over both processes with a PATCH on one of them in the middle: after it commits,
      // both processes admit exactly what the new cap leaves, never more.
      const fan = (await apiCall(a.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 100 }))).json;
      const wave = () => Array.from({ length: 30 }, (_, i) => pay(i % 2 ? a.url : b.url, fan.vault_key));
      const [patched, ...first] = await Promise.all([apiCall(b.url, "PATCH", `/vault/keys/${fan.key_id}`, { daily_usd_cap: 250 }), ...wave(), ...wave()]);
      expect(patched.status).toBe(200);
      const okFirst = first.filter((r) => r.status === 200).length;
      const okSecond = (await Promise.all(wave())).filter((r) => r.status === 200).length;
      expect(okFirst + okSecond).toBe(25);
      // a includes what a answered; b's last settlements commit just after b's answers (bounded wait).
      const view = await readSettled(() => apiCall(a.url, "GET", `/vault/keys/${fan.key_id}`).then((r) => r.json), (k) => k.reserved_usd === 0);
      expect(view).toMatchObject({ spent_today_usd: 250, reserved_usd: 0, remaining_today_usd: 0 });

      const minted = (await apiCall(a.url, "POST", "/tokens", { name: "worker", role: "viewer" })).json;
      expect((await apiCall(b.url, "GET", "/vault/keys", undefined, minted.token)).status).toBe(200);
      expect((await apiCall(a.url, "DELETE", `/tokens/${minted.token_id}`)).status).toBe(200);
      const after = await apiCall(b.url, "GET", "/vault/keys", undefined, minted.token);
      expect(after.status).toBe(401);
      expect(after.json.error.code).toBe("unauthorized");
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 30_000);
});

describe("token revocation", () => {
  const loginForm = (token: string) =>
    fetch(kb().url + "/admin/login", {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token }).toString(),
    });
  const page = (cookie: string) => fetch(kb().url + "/admin/keys", { redirect: "manual", headers: { cookie } });

  test("the next request with a revoked token is 401, a second revoke returns the same revocation, unknown is 404", async () => {
    const t = await mintToken({ name: "short-lived", role: "admin" });
    expect((await kb().api("GET", "/vault/keys", undefined, t.token)).status).toBe(200);
    const revoked = await kb().api("DELETE", `/tokens/${t.token_id}`);
    expect(revoked.status).toBe(200);
    expect(revoked.json).toMatchObject({ token_id: t.token_id, status: "revoked" });
    expect((await kb().api("GET", "/vault/keys", undefined, t.token)).status).toBe(401);
    expect((await kb().api("DELETE", `/tokens/${t.token_id}`)).json.revoked_at).toBe(revoked.json.revoked_at);
    expect((await kb().api("DELETE", "/tokens/tok_nope")).status).toBe(404);
    expect((await kb().api("DELETE", "/tokens/bootstrap")).json.error.message).toContain("KEYBRAKE_ADMIN_TOKEN");
  });

  test("revoking a token ends the admin sessions opened with it, and only those", async () => {
    const t = await mintToken({ name: "ops-laptop", role: "admin" });
    const cookieOf = async (token: string) => {
      const res = await loginForm(token);
      expect(res.status).toBe(303);
      return res.headers.get("set-cookie")!.split(";")[0]!;
    };
    const mine = await cookieOf(t.token);
    const other = await cookieOf(ADMIN_TOKEN);
    expect((await page(mine)).status).toBe(200);
    await kb().api("DELETE", `/tokens/${t.token_id}`);
    const after = await page(mine);
    expect(after.status).toBe(303);
    expect(after.headers.get("location")).toStartWith("/admin");
    expect((await page(other)).status).toBe(200);
    const ended = (await dbRow<{ n: number }>(kb().services, "SELECT count(*) AS n FROM admin_sessions WHERE token_id = ? AND ended_at IS NOT NULL", t.token_id))!;
    expect(ended.n).toBe(1);
  });

  test("changing KEYBRAKE_ADMIN_TOKEN ends the sessions opened with the old one", async () => {
    const dataDir = tempDir();
    const first = await startKeybrake({ KEYBRAKE_LOG: "silent" }, { dataDir });
    const res = await fetch(first.url + "/admin/login", {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token: ADMIN_TOKEN }).toString(),
    });
    const cookie = res.headers.get("set-cookie")!.split(";")[0]!;
    const stored = JSON.stringify(await dbRows(first.services, "SELECT * FROM admin_sessions"));
    expect(stored).not.toContain(ADMIN_TOKEN);
    await first.stop();
    for (const [token, status] of [[ADMIN_TOKEN, 200], ["kbt_rotated_bootstrap_token_0123456789", 303]] as const) {
      const again = await startKeybrake({ KEYBRAKE_LOG: "silent", KEYBRAKE_ADMIN_TOKEN: token }, { dataDir });
      expect((await fetch(again.url + "/admin/keys", { redirect: "manual", headers: { cookie } })).status).toBe(status);
      await again.stop();
    }
  });

  test("the Tokens and Edit-caps pages need a session, and every change a CSRF token", async () => {
    const key = await kb().issueKey(seedKeyBody({ daily_usd_cap: 7 }));
    const victim = await mintToken({ name: "csrf-victim", role: "viewer" });
    const routes: [string, string, string?][] = [
      ["GET", "/admin/tokens"],
      ["POST", "/admin/tokens", "name=evil&role=admin"],
      ["DELETE", `/admin/tokens/${victim.token_id}`],
      ["GET", `/admin/keys/${key.key_id}/edit`],
      ["POST", `/admin/keys/${key.key_id}/edit`, "daily_usd_cap=99999"],
    ];
    const res = await loginForm(ADMIN_TOKEN);
    const cookie = res.headers.get("set-cookie")!.split(";")[0]!;
    const tokensBefore = await countTokens();
    for (const [method, path, form] of routes) {
      const init = (headers: Record<string, string>) => ({
        method,
        redirect: "manual" as const,
        headers: { ...(form ? { "content-type": "application/x-www-form-urlencoded" } : {}), ...headers },
        body: form,
      });
      const anonymous = await fetch(kb().url + path, init({}));
      expect([path, anonymous.status]).toEqual([path, 303]);
      const htmx = await fetch(kb().url + path, init({ "hx-request": "true" }));
      expect([path, htmx.status]).toEqual([path, 401]);
      if (method !== "GET") {
        const forged = await fetch(kb().url + path, init({ cookie }));
        expect([path, forged.status]).toEqual([path, 403]);
      } else {
        const ok = await fetch(kb().url + path, init({ cookie }));
        expect([path, ok.status]).toEqual([path, 200]);
        expect(ok.headers.get("content-security-policy")).toContain("script-src 'self'");
        expect(ok.headers.get("cache-control")).toBe("no-store");
      }
    }
    expect(await countTokens()).toBe(tokensBefore);
    expect((await kb().api("GET", `/vault/keys/${key.key_id}`)).json.daily_usd_cap).toBe(7);
    expect((await kb().api("GET", "/tokens")).json.data.find((t: any) => t.token_id === victim.token_id).status).toBe("active");
  });

  test("only admin-role tokens can sign in to the admin pages", async () => {
    for (const role of ["issuer", "viewer"] as const) {
      const t = await mintToken({ name: `${role}-login`, role, ...(role === "issuer" ? { policy: { max_daily_usd_cap: 1 } } : {}) });
      const res = await loginForm(t.token);
      expect(res.status).toBe(403);
      expect(res.headers.get("set-cookie")).toBeNull();
      expect(await res.text()).toContain(`valid ${role} token, but only admin-role tokens can sign in`);
    }
  });
});

describe("the event trail", () => {
  test("each key and token action is an event with its actor and target; GET /events filters and pages", async () => {
    const since = new Date().toISOString();
    const admin = await mintToken({ name: "trail-admin", role: "admin" });
    const as = admin.token;
    const key = (await kb().api("POST", "/vault/keys", seedKeyBody({ agent_run_label: "trail/run" }), as)).json;
    await kb().api("PATCH", `/vault/keys/${key.key_id}`, { daily_usd_cap: 600 }, as);
    await kb().api("DELETE", `/vault/keys/${key.key_id}`, undefined, as);
    await kb().api("DELETE", `/vault/keys/${key.key_id}`, undefined, as); // idempotent: no second event
    const runKey = (await kb().api("POST", "/vault/keys", seedKeyBody({ agent_run_label: "trail/run-2" }), as)).json;
    await kb().api("POST", "/vault/keys/revoke", { agent_run_label: "trail/run-2" }, as);
    const viewer = await mintToken({ name: "trail-viewer", role: "viewer" }, as);
    await kb().api("DELETE", `/tokens/${viewer.token_id}`, undefined, as);

    const r = await kb().api("GET", `/events?since=${encodeURIComponent(since)}`);
    expect(r.status).toBe(200);
    const mine = r.json.data.filter((e: any) => e.actor?.token_id === admin.token_id).reverse();
    expect(mine.map((e: any) => [e.type, e.target])).toEqual([
      ["key.issued", key.key_id],
      ["key.updated", key.key_id],
      ["key.revoked", key.key_id],
      ["key.issued", runKey.key_id],
      ["run.revoked", "trail/run-2"],
      ["token.created", viewer.token_id],
      ["token.revoked", viewer.token_id],
    ]);
    expect(mine.every((e: any) => e.actor.name === "trail-admin")).toBe(true);
    expect(mine[1].data.changes.daily_usd_cap).toEqual({ from: 500, to: 600 });
    expect(mine[4].data).toMatchObject({ agent_run_label: "trail/run-2", key_ids: [runKey.key_id], revoked: 1 });
    expect(r.json.data.find((e: any) => e.type === "token.created" && e.target === admin.token_id).actor).toEqual({ token_id: "bootstrap", name: "KEYBRAKE_ADMIN_TOKEN" });
    expect(JSON.stringify(r.json)).not.toContain(as); // the token itself is never in the trail

    const typed = await kb().api("GET", `/events?type=key.updated&since=${encodeURIComponent(since)}`);
    expect(typed.json.data.map((e: any) => e.target)).toEqual([key.key_id]);
    const p1 = await kb().api("GET", `/events?limit=2&since=${encodeURIComponent(since)}`);
    const p2 = await kb().api("GET", `/events?limit=2&since=${encodeURIComponent(since)}&cursor=${p1.json.next_cursor}`);
    expect(p1.json.data).toHaveLength(2);
    expect([...p1.json.data, ...p2.json.data].map((e: any) => e.id)).toEqual(r.json.data.slice(0, 4).map((e: any) => e.id));
    expect((await kb().api("GET", `/events?until=${encodeURIComponent(since)}&type=token.created`)).json.data.every((e: any) => e.created_at < since)).toBe(true);

    for (const [q, field] of [
      ["type=key.exploded", "type"],
      ["since=yesterday", "since"],
      ["limit=0", "limit"],
      ["colour=red", "(body)"],
    ]) {
      const bad = await kb().api("GET", `/events?${q}`);
      expect(bad.status).toBe(400);
      expect(bad.json.error.details.map((d: any) => d.field)).toContain(field);
    }
  });
});

describe("migration 0007", () => {
  test("tokens minted before roles existed become admins; their keys and sessions are kept or ended safely", () => {
    const dir = tempDir();
    const raw = new Database(join(dir, "keybrake.db"), { create: true, strict: true });
    raw.exec("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)");
    for (const m of MIGRATIONS.filter((m) => m.name < "0005")) {
      raw.exec(m.sql);
      raw.query("INSERT INTO _migrations VALUES (?, ?)").run(m.name, 1);
    }
    raw.query("INSERT INTO management_tokens (id, name, token_hash, created_at) VALUES ('tok_old', 'old', 'h', 1)").run();
    raw.query("INSERT INTO admin_sessions (id_hash, csrf_token, created_at, expires_at) VALUES ('s', 'c', 1, ?)").run(Date.now() + 3_600_000);
    raw.close();
    const db = openDatabase(dir);
    expect(db.sqlite.query("SELECT role, policy FROM management_tokens WHERE id = 'tok_old'").get()).toEqual({ role: "admin", policy: null });
    expect((db.sqlite.query("SELECT ended_at FROM admin_sessions").get() as any).ended_at).toBeNumber();
    expect(() => db.sqlite.query("INSERT INTO management_tokens (id, name, token_hash, created_at, role) VALUES ('t2', 'x', 'h2', 1, 'root')").run()).toThrow();
    db.sqlite.close();
    expect(readFileSync(join(import.meta.dir, "../migrations/0007_token_roles.sql"), "utf8")).toContain("DEFAULT 'admin'");
  });
});

describe("keybrake token create | list | revoke", () => {
  const cli = async (dataDir: string, ...args: string[]) => {
    const r = Bun.spawnSync([process.execPath, "src/main.ts", "token", ...args], {
      cwd: join(import.meta.dir, ".."),
      // On the PostgreSQL pass the CLI works on the database the server of this data dir uses.
      env: { PATH: process.env.PATH ?? "", KEYBRAKE_DATA_DIR: dataDir, ...(await testBackendEnv(dataDir)) },
    });
    return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
  };

  test("an issuer with a policy is minted, listed (never the token) and revoked; bad input exits 2 naming the field", async () => {
    const dir = tempDir();
    const created = await cli(dir, "create", "--name", "argo", "--role", "issuer", "--policy", '{"max_daily_usd_cap": 50, "label_prefix": "argo/"}');
    expect(created.code).toBe(0);
    const token = created.out.trim();
    expect(token).toMatch(/^kbt_/);

    const listed = await cli(dir, "list");
    expect(listed.out).not.toContain(token);
    const [id, role, status, , name, policy] = listed.out.trim().split("\t");
    expect([role, status, name, JSON.parse(policy!)]).toEqual(["issuer", "active", "argo", { max_daily_usd_cap: 50, label_prefix: "argo/" }]);

    // The token works against a server on the same data dir, inside its policy only.
    const server = await startKeybrake({ KEYBRAKE_LOG: "silent" }, { dataDir: dir });
    try {
      expect((await apiCall(server.url, "POST", "/vault/keys", seedKeyBody({ agent_run_label: "argo/wf-1", daily_usd_cap: 50 }), token)).status).toBe(201);
      expect((await apiCall(server.url, "POST", "/vault/keys", seedKeyBody({ agent_run_label: "argo/wf-1", daily_usd_cap: 51 }), token)).status).toBe(403);
      const revoked = await cli(dir, "revoke", id!);
      expect(revoked.code).toBe(0);
      expect(revoked.out).toContain(`revoked ${id}`);
      expect((await apiCall(server.url, "GET", "/vault/keys", undefined, token)).status).toBe(401); // seen by the running server at once
      const trail = (await server.api("GET", `/events?type=token.revoked`)).json.data[0];
      expect(trail).toMatchObject({ target: id, actor: { token_id: "cli" } });
    } finally {
      await server.stop();
    }

    for (const [args, needle] of [
      [["create", "--name", "x", "--role", "issuer"], "policy"],
      [["create", "--name", "x", "--role", "issuer", "--policy", "{nope"], "--policy is not valid JSON"],
      [["create", "--name", "x", "--role", "issuer", "--policy", '{"max_daily_usd_cap": -1}'], "policy.max_daily_usd_cap"],
      [["create", "--name", "x", "--role", "root"], "role"],
      [["create", "--name", "x", "--colour", "red"], 'unknown option "--colour"'],
      [["revoke", "tok_nope"], "No management token tok_nope"],
      [["rotate"], 'unknown token command "rotate"'],
    ] as const) {
      const r = await cli(dir, ...args);
      expect([args.join(" "), r.code]).toEqual([args.join(" "), 2]);
      expect(r.err).toContain(needle);
    }
    expect((await cli(dir, "list")).out.trim().split("\n")).toHaveLength(1); // nothing was created by the refusals
  }, 30_000);
});
