import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sha256Hex } from "../src/domain/crypto.ts";
import { TEST_BACKEND, apiCall, seedKeyBody, startKeybrake, type Running, sqliteOf, dbRow, dbRows } from "./helpers.ts";

let kb: Running;
beforeAll(async () => {
  kb = await startKeybrake();
});
afterAll(() => kb.stop());

const countKeys = async () => (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM vault_keys"))!.n;

describe("vault key lifecycle", () => {
  test("the seeds' body issues a key; the secret is shown once and stored only as a hash", async () => {
    const r = await kb.api("POST", "/vault/keys", seedKeyBody());
    expect(r.status).toBe(201);
    const k = r.json;
    expect(k.key_id).toMatch(/^key_[0-9a-z]{26}$/);
    expect(k.vault_key).toMatch(/^vk_[A-Za-z0-9_-]{43}$/);
    expect(k).toMatchObject({
      vendor: "stripe",
      daily_usd_cap: 500,
      total_usd_cap: null,
      allowed_endpoints: ["POST /v1/payment_intents"],
      agent_run_label: "airflow-billing/scheduled__2026-11-22",
      proxy_base_url: kb.url,
      status: "active",
    });
    const ttl = Date.parse(k.expires_at) - Date.parse(k.created_at);
    expect(ttl).toBe(6 * 3600 * 1000);

    const stored = (await dbRow(kb.services, "SELECT * FROM vault_keys WHERE id = ?", k.key_id))!;
    expect(stored.key_hash).toBe(sha256Hex(k.vault_key));
    expect(JSON.stringify(stored)).not.toContain(k.vault_key);

    const got = await kb.api("GET", `/vault/keys/${k.key_id}`);
    expect(got.status).toBe(200);
    expect(got.json.vault_key).toBeUndefined();
    expect(JSON.stringify(got.json)).not.toContain(k.vault_key);
    expect(got.json).toMatchObject({ key_id: k.key_id, spent_today_usd: 0, reserved_usd: 0, remaining_today_usd: 500, spent_total_usd: 0 });
  });

  test("optional fields round-trip; caps keep 6 decimals exactly", async () => {
    const k = await kb.issueKey(
      seedKeyBody({
        vendor: "resend",
        daily_usd_cap: 0.000001,
        total_usd_cap: 1234.567891,
        allowed_endpoints: ["POST /emails", "GET /emails/*", "* /domains"],
        metadata: { team: "growth", attempt: 2, dry: false },
        dedupe_window: "10m",
        require_idempotency_key: true,
        allow_unpriced: true,
      }),
    );
    expect(k.daily_usd_cap).toBe(0.000001);
    expect(k.total_usd_cap).toBe(1234.567891);
    const row = (await dbRow(kb.services, "SELECT daily_cap_micros, total_cap_micros FROM vault_keys WHERE id = ?", k.key_id))!;
    expect(row).toEqual({ daily_cap_micros: 1, total_cap_micros: 1_234_567_891 });
    expect(k.metadata).toEqual({ team: "growth", attempt: 2, dry: false });
    expect(k.dedupe_window_seconds).toBe(600);
    expect(k.require_idempotency_key).toBe(true);
    expect(k.allow_unpriced).toBe(true);
  });

  test("list filters by label, vendor and status, with a cursor", async () => {
    const label = "kestra/list-" + Date.now();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await kb.issueKey(seedKeyBody({ agent_run_label: label }))).key_id);
    await kb.issueKey(seedKeyBody({ agent_run_label: label, vendor: "twilio", allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] }));
    await kb.api("DELETE", `/vault/keys/${ids[0]}`);

    const page1 = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}&vendor=stripe&limit=2`);
    expect(page1.status).toBe(200);
    expect(page1.json.data.map((k: any) => k.key_id)).toEqual([ids[4], ids[3]]);
    const page2 = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}&vendor=stripe&limit=2&cursor=${page1.json.next_cursor}`);
    expect(page2.json.data.map((k: any) => k.key_id)).toEqual([ids[2], ids[1]]);
    const page3 = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}&vendor=stripe&limit=2&cursor=${page2.json.next_cursor}`);
    expect(page3.json.data.map((k: any) => k.key_id)).toEqual([ids[0]]);
    expect(page3.json.next_cursor).toBeNull();

    const revoked = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}&status=revoked`);
    expect(revoked.json.data.map((k: any) => k.key_id)).toEqual([ids[0]]);
    const active = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}&status=active`);
    expect(active.json.data).toHaveLength(5);
    const bad = await kb.api("GET", `/vault/keys?status=paused`);
    expect(bad.status).toBe(400);
    expect(bad.json.error.details[0].field).toBe("status");
  });

  test("a duration over the server maximum is refused in the unit it was typed in", async () => {
    for (const [typed, limit] of [["40d", "30d"], ["1000h", "720h"], ["3000000s", "2592000s"]]) {
      const r = await kb.api("POST", "/vault/keys", seedKeyBody({ expires_in: typed }));
      expect(r.status).toBe(400);
      expect(r.json.error.details).toEqual([{ field: "expires_in", message: `expires_in must be at most ${limit}` }]);
    }
  });

  test("DELETE revokes once and is idempotent; unknown ids are 404", async () => {
    const k = await kb.issueKey(seedKeyBody());
    const first = await kb.api("DELETE", `/vault/keys/${k.key_id}`);
    expect(first.status).toBe(200);
    expect(first.json.status).toBe("revoked");
    await Bun.sleep(5);
    const second = await kb.api("DELETE", `/vault/keys/${k.key_id}`);
    expect(second.json.revoked_at).toBe(first.json.revoked_at);
    const missing = await kb.api("DELETE", "/vault/keys/key_nope");
    expect(missing.status).toBe(404);
    expect(missing.json.error.code).toBe("not_found");
  });

  test("POST /vault/keys/revoke revokes every key of a run and no other", async () => {
    const label = "argo/wf-" + Date.now();
    const a = await kb.issueKey(seedKeyBody({ agent_run_label: label }));
    const b = await kb.issueKey(seedKeyBody({ agent_run_label: label }));
    const other = await kb.issueKey(seedKeyBody({ agent_run_label: label + "-other" }));
    const r = await kb.api("POST", "/vault/keys/revoke", { agent_run_label: label });
    expect(r.status).toBe(200);
    expect(r.json.revoked).toBe(2);
    for (const id of [a.key_id, b.key_id]) expect((await kb.api("GET", `/vault/keys/${id}`)).json.status).toBe("revoked");
    const again = await kb.api("POST", "/vault/keys/revoke", { agent_run_label: label });
    expect(again.json.revoked).toBe(0); // nothing newly revoked
    expect(again.json.data).toHaveLength(2);
    expect((await kb.api("GET", `/vault/keys/${other.key_id}`)).json.status).toBe("active");
  });

  test("an expired key lists as expired", async () => {
    const k = await kb.issueKey(seedKeyBody({ expires_in: "1s" }));
    await Bun.sleep(1100);
    expect((await kb.api("GET", `/vault/keys/${k.key_id}`)).json.status).toBe("expired");
  });
});

describe("bad input is refused with the field named, and creates nothing", () => {
  const cases: [string, unknown, string, number?][] = [
    ["non-JSON", "{not json", "(body)", 400],
    ["a JSON array", [1, 2], "(body)"],
    ["unknown vendor", seedKeyBody({ vendor: "paypal" }), "vendor"],
    ["negative cap", seedKeyBody({ daily_usd_cap: -1 }), "daily_usd_cap"],
    ["non-numeric cap", seedKeyBody({ daily_usd_cap: "500" }), "daily_usd_cap"],
    ["cap with 7 decimals", seedKeyBody({ daily_usd_cap: 0.0000001 }), "daily_usd_cap"],
    ["missing cap", { ...seedKeyBody(), daily_usd_cap: undefined }, "daily_usd_cap"],
    ["empty allowlist", seedKeyBody({ allowed_endpoints: [] }), "allowed_endpoints"],
    ["allowlist not a list", seedKeyBody({ allowed_endpoints: "POST /v1/charges" }), "allowed_endpoints"],
    ["allowlist entry without method", seedKeyBody({ allowed_endpoints: ["/v1/charges"] }), "allowed_endpoints.0"],
    ["allowlist bad method", seedKeyBody({ allowed_endpoints: ["FETCH /v1/charges"] }), "allowed_endpoints.0"],
    ["allowlist partial wildcard", seedKeyBody({ allowed_endpoints: ["GET /v1/cus*"] }), "allowed_endpoints.0"],
    ["allowlist dot segment", seedKeyBody({ allowed_endpoints: ["GET /v1/../admin"] }), "allowed_endpoints.0"],
    ["duration forever", seedKeyBody({ expires_in: "forever" }), "expires_in"],
    ["duration -5m", seedKeyBody({ expires_in: "-5m" }), "expires_in"],
    ["duration 0s", seedKeyBody({ expires_in: "0s" }), "expires_in"],
    ["duration 99999d", seedKeyBody({ expires_in: "99999d" }), "expires_in"],
    ["duration as number", seedKeyBody({ expires_in: 3600 }), "expires_in"],
    ["100 kB label", seedKeyBody({ agent_run_label: "x".repeat(100_000) }), "agent_run_label"],
    ["empty label", seedKeyBody({ agent_run_label: "  " }), "agent_run_label"],
    ["metadata not an object", seedKeyBody({ metadata: ["a"] }), "metadata"],
    ["nested metadata", seedKeyBody({ metadata: { a: { b: 1 } } }), "metadata.a"],
    ["unknown field", seedKeyBody({ daily_cap: 5 }), "(body)"],
    ["dedupe window too long", seedKeyBody({ dedupe_window: "2d" }), "dedupe_window"],
    ["allow_unpriced not boolean", seedKeyBody({ allow_unpriced: "yes" }), "allow_unpriced"],
  ];
  for (const [name, body, field, status = 400] of cases) {
    test(name, async () => {
      const before = await countKeys();
      const r = await kb.api("POST", "/vault/keys", body);
      expect(r.status).toBe(status);
      expect(r.json.error.code).toMatch(/^invalid_(request|json)$/);
      expect(r.json.error.message.length).toBeGreaterThan(5);
      if (r.json.error.code === "invalid_request") expect(r.json.error.details.map((d: any) => d.field)).toContain(field);
      expect(await countKeys()).toBe(before);
    });
  }

  test("a body over 1 MiB is 413 and creates nothing", async () => {
    const before = await countKeys();
    // Just over the management limit and within Bun's maxRequestBodySize (1 MiB + 1 KiB), so the API answers in its own shape.
    const r = await kb.api("POST", "/vault/keys", seedKeyBody({ metadata: { big: "x".repeat(1024 * 1024) } }));
    expect(r.status).toBe(413);
    expect(r.json.error.code).toBe("payload_too_large");
    expect(await countKeys()).toBe(before);
  });

  test("a body that is not JSON-typed is 415", async () => {
    const res = await fetch(kb.url + "/vault/keys", {
      method: "POST",
      headers: { authorization: `Bearer ${"kbt_test_admin_token_0123456789abcdef"}`, "content-type": "text/plain" },
      body: JSON.stringify(seedKeyBody()),
    });
    expect(res.status).toBe(415);
  });
});

describe("the role matrix: every management route × admin / issuer / viewer / no token / revoked token", () => {
  type Role = "admin" | "issuer" | "viewer";
  const ALL: Role[] = ["admin", "issuer", "viewer"];
  // [method, path, body, roles allowed] — SPEC §7; README "Tokens, roles and policies" has the same table.
  const routes: [string, string, unknown, Role[]][] = [
    ["POST", "/vault/keys", seedKeyBody(), ["admin", "issuer"]],
    ["GET", "/vault/keys", undefined, ALL],
    ["GET", "/vault/keys/key_x", undefined, ALL],
    ["PATCH", "/vault/keys/key_x", { daily_usd_cap: 1 }, ["admin", "issuer"]],
    ["DELETE", "/vault/keys/key_x", undefined, ["admin", "issuer"]],
    ["POST", "/vault/keys/revoke", { agent_run_label: "x" }, ["admin", "issuer"]],
    ["GET", "/vault/audit", undefined, ALL],
    ["GET", "/vault/audit?format=csv", undefined, ALL],
    ["GET", "/vault/spend", undefined, ALL],
    ["GET", "/vendors", undefined, ["admin", "viewer"]],
    ["PUT", "/vendors/stripe", { secret_key: "sk_test_123456789" }, ["admin"]],
    ["GET", "/metrics", undefined, ["admin", "viewer"]],
    ["POST", "/tokens", { name: "matrix", role: "viewer" }, ["admin"]],
    ["GET", "/tokens", undefined, ["admin"]],
    ["DELETE", "/tokens/tok_x", undefined, ["admin"]],
    ["GET", "/events", undefined, ["admin", "viewer"]],
    ["POST", "/budgets", { name: "matrix", label_prefix: "matrix-budget/", daily_usd_cap: 1 }, ["admin"]],
    ["GET", "/budgets", undefined, ["admin", "viewer"]],
    ["GET", "/budgets/bud_x", undefined, ["admin", "viewer"]],
    ["PATCH", "/budgets/bud_x", { daily_usd_cap: 2 }, ["admin"]],
    ["DELETE", "/budgets/bud_x", undefined, ["admin"]],
    ["POST", "/webhooks", { url: "http://127.0.0.1:9/matrix", events: ["cap.threshold"], thresholds: [1] }, ["admin"]],
    ["GET", "/webhooks", undefined, ["admin"]],
    ["GET", "/webhooks/whk_x", undefined, ["admin"]],
    ["DELETE", "/webhooks/whk_x", undefined, ["admin"]],
    ["GET", "/webhooks/whk_x/deliveries", undefined, ["admin"]],
  ];
  let vaultKey = "";
  const tokens = {} as Record<Role | "revoked", string>;
  const countTokens = async () => (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM management_tokens"))!.n;
  beforeAll(async () => {
    vaultKey = (await kb.issueKey(seedKeyBody())).vault_key;
    const mint = async (body: Record<string, unknown>) => (await kb.api("POST", "/tokens", body)).json;
    tokens.admin = (await mint({ name: "m-admin", role: "admin" })).token;
    tokens.issuer = (await mint({ name: "m-issuer", role: "issuer", policy: { max_daily_usd_cap: 1000 } })).token;
    tokens.viewer = (await mint({ name: "m-viewer", role: "viewer" })).token;
    const revoked = await mint({ name: "m-revoked", role: "admin" });
    await kb.api("DELETE", `/tokens/${revoked.token_id}`);
    tokens.revoked = revoked.token;
  });
  for (const [method, path, body, allowed] of routes) {
    test(`${method} ${path}`, async () => {
      const before = [await countKeys(), await countTokens()];
      for (const token of [null, "wrong-token-0123456789", vaultKey, tokens.revoked]) {
        const r = await apiCall(kb.url, method, path, body, token);
        expect(r.status).toBe(401);
        expect(r.json.error.code).toBe("unauthorized");
      }
      for (const role of ALL.filter((r) => !allowed.includes(r))) {
        const r = await apiCall(kb.url, method, path, body, tokens[role]);
        expect([role, r.status, r.json.error?.code]).toEqual([role, 403, "forbidden"]);
        expect(r.json.error.message).toContain(`this token is ${role}`);
      }
      expect([await countKeys(), await countTokens()]).toEqual(before);
      for (const role of allowed) {
        const ok = await apiCall(kb.url, method, path, body, tokens[role]);
        expect([200, 201, 404]).toContain(ok.status);
      }
      expect([200, 201, 404]).toContain((await kb.api(method, path, body)).status); // the bootstrap KEYBRAKE_ADMIN_TOKEN is an admin
    });
  }
  test("a token minted by the CLI store works, and is stored only as a hash", async () => {
    const { token } = await kb.services.tokens.createFromBody({ name: "ci" }, null);
    expect((await apiCall(kb.url, "GET", "/vault/keys", undefined, token)).status).toBe(200);
    const rows = JSON.stringify(await dbRows(kb.services, "SELECT * FROM management_tokens"));
    expect(rows).not.toContain(token);
    expect(rows).toContain(sha256Hex(token));
  });
});

describe("vendor secrets are write-only", () => {
  test("PUT stores encrypted, GET shows configured and last 4 only", async () => {
    const secret = "sk_test_secret_value_WXYZ";
    const put = await kb.api("PUT", "/vendors/stripe", { secret_key: secret });
    expect(put.status).toBe(200);
    expect(put.json).toMatchObject({ vendor: "stripe", configured: true, fields: { secret_key: { last4: "WXYZ" } } });
    const list = await kb.api("GET", "/vendors");
    expect(JSON.stringify(list.json)).not.toContain(secret);
    expect(list.json.data.find((v: any) => v.vendor === "twilio").configured).toBe(false);
    const stored = JSON.stringify(await dbRows(kb.services, "SELECT * FROM vendor_secrets"));
    expect(stored).not.toContain(secret);
    expect(await kb.services.secrets.get("stripe")).toEqual({ secret_key: secret });
  });
  test("bad secrets are refused field by field", async () => {
    const r = await kb.api("PUT", "/vendors/twilio", { account_sid: "XX123", auth_token: "tok" });
    expect(r.status).toBe(400);
    expect(r.json.error.details.map((d: any) => d.field).sort()).toEqual(["account_sid", "auth_token"]);
    expect((await kb.api("PUT", "/vendors/paypal", { api_key: "abcdefghijk" })).status).toBe(404);
  });
});

describe("operations", () => {
  test("healthz and the OpenAPI document answer without a token", async () => {
    expect((await apiCall(kb.url, "GET", "/healthz", undefined, null)).json).toMatchObject({ status: "ok", ledger: { backend: TEST_BACKEND, reachable: true } });
    const doc = await apiCall(kb.url, "GET", "/openapi.json", undefined, null);
    expect(doc.json.openapi).toBe("3.1.0");
    expect(doc.json.components.schemas.IssueKey.required).toEqual(
      expect.arrayContaining(["vendor", "daily_usd_cap", "allowed_endpoints", "expires_in", "agent_run_label"]),
    );
  });
  test("unknown routes are 404 in the envelope", async () => {
    const r = await kb.api("GET", "/nope");
    expect(r.status).toBe(404);
    expect(r.json.error.code).toBe("not_found");
  });
});
