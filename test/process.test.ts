import { describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { readdirSync, statSync, existsSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../src/config.ts";
import { migrate } from "../src/db/connection.ts";
import { MIGRATIONS } from "../src/db/migrations.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, spawnKeybrake, tempDir, TEST_BACKEND, testBackendEnv } from "./helpers.ts";

describe("embedded migrations", () => {
  test("every file in migrations/ is embedded, in order", () => {
    const onDisk = readdirSync(join(import.meta.dir, "..", "migrations")).filter((f) => f.endsWith(".sql")).sort();
    expect(MIGRATIONS.map((m) => m.name)).toEqual(onDisk);
  });

  test("migrating twice changes nothing", () => {
    const db = new Database(join(tempDir(), "k.db"));
    expect(migrate(db)).toEqual(MIGRATIONS.map((m) => m.name));
    const schema = () => db.query("SELECT name, sql FROM sqlite_master ORDER BY name").all();
    const before = schema();
    expect(migrate(db)).toEqual([]);
    expect(schema()).toEqual(before);
  });

  test("0009 moves the stored answers into an ordinary table: every record as it was, still one per (key, Idempotency-Key)", () => {
    const db = new Database(join(tempDir(), "k.db"));
    // A data dir as the previous release left it: migrated up to 0008, with answers stored.
    const upTo = MIGRATIONS.findIndex((m) => m.name.startsWith("0009"));
    migrateOnly(db, MIGRATIONS.slice(0, upTo));
    const put = db.prepare(
      `INSERT INTO idempotency_records (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, status, headers, body, updated_at, expires_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    put.run("key_a", "stripe-node-retry-1", "h1", "completed", 7, 29_000_000, "2026-12-02", 200, '[["request-id","req_1"]]', new Uint8Array([123, 0, 255]), 1, 2);
    put.run("key_a", "stripe-node-retry-2", "h2", "in_flight", 8, 5, "2026-12-02", null, null, null, 3, 4);
    put.run("key_b", "stripe-node-retry-1", "h3", "unknown", 9, 0, "2026-12-01", null, null, null, 5, 6);
    const rows = () => db.query("SELECT * FROM idempotency_records ORDER BY key_id, idem_key").all();
    const before = rows();
    expect(migrate(db)).toEqual(["0009_idempotency_rowid.sql"]);
    expect(rows()).toEqual(before);
    const table = db.query("SELECT sql FROM sqlite_master WHERE name = 'idempotency_records'").get() as { sql: string };
    expect(table.sql).not.toContain("WITHOUT ROWID");
    expect(() => put.run("key_a", "stripe-node-retry-1", "h9", "in_flight", 10, 1, "2026-12-02", null, null, null, 7, 8)).toThrow(/UNIQUE/);
    const indexes = db.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'idempotency_records' AND sql IS NOT NULL ORDER BY name").all();
    expect(indexes).toEqual([{ name: "idempotency_audit" }, { name: "idempotency_expiry" }]);
  });
});

/** Applies just these migrations, as an older release would have (recorded, so migrate() skips them). */
function migrateOnly(db: Database, migrations: readonly { name: string; sql: string }[]): void {
  db.exec("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)");
  for (const m of migrations) {
    db.exec(m.sql);
    db.query("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)").run(m.name, 0);
  }
}

describe("configuration", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ KEYBRAKE_PORT: "eighty" }, /^KEYBRAKE_PORT/],
    [{ KEYBRAKE_PORT: "70000" }, /^KEYBRAKE_PORT/],
    [{ KEYBRAKE_UPSTREAM_TIMEOUT: "soon" }, /^KEYBRAKE_UPSTREAM_TIMEOUT must be a positive duration/],
    [{ KEYBRAKE_MAX_KEY_TTL: "0s" }, /^KEYBRAKE_MAX_KEY_TTL/],
    [{ KEYBRAKE_STRIPE_BASE_URL: "ftp://x" }, /^KEYBRAKE_STRIPE_BASE_URL must be an http\(s\) URL/],
    [{ KEYBRAKE_MASTER_KEY: "short" }, /^KEYBRAKE_MASTER_KEY must be at least 32 characters/],
    [{ KEYBRAKE_TWILIO_ACCOUNT_SID: "AC123" }, /KEYBRAKE_TWILIO_AUTH_TOKEN must be set together/],
  ];
  for (const [env, message] of cases) {
    test(`refuses ${JSON.stringify(env)}`, () => {
      expect(() => loadConfig(env)).toThrow(ConfigError);
      expect(() => loadConfig(env)).toThrow(message);
    });
  }
  test("defaults follow the spec", () => {
    const c = loadConfig({});
    expect([c.port, c.host, c.dataDir, c.upstreamTimeoutMs, c.maxKeyTtlMs]).toEqual([8080, "0.0.0.0", "./keybrake-data", 60_000, 30 * 86_400_000]);
    expect(c.baseUrls.stripe).toBe("https://api.stripe.com");
  });

  test("a bad value stops start-up with one line naming the variable", async () => {
    const proc = Bun.spawn([process.execPath, "src/main.ts", "serve"], {
      cwd: join(import.meta.dir, ".."),
      env: { PATH: process.env.PATH ?? "", KEYBRAKE_DATA_DIR: tempDir(), KEYBRAKE_UPSTREAM_TIMEOUT: "-1s" },
      stderr: "pipe",
    });
    expect(await proc.exited).toBe(2);
    const err = await new Response(proc.stderr).text();
    expect(err.trim().split("\n")).toHaveLength(1);
    expect(err).toContain("KEYBRAKE_UPSTREAM_TIMEOUT");
  });
});

describe("the process", () => {
  test("first start prints a token once; a key survives a restart; the CLI mints more tokens", async () => {
    const dataDir = tempDir();
    const env = { KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_STRIPE_SECRET_KEY: "sk_test_env_secret_9876" };

    const first = await spawnKeybrake(env);
    const printed = () => /\n\s+(kbt_[A-Za-z0-9_-]+)\n/.exec(first.output())?.[1];
    for (let i = 0; i < 200 && !printed(); i++) await Bun.sleep(10); // written before the first request is served; the pipe may lag
    const token = printed();
    expect(token).toBeDefined();
    const issued = await apiCall(first.url, "POST", "/vault/keys", seedKeyBody(), token!);
    expect(issued.status).toBe(201);
    await first.stop();
    expect(first.output()).not.toContain("sk_test_env_secret_9876");

    // the generated master key file is private (on PostgreSQL the key is given, and no file is written)
    if (TEST_BACKEND === "sqlite") expect(statSync(join(dataDir, "master.key")).mode & 0o777).toBe(0o600);
    else expect(existsSync(join(dataDir, "master.key"))).toBe(false);

    const second = await spawnKeybrake(env);
    const listed = await apiCall(second.url, "GET", "/vault/keys", undefined, token!);
    expect(listed.json.data.map((k: any) => k.key_id)).toContain(issued.json.key_id);
    const vendors = await apiCall(second.url, "GET", "/vendors", undefined, token!);
    expect(vendors.json.data[0].fields.secret_key.last4).toBe("9876");
    expect(await second.stop()).toBe(0);
    expect(second.output()).toContain("listening on"); // all its output is in (stop waits for the pipes)…
    expect(second.output()).not.toContain("kbt_"); // …and the token was never printed again

    const cli = Bun.spawn([process.execPath, "src/main.ts", "token", "create", "--name", "ci"], {
      cwd: join(import.meta.dir, ".."),
      env: { PATH: process.env.PATH ?? "", KEYBRAKE_DATA_DIR: dataDir, ...(await testBackendEnv(dataDir)) },
      stdout: "pipe",
    });
    expect(await cli.exited).toBe(0);
    const minted = (await new Response(cli.stdout).text()).trim();
    expect(minted).toMatch(/^kbt_/);
    const third = await spawnKeybrake(env);
    expect((await apiCall(third.url, "GET", "/vault/keys", undefined, minted)).status).toBe(200);
    await third.stop();
  }, 30_000);

  test("version and --help", async () => {
    const run = async (...args: string[]) => {
      const p = Bun.spawn([process.execPath, "src/main.ts", ...args], { cwd: join(import.meta.dir, ".."), stdout: "pipe" });
      await p.exited;
      return new Response(p.stdout).text();
    };
    expect((await run("version")).trim()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(await run("--help")).toContain("keybrake token create --name NAME");
  });

  test("healthcheck (the container's check, no curl in the image): 0 while the server is healthy, 1 once it is gone", async () => {
    const dataDir = tempDir();
    const server = await spawnKeybrake({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN });
    const check = () =>
      Bun.spawnSync([process.execPath, "src/main.ts", "healthcheck"], {
        cwd: join(import.meta.dir, ".."),
        env: { PATH: process.env.PATH ?? "", KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: String(server.port) },
      });
    const up = check();
    expect(up.exitCode).toBe(0);
    expect(JSON.parse(up.stdout.toString())).toMatchObject({ status: "ok", ledger: { reachable: true } });
    await server.stop();
    const down = check();
    expect(down.exitCode).toBe(1);
    expect(down.stderr.toString()).toContain(`127.0.0.1:${server.port}/healthz`);
  }, 30_000);
});
