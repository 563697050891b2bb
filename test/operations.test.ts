/**
 * Operations in one process (issue 11): flags and variables, environment-managed secrets across
 * restarts, the draining signal, the operator log's lines. (Audit retention: test/store-audit.test.ts.)
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ConfigError, loadConfig, parseFlags } from "../src/config.ts";
import { openDatabase } from "../src/db/connection.ts";
import { EventLog } from "../src/domain/events.ts";
import { MasterKeyMismatch } from "../src/domain/secrets.ts";
import { createLogger } from "../src/log.ts";
import { SqliteVendorSecretStore } from "../src/store/sqlite/secrets.ts";
import { startFakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, seedKeyBody, startKeybrake, tempDir, sqliteOf } from "./helpers.ts";
import { proxied } from "./proxy-setup.ts";

describe("flags and variables", () => {
  test("flags mirror the variables and win over them", () => {
    const flags = parseFlags(["--port", "9090", "--data-dir=/var/lib/keybrake", "--audit-retention", "forever", "--shutdown-grace", "5s"]);
    expect(flags).toEqual({ KEYBRAKE_PORT: "9090", KEYBRAKE_DATA_DIR: "/var/lib/keybrake", KEYBRAKE_AUDIT_RETENTION: "forever", KEYBRAKE_SHUTDOWN_GRACE: "5s" });
    const c = loadConfig({ KEYBRAKE_PORT: "8081", KEYBRAKE_DATA_DIR: "/tmp/x" }, flags);
    expect([c.port, c.dataDir, c.auditRetentionMs, c.shutdownGraceMs]).toEqual([9090, "/var/lib/keybrake", null, 5000]);
  });

  test("defaults: retention 400d, shutdown grace 30s", () => {
    const c = loadConfig({});
    expect([c.auditRetentionMs, c.shutdownGraceMs]).toEqual([400 * 86_400_000, 30_000]);
  });

  const refused: [string, () => unknown, RegExp][] = [
    ["an empty port", () => loadConfig({ KEYBRAKE_PORT: "" }), /^KEYBRAKE_PORT is set but empty/],
    ["a blank secret", () => loadConfig({ KEYBRAKE_STRIPE_SECRET_KEY: "  " }), /^KEYBRAKE_STRIPE_SECRET_KEY is set but empty/],
    ["a port with a sign", () => loadConfig({ KEYBRAKE_PORT: "+80" }), /^KEYBRAKE_PORT must be a port number/],
    ["a fractional port", () => loadConfig({ KEYBRAKE_PORT: "80.5" }), /^KEYBRAKE_PORT must be a port number/],
    ["a port flag out of range", () => loadConfig({}, { KEYBRAKE_PORT: "65536" }), /^KEYBRAKE_PORT must be a port number.*\(from --port\)$/],
    ["a retention under an hour", () => loadConfig({ KEYBRAKE_AUDIT_RETENTION: "30m" }), /^KEYBRAKE_AUDIT_RETENTION must be a duration of at least 1h/],
    ["a malformed grace", () => loadConfig({ KEYBRAKE_SHUTDOWN_GRACE: "soon" }), /^KEYBRAKE_SHUTDOWN_GRACE must be a positive duration/],
    ["an unknown flag", () => parseFlags(["--verbose"]), /^unknown flag "--verbose"/],
    ["a flag without a value", () => parseFlags(["--port"]), /^--port needs a value/],
    ["a flag followed by a flag", () => parseFlags(["--port", "--host", "x"]), /^--port needs a value/],
    ["a secret as a flag", () => parseFlags(["--stripe-secret-key", "sk_x"]), /^unknown flag "--stripe-secret-key"/],
  ];
  for (const [name, run, message] of refused) {
    test(`refuses ${name}`, () => {
      expect(run).toThrow(ConfigError);
      expect(run).toThrow(message);
    });
  }
});

describe("environment-managed vendor secrets", () => {
  test("the API and the admin pages refuse changes (409 managed_by_env); a restart keeps what the environment says; removing the variable leaves the last secret, changeable again", async () => {
    const fake = await startFakeVendor();
    const dataDir = tempDir();
    const urls = { KEYBRAKE_STRIPE_BASE_URL: fake.url };
    const envSecret = fake.credentials.stripe;

    let kb = await startKeybrake({ ...urls, KEYBRAKE_STRIPE_SECRET_KEY: envSecret }, { dataDir });
    const rotate = await kb.api("PUT", "/vendors/stripe", { secret_key: "sk_test_rotated_away_1111" });
    expect(rotate.status).toBe(409);
    expect(rotate.json.error.code).toBe("managed_by_env");
    expect(rotate.json.error.message).toContain("KEYBRAKE_STRIPE_SECRET_KEY");
    const status = (await kb.api("GET", "/vendors")).json.data.find((v: any) => v.vendor === "stripe");
    expect(status).toMatchObject({ configured: true, managed_by_env: true, fields: { secret_key: { last4: envSecret.slice(-4) } } });
    // The admin page shows it as managed and offers no form; a forged POST is refused too.
    const login = await fetch(kb.url + "/admin/login", { method: "POST", redirect: "manual", headers: { "content-type": "application/x-www-form-urlencoded" }, body: `token=${ADMIN_TOKEN}` });
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    const page = await (await fetch(kb.url + "/admin/vendors", { headers: { cookie } })).text();
    const stripeCard = page.slice(page.indexOf('id="vendor-stripe"'), page.indexOf('id="vendor-twilio"'));
    expect(stripeCard).toContain("Managed by the environment");
    expect(stripeCard).not.toContain('action="/admin/vendors/stripe"');
    const csrf = /name="_csrf" value="([^"]+)"/.exec(page)![1]!;
    const forged = await fetch(kb.url + "/admin/vendors/stripe", {
      method: "POST",
      headers: { cookie, "content-type": "application/x-www-form-urlencoded", "x-csrf-token": csrf, "hx-request": "true" },
      body: new URLSearchParams({ _csrf: csrf, secret_key: "sk_test_rotated_away_2222" }).toString(),
    });
    expect(forged.status).toBe(409);
    await kb.stop();

    // Restart with the variable still set: the environment's secret, and no rotation came back.
    kb = await startKeybrake({ ...urls, KEYBRAKE_STRIPE_SECRET_KEY: envSecret }, { dataDir });
    const key = await kb.issueKey(seedKeyBody());
    expect((await proxied(kb.url, key.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" })).status).toBe(200);
    expect(fake.calls.at(-1)!.headers.authorization).toBe(`Bearer ${envSecret}`);
    await kb.stop();

    // Variable removed: the last secret in use remains, no longer managed, and can be rotated; a restart keeps the rotation.
    kb = await startKeybrake(urls, { dataDir });
    expect(await kb.services.secrets.status("stripe")).toMatchObject({ managed_by_env: false, fields: { secret_key: { last4: envSecret.slice(-4) } } });
    expect((await kb.api("PUT", "/vendors/stripe", { secret_key: "sk_test_rotated_by_api_3333" })).status).toBe(200);
    await kb.stop();
    kb = await startKeybrake(urls, { dataDir });
    expect(await kb.services.secrets.get("stripe")).toEqual({ secret_key: "sk_test_rotated_by_api_3333" });
    const events = sqliteOf(kb.services).query("SELECT actor_name, json_extract(data, '$.source') AS source FROM events WHERE type = 'vendor.secret_set' ORDER BY id").all();
    expect(events).toEqual([
      { actor_name: null, source: "environment" },
      { actor_name: "KEYBRAKE_ADMIN_TOKEN", source: "api" },
    ]);
    await kb.stop();
    await fake.stop();
  }, 30_000);

  test("a malformed secret in the environment stops start-up naming its variable", async () => {
    await expect(startKeybrake({ KEYBRAKE_TWILIO_ACCOUNT_SID: "XX123", KEYBRAKE_TWILIO_AUTH_TOKEN: "token_long_enough" })).rejects.toThrow(
      /^KEYBRAKE_TWILIO_ACCOUNT_SID: account_sid must be AC/,
    );
  });
});

describe("the master key check", () => {
  test("a data dir refuses another master key even before any secret is stored; secrets reset adopts the key in use", async () => {
    const dataDir = tempDir();
    const first = await startKeybrake({ KEYBRAKE_MASTER_KEY: "a".repeat(40) }, { dataDir });
    await first.stop();
    await expect(startKeybrake({ KEYBRAKE_MASTER_KEY: "b".repeat(40) }, { dataDir })).rejects.toThrow(MasterKeyMismatch);
    const db = openDatabase(dataDir);
    await new SqliteVendorSecretStore(db, new EventLog(db.sqlite, createLogger("silent"))).reset();
    db.sqlite.close();
    const again = await startKeybrake({ KEYBRAKE_MASTER_KEY: "b".repeat(40) }, { dataDir });
    await again.stop();
  });
});

describe("draining", () => {
  test("/healthz answers 503 draining once shutdown has begun", async () => {
    const kb = await startKeybrake();
    expect((await kb.api("GET", "/healthz", undefined, null)).json.status).toBe("ok");
    kb.services.lifecycle.draining = true;
    const r = await kb.api("GET", "/healthz", undefined, null);
    expect([r.status, r.json.status]).toEqual([503, "draining"]);
    await kb.stop();
  });
});

describe("the operator log", () => {
  test("info: one short line per action, a client's label quoted so it cannot forge a line; json: each entry one parseable line", () => {
    const lines: string[] = [];
    const info = createLogger("info", (l) => lines.push(l));
    info.action({ type: "run.revoked", actor: "ops (tok_1)", target: "nightly\nkey.revoked target=fake", data: { agent_run_label: "nightly\nkey.revoked target=fake", revoked: 2 } });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.split("\n")).toHaveLength(1);
    expect(lines[0]).toContain('agent_run_label="nightly\\nkey.revoked target=fake" revoked=2');
    const json = createLogger("json", (l) => lines.push(l));
    json.action({ type: "vendor.secret_set", actor: null, target: "stripe", data: { vendor: "stripe", source: "environment" } });
    json.info("line\nbreak");
    expect(lines.slice(1).map((l) => JSON.parse(l).kind)).toEqual(["action", "info"]);
  });
});
