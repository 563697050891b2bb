/**
 * PostgreSQL out of reach, seen from the management API and the admin pages (SPEC §8): a 503
 * `unavailable` in our envelope, never a 500 or a half-made change; when the database returns, the
 * same server answers again without a restart. (The proxy side, 503 in the vendor's shape with
 * nothing forwarded, is in test/pg-ledger.test.ts and test/pg-replicas.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { seedKeyBody, startKeybrake, type Running } from "./helpers.ts";
import { postgresAvailable, startCluster, type PgCluster } from "./pg.ts";

describe.skipIf(!postgresAvailable())("management while PostgreSQL is down", () => {
  let cluster: PgCluster;
  let kb: Running;
  beforeAll(async () => {
    cluster = await startCluster();
    kb = await startKeybrake({ KEYBRAKE_DATABASE_URL: cluster.createDatabase("outage"), KEYBRAKE_MASTER_KEY: "kbm_outage_test_master_key_0123456789abcdef" });
  });
  afterAll(async () => {
    await kb.stop();
    cluster.destroy();
  });

  test("every request is 503 unavailable in the envelope; after the restart the same server works", async () => {
    const before = await kb.issueKey(seedKeyBody());
    cluster.stop();
    for (const [method, path, body] of [
      ["POST", "/vault/keys", seedKeyBody()],
      ["GET", "/vault/keys", undefined],
      ["GET", `/vault/keys/${before.key_id}`, undefined],
      ["DELETE", `/vault/keys/${before.key_id}`, undefined],
      ["GET", "/vault/audit", undefined],
      ["GET", "/budgets", undefined],
    ] as const) {
      const r = await kb.api(method, path, body);
      expect({ path, method, status: r.status, code: r.json?.error?.code }).toEqual({ path, method, status: 503, code: "unavailable" });
    }
    expect((await kb.api("GET", "/healthz", undefined, null)).json).toMatchObject({ status: "unavailable", ledger: { backend: "postgres", reachable: false } });

    cluster.start();
    let status = 0;
    for (let i = 0; i < 100 && status !== 200; i++) {
      status = (await kb.api("GET", "/healthz", undefined, null)).status;
      if (status !== 200) await Bun.sleep(50);
    }
    expect(status).toBe(200);
    // The DELETE sent while the database was down changed nothing; now it goes through.
    expect((await kb.api("GET", `/vault/keys/${before.key_id}`)).json.status).toBe("active");
    expect((await kb.api("DELETE", `/vault/keys/${before.key_id}`)).json.status).toBe("revoked");
    expect((await kb.api("POST", "/vault/keys", seedKeyBody())).status).toBe(201);
  }, 60_000);
});
