/**
 * Operations with real processes and signals (issue 11): one owner per port, graceful SIGTERM,
 * the master key checked at start, the first token, retention right after start, the JSON log.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, spawnProcess, tempDir, storedRows, TEST_BACKEND } from "./helpers.ts";
import { proxied, vendorEnv } from "./proxy-setup.ts";

let fake: FakeVendor;
beforeAll(async () => (fake = await startFakeVendor()));
afterAll(() => fake.stop());

/** A start that must fail: its exit code and output. */
async function failedStart(env: Record<string, string>, args: string[] = ["serve"]) {
  const { proc, output, drained } = spawnProcess(env, [process.execPath, "src/main.ts", ...args]);
  const code = await proc.exited;
  await drained;
  return { code, lines: output().trim().split("\n") };
}

/** The ledger as the process left it in its database. */
async function ledgerLeft(dataDir: string) {
  const [reserved] = await storedRows<{ n: number }>(dataDir, "SELECT coalesce(sum(reserved_micros), 0) AS n FROM key_spend_days");
  const states = await storedRows<{ state: string; n: number }>(dataDir, "SELECT ledger_state AS state, count(*) AS n FROM audit_log GROUP BY ledger_state");
  return { reserved: reserved!.n, states: Object.fromEntries(states.map((s) => [s.state, s.n])) as Record<string, number> };
}

const pi = { amount: "100", currency: "usd" };

describe("one owner per port", () => {
  test("a second Keybrake on a taken port is refused with one line naming it, on the same or another data dir; the first keeps serving", async () => {
    const dataDir = tempDir();
    const first = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN });
    for (const dir of [dataDir, tempDir()]) {
      const second = await failedStart({ KEYBRAKE_DATA_DIR: dir, KEYBRAKE_PORT: String(first.port) });
      expect(second.code).toBe(2);
      expect(second.lines).toHaveLength(1);
      expect(second.lines[0]).toContain(`port ${first.port}`);
      expect(second.lines[0]).toContain("KEYBRAKE_PORT");
    }
    expect((await fetch(first.url + "/healthz")).status).toBe(200);
    expect(await first.stop()).toBe(0);
  }, 30_000);

  test("a first start that cannot listen mints no token; the next start prints it with how to mint another", async () => {
    const blocker = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("other") });
    const dataDir = tempDir();
    const failed = await failedStart({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_PORT: String(blocker.port) });
    void blocker.stop(true);
    expect(failed.code).toBe(2);
    expect(failed.lines.join("\n")).not.toContain("kbt_");
    const next = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir });
    await next.stop();
    const token = /\n\s+(kbt_[A-Za-z0-9_-]+)\n/.exec(next.output())?.[1];
    expect(token).toBeDefined();
    expect(next.output()).toContain("keybrake token create --name NAME");
  }, 30_000);

  const refused: [string, Record<string, string>, string[], RegExp][] = [
    ["an empty KEYBRAKE_PORT", { KEYBRAKE_PORT: "" }, ["serve"], /^keybrake: KEYBRAKE_PORT is set but empty/],
    ["a malformed --port", {}, ["serve", "--port", "80x"], /^keybrake: KEYBRAKE_PORT must be a port number.*\(from --port\)$/],
    ["an unknown flag", {}, ["serve", "--prot", "9090"], /^keybrake: unknown flag "--prot"/],
    ["a secret as a flag", {}, ["serve", "--master-key", "x".repeat(40)], /^keybrake: unknown flag "--master-key".*secrets only by environment/],
    ["a host that does not resolve", { KEYBRAKE_HOST: "no-such-host.invalid" }, ["serve"], /^keybrake: cannot listen on no-such-host\.invalid:0; check KEYBRAKE_HOST/],
    ["a data dir that cannot be created", { KEYBRAKE_DATA_DIR: "/dev/null/keybrake" }, ["serve"], /^keybrake: KEYBRAKE_DATA_DIR \(\/dev\/null\/keybrake\)/],
  ];
  for (const [name, env, args, line] of refused) {
    test(`refuses ${name} with one line naming it`, async () => {
      const r = await failedStart({ KEYBRAKE_DATA_DIR: tempDir(), ...env }, args);
      expect(r.code).toBe(2);
      expect(r.lines).toHaveLength(1);
      expect(r.lines[0]).toMatch(line);
    });
  }

  test("flags win over the environment; the start line names localhost and the admin URL; GET / goes to /admin", async () => {
    // KEYBRAKE_PORT=1 would fail (privileged or taken): serving proves --port won.
    const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: tempDir(), KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_PORT: "1", KEYBRAKE_HOST: "192.0.2.1" }, [
      process.execPath,
      "src/main.ts",
      "serve",
      "--port",
      "0",
      "--host=0.0.0.0",
    ]);
    const home = await fetch(`http://127.0.0.1:${kb.port}/`, { redirect: "manual" });
    expect(home.status).toBe(302);
    expect(home.headers.get("location")).toBe("/admin");
    await kb.stop();
    expect(kb.output()).toContain(`listening on http://localhost:${kb.port} — admin pages: http://localhost:${kb.port}/admin`);
  }, 30_000);
});

