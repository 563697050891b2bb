/** KEYBRAKE_DATABASE_URL (SPEC §1, §8): validated, never echoed, never a flag, and refused while this build cannot keep all its state in PostgreSQL. */
import { describe, expect, test } from "bun:test";
import { ConfigError, FLAGS, loadConfig } from "../src/config.ts";

const base = { KEYBRAKE_DATA_DIR: "/tmp/unused" };

describe("KEYBRAKE_DATABASE_URL", () => {
  test.each([
    ["mysql://u:hunter2@db/kb", "KEYBRAKE_DATABASE_URL must be a postgres:// or postgresql:// URL"],
    ["postgres://kb:hunter2@db:5432/keybrake", "KEYBRAKE_DATABASE_URL is set, but this build cannot keep all its state in PostgreSQL yet"],
    ["postgresql://kb:hunter2@db/keybrake?sslmode=require", "KEYBRAKE_DATABASE_URL is set, but this build cannot keep all its state in PostgreSQL yet"],
  ])("%s is refused at start with one line naming the variable, never the password", (value, message) => {
    let error: unknown;
    try {
      loadConfig({ ...base, KEYBRAKE_DATABASE_URL: value });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toStartWith(message);
    expect((error as Error).message).not.toContain("hunter2");
  });

  test("unset keeps the embedded SQLite default, and the URL cannot be given as a flag (ps would show its password)", () => {
    expect(loadConfig(base).databaseUrl).toBeUndefined();
    expect([...FLAGS.values()]).not.toContain("KEYBRAKE_DATABASE_URL");
  });
});
