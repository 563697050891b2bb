/** KEYBRAKE_DATABASE_URL (SPEC §1, §8): validated, never echoed, never a flag; a database that cannot be reached stops the start with one line. */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ConfigError, FLAGS, loadConfig } from "../src/config.ts";
import { tempDir } from "./helpers.ts";

const base = { KEYBRAKE_DATA_DIR: "/tmp/unused" };

describe("KEYBRAKE_DATABASE_URL", () => {
  test("anything but a postgres:// URL is refused at start with one line naming the variable, never the password", () => {
    let error: unknown;
    try {
      loadConfig({ ...base, KEYBRAKE_DATABASE_URL: "mysql://u:hunter2@db/kb" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toStartWith("KEYBRAKE_DATABASE_URL must be a postgres:// or postgresql:// URL");
    expect((error as Error).message).not.toContain("hunter2");
  });

  test.each(["postgres://kb:hunter2@db:5432/keybrake", "postgresql://kb:hunter2@db/keybrake?sslmode=require"])("%s selects PostgreSQL", (url) => {
    expect(loadConfig({ ...base, KEYBRAKE_DATABASE_URL: url }).databaseUrl).toBe(url);
  });

  test("unset keeps the embedded SQLite default, and the URL cannot be given as a flag (ps would show its password)", () => {
    expect(loadConfig(base).databaseUrl).toBeUndefined();
    expect([...FLAGS.values()]).not.toContain("KEYBRAKE_DATABASE_URL");
  });

  test.each([
    ["no KEYBRAKE_MASTER_KEY", {}, "KEYBRAKE_MASTER_KEY"],
    ["a database nobody listens for", { KEYBRAKE_MASTER_KEY: "m".repeat(43) }, "KEYBRAKE_DATABASE_URL: cannot connect to or migrate the PostgreSQL database"],
  ])("keybrake serve with %s stops at once with one line, and never prints the password", (_, env, message) => {
    const r = spawnSync(process.execPath, [join(import.meta.dir, "..", "src", "main.ts"), "serve"], {
      env: { PATH: process.env.PATH, KEYBRAKE_DATA_DIR: tempDir(), KEYBRAKE_PORT: "0", KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_DATABASE_URL: "postgres://kb:hunter2@127.0.0.1:1/keybrake", ...env },
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(message);
    expect(r.stdout + r.stderr).not.toContain("hunter2");
  }, 25_000);
});