describe("SIGTERM", () => {
  test("during 20 slow calls in flight: healthz stops saying ok, all 20 answer 200 and settle, exit 0, nothing reserved", async () => {
    fake.reset();
    fake.setDefaultBehavior({ kind: "delay", ms: 1500 });
    const dataDir = tempDir();
    const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, ...vendorEnv(fake) });
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 100 }))).json;
    const calls = Array.from({ length: 20 }, () => proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi));
    while (fake.calls.length < 20) await Bun.sleep(10); // every call is at the vendor, i.e. reserved and in flight
    kb.proc.kill("SIGTERM");
    while (!kb.output().includes("SIGTERM: shutting down")) await Bun.sleep(10); // the signal has been handled
    // The listener is closed: a new connection is refused; one kept alive from before hears 503 draining.
    const health = await fetch(kb.url + "/healthz").then(
      (r) => r.status,
      () => "refused",
    );
    expect(health === 503 || health === "refused").toBe(true);
    const answers = await Promise.all(calls);
    fake.setDefaultBehavior({ kind: "normal" });
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(await kb.proc.exited).toBe(0);
    expect(await ledgerLeft(dataDir)).toEqual({ reserved: 0, states: { settled: 20 } });
    expect(kb.output()).toContain("every call in flight finished and settled");
  }, 30_000);

  test("a call longer than KEYBRAKE_SHUTDOWN_GRACE is cut; its reservation stays, as after a crash", async () => {
    fake.reset();
    fake.setDefaultBehavior({ kind: "delay", ms: 20_000 });
    const dataDir = tempDir();
    const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_SHUTDOWN_GRACE: "300ms", ...vendorEnv(fake) });
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 100 }))).json;
    const call = proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi).then(
      (r) => r.status,
      () => "cut",
    );
    while (fake.calls.length < 1) await Bun.sleep(10);
    kb.proc.kill("SIGTERM");
    expect(await kb.proc.exited).toBe(0);
    expect(await call).toBe("cut");
    fake.setDefaultBehavior({ kind: "normal" });
    expect(await ledgerLeft(dataDir)).toEqual({ reserved: 1_000_000, states: { reserved: 1 } });
  }, 30_000);
});

describe("the master key", () => {
  // The master key file of a data dir; on PostgreSQL the key is always given (test/store-secrets.test.ts: a replica with another key is refused).
  test.skipIf(TEST_BACKEND === "postgres")("a different or lost key stops start-up naming KEYBRAKE_MASTER_KEY; secrets reset lets it start again", async () => {
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN };
    const kb = await spawnKeybrake({ ...env, KEYBRAKE_MASTER_KEY: "k".repeat(40) });
    expect((await apiCall(kb.url, "PUT", "/vendors/resend", { api_key: "re_stored_secret_1234" })).status).toBe(200);
    await kb.stop();

    for (const masterKey of [{ KEYBRAKE_MASTER_KEY: "z".repeat(40) }, {}] as Record<string, string>[]) {
      const r = await failedStart({ ...env, ...masterKey });
      expect(r.code).toBe(2);
      expect(r.lines).toHaveLength(1);
      expect(r.lines[0]).toContain("KEYBRAKE_MASTER_KEY");
      expect(r.lines[0]).toContain("cannot decrypt the resend secret(s)");
      expect(r.lines[0]).toContain("keybrake secrets reset --confirm");
    }
    const reset = await failedStart(env, ["secrets", "reset", "--confirm"]);
    expect(reset.code).toBe(0);
    const again = await spawnKeybrake(env);
    const vendors = await apiCall(again.url, "GET", "/vendors");
    expect(vendors.json.data.find((v: any) => v.vendor === "resend").configured).toBe(false);
    await again.stop();
  }, 30_000);
});

describe("audit retention", () => {
  // Seeds old rows into the SQLite file; on PostgreSQL: test/store-audit.test.ts (retention, two replicas pruning).
  test.skipIf(TEST_BACKEND === "postgres")("rows older than KEYBRAKE_AUDIT_RETENTION are pruned right after start; newer ones stay", async () => {
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake) };
    fake.reset();
    const kb = await spawnKeybrake(env);
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody())).json;
    for (let i = 0; i < 3; i++) expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi)).status).toBe(200);
    await kb.stop();
    const db = new Database(join(dataDir, "keybrake.db"));
    db.query("UPDATE audit_log SET ts = ? WHERE id IN (SELECT id FROM audit_log ORDER BY id LIMIT 2)").run(Date.now() - 91 * 86_400_000);
    db.close();

    const restarted = await spawnKeybrake({ ...env, KEYBRAKE_AUDIT_RETENTION: "90d" });
    let rows: unknown[] = [];
    for (let i = 0; i < 200; i++) {
      rows = (await apiCall(restarted.url, "GET", "/vault/audit")).json.data;
      if (rows.length === 1) break;
      await Bun.sleep(25);
    }
    expect(rows).toHaveLength(1);
    await restarted.stop();
  }, 30_000);
});

describe("KEYBRAKE_LOG=info", () => {
  test("a short line each for the start, a rotation, a cap hit, a revocation and the shutdown; no secret", async () => {
    fake.reset();
    const { KEYBRAKE_RESEND_API_KEY: _, ...vendors } = vendorEnv(fake);
    const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: tempDir(), KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "info", ...vendors });
    expect((await apiCall(kb.url, "PUT", "/vendors/resend", { api_key: "re_rotated_secret_abcd9876" })).status).toBe(200);
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 0.5 }))).json;
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi)).status).toBe(429);
    expect((await apiCall(kb.url, "DELETE", `/vault/keys/${key.key_id}`)).status).toBe(200);
    expect(await kb.stop()).toBe(0);
    const out = kb.output();
    for (const line of [/listening on http:\/\/127\.0\.0\.1:\d+ — admin pages/, /vendor\.secret_set target=resend .*source=api/, new RegExp(`cap_hit stripe POST /v1/payment_intents key=${key.key_id}`), new RegExp(`key\\.revoked target=${key.key_id}`), /SIGTERM: shutting down/, /stopped: every call in flight finished and settled/]) {
      expect(out).toMatch(line);
    }
    for (const secret of ["re_rotated_secret_abcd9876", key.vault_key, ADMIN_TOKEN, fake.credentials.stripe]) expect(out).not.toContain(secret);
  }, 30_000);
});

describe("KEYBRAKE_LOG=json", () => {
  test("every stdout line is JSON; actions, start and shutdown are there; no secret, vault key or token in any line", async () => {
    fake.reset();
    const dataDir = tempDir();
    const { KEYBRAKE_RESEND_API_KEY: _, ...vendors } = vendorEnv(fake); // resend's secret is set through the API below
    const kb = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "json", ...vendors });
    const resendSecret = "re_rotated_secret_abcd9876";
    expect((await apiCall(kb.url, "PUT", "/vendors/resend", { api_key: resendSecret })).status).toBe(200);
    const key = (await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 1.5 }))).json;
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi)).status).toBe(200);
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", pi)).status).toBe(429);
    expect((await apiCall(kb.url, "DELETE", `/vault/keys/${key.key_id}`)).status).toBe(200);
    expect(await kb.stop()).toBe(0);

    const stdout = kb.output().split("\n").filter((l) => l.startsWith("{"));
    const lines = stdout.map((l) => JSON.parse(l));
    expect(lines.every((l) => typeof l.time === "string" && typeof l.kind === "string")).toBe(true);
    const actions = lines.filter((l) => l.kind === "action");
    expect(actions).toContainEqual(expect.objectContaining({ type: "vendor.secret_set", target: "resend", actor: "KEYBRAKE_ADMIN_TOKEN (bootstrap)" }));
    expect(actions).toContainEqual(expect.objectContaining({ type: "vendor.secret_set", target: "stripe", actor: null, data: { vendor: "stripe", source: "environment" } }));
    const calls = lines.filter((l) => l.kind === "call");
    expect(calls.map((c) => [c.key_id, c.outcome, c.status, c.cost_usd])).toEqual([
      [key.key_id, "forwarded", 200, "1.000000"],
      [key.key_id, "cap_hit", 429, "0.000000"],
    ]);
    expect(calls.every((c) => c.vendor === "stripe" && c.method === "POST" && c.path === "/v1/payment_intents" && typeof c.latency_ms === "number")).toBe(true);
    expect(actions.map((a) => a.type)).toEqual(expect.arrayContaining(["key.issued", "cap.hit", "key.revoked"]));
    const infos = lines.filter((l) => l.kind === "info").map((l) => l.msg);
    expect(infos.some((m) => m.includes("listening on"))).toBe(true);
    expect(infos.some((m) => m.startsWith("SIGTERM: shutting down"))).toBe(true);
    for (const secret of [resendSecret, key.vault_key, ADMIN_TOKEN, fake.credentials.stripe, fake.credentials.twilioToken]) {
      expect(kb.output()).not.toContain(secret);
    }
  }, 30_000);
});
